"""Streamed HTTP/1.1 POSTs over pooled connections: an asyncio protocol, parsed by httptools.

This is the hot path of every generation: each streamed delta is one HTTP chunk. The bytes are
handed to the caller's the body reader *inside* the protocol's ``data_received`` callback — no task
wakes up per chunk, no stream object is built per read — and the HTTP framing (status line,
headers, chunked encoding) is decoded by ``httptools`` (the llhttp parser in C that uvicorn
uses). httpx is the right client for everything else (``ollama.AsyncClient`` keeps the management
calls); for a chat stream its per-chunk machinery costs several times the parse itself, which is
why this module exists (measured in ``bench/``, scenario ``parse_deliver``).

Threads and loops: a :class:`ConnectionPool` and its connections belong to the event loop that
first used the pool (the runtime's actor loop); every method must be called there.

Semantics, stated where they are enforced:

* :meth:`ConnectionPool.stream_post` returns once the body reader said the answer is complete (it
  returned True) — the connection then goes back to the pool when its HTTP message ends — or
  raises: :class:`HttpStatusError` for a status ≥ 400 (with the body), :class:`ConnectionClosed`
  when the connection ended first, :class:`MalformedAnswer` when the answer is not HTTP,
  ``OSError`` when connecting failed, or whatever the body reader raised (the connection is then
  closed).
* **Cancellation closes the connection at once.** Cancelling the awaiting task, in any phase —
  connecting, waiting for the headers, between two chunks — aborts the socket before the
  ``CancelledError`` propagates, so the server sees the disconnect immediately; a connection
  is never left open, or returned to the pool, by a cancel.
* A pooled connection that the server closed while idle is detected before reuse, and a request
  on a reused connection that ends before any response byte is sent once more on a new one (the
  server never saw it); no other request is ever resent.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Mapping
from typing import Protocol, cast

import httptools

__all__ = ["BodyReader", "ConnectionClosed", "ConnectionPool", "HttpStatusError", "MalformedAnswer"]


class BodyReader(Protocol):
    """What reads an answer's body, on the loop, inside the socket's read callback."""

    def answered(self, status: int) -> None:
        """The answer's status line and headers arrived (before any ``body``)."""
        ...

    def body(self, data: bytes) -> bool:
        """A piece of the (de-chunked) body; True once the reader has everything it needs
        (the request then completes). When the HTTP message ends first, it is called once
        more with ``b""`` (the end of the body)."""
        ...

    def end_of_read(self) -> None:
        """Called after the pieces of one network read (one or more ``body`` calls)."""
        ...


_MAX_ERROR_BODY = 65536


class HttpStatusError(Exception):
    """The server answered with a status ≥ 400; ``body`` is (the start of) what it said."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body


class ConnectionClosed(ConnectionError):
    """The answer ended before the body reader had all it needed. ``received`` tells whether any
    byte of the answer had arrived; ``orderly`` whether the HTTP message itself ended normally
    (the body was short) rather than the connection breaking."""

    def __init__(self, message: str, *, received: bool, orderly: bool = False) -> None:
        super().__init__(message)
        self.received = received
        self.orderly = orderly


class MalformedAnswer(Exception):
    """The server's answer is not HTTP/1.x; ``head`` holds its first bytes."""

    def __init__(self, detail: str, head: bytes) -> None:
        super().__init__(detail)
        self.head = head


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection carrying one request at a time (loop thread only).

    State: ``_waiter`` is the future of the request in flight (None when idle); ``_reader`` its
    body reader while the status is < 400 and the reader still reads; ``_ending`` the reader to
    tell the end of the current network read. ``reusable`` is set when a message ended cleanly
    and the server allows keep-alive; ``closed`` once the transport is gone.
    """

    __slots__ = (
        "_answered",
        "_ending",
        "_error_body",
        "_parser",
        "_pool",
        "_reader",
        "_received",
        "_status",
        "_waiter",
        "closed",
        "reusable",
        "transport",
    )

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        # the parser holds this protocol's bound methods: a cycle, broken in connection_lost
        # so that a closed connection is freed by reference counting, not the cyclic GC
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._reader: BodyReader | None = None
        self._ending: BodyReader | None = None
        self._status = 0
        self._error_body = b""
        self._received = False
        self._answered = False  # on_body said done: the request is over for the caller
        self.closed = False
        self.reusable = False

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        first = not self._received
        self._received = True
        reader = self._ending = self._reader
        parser = self._parser
        if parser is None:  # pragma: no cover - asyncio sends no data after connection_lost
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, _CallbackFailed):  # raised by the reader: fail with its error
                self._fail(cause.error)
            else:
                self._fail(MalformedAnswer(str(exc), data[:120] if first else b""))
        if reader is not None and self._ending is reader:
            self._ending = None
            try:
                reader.end_of_read()
            except BaseException as exc:
                self._fail(exc)

    def eof_received(self) -> bool:
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        self._parser = None
        self._pool.forget(self)
        if self._waiter is not None and not self._waiter.done():
            why = f"connection lost: {exc}" if exc else "the server closed the connection"
            self._waiter.set_exception(ConnectionClosed(why, received=self._received))

    # -- httptools callbacks ------------------------------------------------------------------
    def on_headers_complete(self) -> None:
        assert self._parser is not None  # called by the parser itself
        self._status = status = self._parser.get_status_code()
        reader = self._reader
        if reader is not None:
            try:
                reader.answered(status)
            except BaseException as exc:
                raise _CallbackFailed(exc) from None

    def on_body(self, body: bytes) -> None:
        if self._status >= 400:
            if len(self._error_body) < _MAX_ERROR_BODY:
                self._error_body += body[: _MAX_ERROR_BODY - len(self._error_body)]
            return
        reader = self._reader
        if reader is None or self._answered:
            return
        try:
            done = reader.body(body)
        except BaseException as exc:
            raise _CallbackFailed(exc) from None
        if done:
            self._answered = True
            self._reader = None
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(None)

    def on_message_complete(self) -> None:
        if self._status < 400 and not self._answered and self._reader is not None:
            self.on_body(b"")  # the end of the body: the reader's last word
        waiter = self._waiter
        if self._status >= 400:
            if waiter is not None and not waiter.done():
                waiter.set_exception(HttpStatusError(self._status, self._error_body))
        elif waiter is not None and not waiter.done():
            waiter.set_exception(
                ConnectionClosed("the answer ended early", received=True, orderly=True)
            )
        assert self._parser is not None  # called by the parser itself
        keep = self._parser.should_keep_alive() and self._answered
        self._waiter = None
        self._reader = None
        if keep:
            self.reusable = True
            self._pool.release(self)

    # -- the caller's side --------------------------------------------------------------------
    def start(self, request: bytes, reader: BodyReader) -> asyncio.Future[None]:
        """Send ``request``; the future settles as :meth:`ConnectionPool.stream_post` says."""
        assert self.transport is not None
        loop = self._pool.loop
        self._waiter = waiter = loop.create_future()
        self._reader = reader
        self._status = 0
        self._error_body = b""
        self._received = False
        self._answered = False
        self.reusable = False
        self.transport.write(request)
        return waiter

    def _fail(self, error: BaseException) -> None:
        waiter = self._waiter
        self._waiter = None
        self._reader = self._ending = None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self.abort()

    def abort(self) -> None:
        """Close the socket at once: the server sees the disconnect now, not one loop
        iteration later (asyncio's ``abort()`` closes the socket in a callback)."""
        self.reusable = False
        self._reader = self._ending = None
        transport = self.transport
        if transport is not None and not self.closed:
            self.closed = True
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # uvloop's socket wrapper (Ray's workers run uvloop) refuses shutdown():
                # TypeError; its abort() closes the socket at once anyway
                with contextlib.suppress(OSError, TypeError):
                    sock.shutdown(socket.SHUT_RDWR)
            transport.abort()


class _CallbackFailed(Exception):
    """Carries what the body reader raised through httptools' parser."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(repr(error))
        self.error = error


class ConnectionPool:
    """Keep-alive connections to one ``http(s)://host:port`` (one event loop; see the module
    docstring). At most ``max_idle`` idle connections are kept; any number may be busy (the
    caller bounds them)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        scheme: str,
        host: str,
        port: int,
        connect_timeout: float | None,
        max_idle: int = 32,
    ) -> None:
        self.loop = loop
        self._host = host
        self._port = port
        self._ssl: ssl.SSLContext | None = (
            ssl.create_default_context() if scheme == "https" else None
        )
        self._connect_timeout = connect_timeout
        self._max_idle = max_idle
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()
        self._closed = False

    def request_head(self, path: str, headers: Mapping[str, str]) -> bytes:
        """The request line and headers of a POST to ``path``, up to (not with) the
        ``Content-Length`` line that ends them: the same for every request of one caller."""
        host = self._host if ":" not in self._host else f"[{self._host}]"
        lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{self._port}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n").encode("latin-1")

    async def stream_post(self, request: bytes, reader: BodyReader) -> None:
        """Send one request (:meth:`request_head`, its ``Content-Length``, the body) and feed
        its answer to ``reader``; see the module docstring for how it ends."""
        for attempt in (1, 2):
            conn, reused = await self._checkout()
            try:
                await conn.start(request, reader)
            except ConnectionClosed as exc:
                self._busy.discard(conn)
                conn.abort()
                if reused and not exc.received and attempt == 1:
                    continue  # the server closed an idle connection as we sent: send once more
                raise
            except BaseException:  # a cancel, an HTTP error, what the reader raised: no reuse
                self._busy.discard(conn)
                if not conn.reusable:
                    conn.abort()
                raise
            # answered: the connection stays busy until its message ends (then ``release``)
            return

    async def _checkout(self) -> tuple[_Connection, bool]:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                self._busy.add(conn)
                return conn, True
        if self._closed:
            raise ConnectionClosed("the connection pool is closed", received=False)
        connect = self.loop.create_connection(
            lambda: _Connection(self), self._host, self._port, ssl=self._ssl
        )
        if self._connect_timeout is None:
            _, protocol = await connect
        else:
            async with asyncio.timeout(self._connect_timeout):
                _, protocol = await connect
        self._busy.add(protocol)
        return protocol, False

    def release(self, conn: _Connection) -> None:
        """A connection whose message ended cleanly: keep it for reuse, or close it."""
        self._busy.discard(conn)
        if self._closed or len(self._idle) >= self._max_idle:
            conn.abort()
        else:
            self._idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        """A connection was lost (called by it)."""
        self._busy.discard(conn)
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)

    def close(self) -> None:
        """Close every connection, idle or busy (their requests fail with ConnectionClosed)."""
        self._closed = True
        for conn in [*self._idle, *self._busy]:
            conn.abort()
        self._idle.clear()
