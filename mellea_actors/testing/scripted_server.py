"""A scripted Ollama-protocol server: real HTTP/1.1 on loopback, deterministic answers, injected
faults.

It speaks enough of Ollama 0.5.x for the official ``ollama`` client (0.6.3): ``POST /api/chat`` and
``POST /api/generate`` (NDJSON streams sent with ``Transfer-Encoding: chunked``, or one JSON object
with ``"stream": false``), ``GET /api/version``, ``GET /api/tags``, ``POST /api/show``,
``GET /api/ps`` and ``GET /``. What a generation request gets is a
:class:`~mellea_actors.testing.script.Script`.

Two ways to run it:

* :class:`ScriptedOllama` runs the server on an event loop of its own, in one daemon thread (for
  tests).
* :class:`ScriptedOllamaProcess` runs ``python -m mellea_actors.testing`` in a subprocess, so that
  the server does not share the caller's GIL (for benchmarks). It is controlled through the server's
  control endpoints (``/_scripted/...``, see :func:`_ServerCore._control`).

Thread and loop ownership
-------------------------
Everything in :class:`_ServerCore` and :class:`_Connection` runs on the server's event-loop thread,
except the state guarded by ``_ServerCore.cond`` (a ``threading.Condition``): the record lists, the
script queue and the default script. Other threads read that state only under the lock, as immutable
snapshots (:class:`~mellea_actors.testing.script.RequestRecord`), and change the listening state
only by submitting a coroutine to the loop and waiting for it with a timeout.

Disconnect notice
-----------------
The server reads from every socket all the time (asyncio protocols never stop reading), so a client
closing its connection is seen as EOF (or a reset) at once, even while the answer is stalled or
sleeping between tokens. The protocol callback stamps ``disconnected_at`` with ``time.monotonic()``
and cancels the connection's handler task, which records ``outcome="client_disconnected"``.

Pacing, and the answers in progress
-----------------------------------
Paced tokens (``Script.delay > 0``) are sent by one pacer (:class:`_Pacer`) from one timer per
occupied millisecond, not by a sleep per token: a token goes out at the first tick at or after
its due time (never early, at most 1 ms late), and tokens that came due together while the loop
was held up go out in one write (each its own NDJSON line and chunk), so that thousands of
streams at 20 tokens/s cost the server little more than its socket writes. The server counts
the generation answers in progress (from the first byte of the answer until the record is
finished) and keeps the most at once: :meth:`ScriptedOllama.peak_active`, reset by ``reset()``
and ``reset_peak()``.

Refusing connections (:meth:`ScriptedOllama.refuse_connections`)
----------------------------------------------------------------
``refuse_connections(None)`` closes the listening socket: the kernel answers every SYN with a reset,
so the client's ``connect()`` fails with ``ECONNREFUSED``: ``httpx.ConnectError`` (the ``ollama``
client raises it raw when streaming and turns it into the builtin ``ConnectionError`` when not
streaming). Idle keep-alive connections are closed too, so that the client's pool cannot reuse them.
``refuse_connections(0)`` binds the same port again. A closed listener cannot count attempts, so
``refuse_connections(n)`` with ``n > 0`` keeps listening and resets (``SO_LINGER`` 0) the next ``n``
*accepted* connections: the client's TCP handshake has already succeeded, so it sees
``httpx.ReadError`` or ``httpx.WriteError`` (or, rarely, ``httpx.RemoteProtocolError``), never
``ConnectError``. All of them are ``httpx.TransportError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.utils
import functools
import http.client
import json
import math
import os
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
import urllib.parse
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any, TypeVar

from mellea_actors.testing.script import GENERATION_PATHS, Outcome, RequestRecord, Script

__all__ = [
    "OLLAMA_VERSION",
    "ScriptSource",
    "ScriptedOllama",
    "ScriptedOllamaProcess",
]

_BUSY = "server busy, please try again.  maximum pending requests exceeded"
"""What Ollama says with its 503 when its queue is full."""

#: The version the server claims in ``GET /api/version``.
OLLAMA_VERSION = "0.5.4"

#: A fixed script, or a function choosing it from the request (called on the server's loop thread).
ScriptSource = Script | Callable[[RequestRecord], Script]

_T = TypeVar("_T")

_MAX_HEAD = 64 * 1024
_MAX_BODY = 64 * 1024 * 1024
_YIELD_EVERY = 64  # unpaced streams yield to the loop every this many tokens (fairness)
_PACE_TICK = 0.001  # the paced tokens' timer resolution (seconds; see _Pacer)
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Payload Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_DIGEST = "sha256:" + "5c" * 32
_DETAILS = {
    "parent_model": "",
    "format": "gguf",
    "family": "scripted",
    "families": ["scripted"],
    "parameter_size": "0M",
    "quantization_level": "Q4_1",
}
_MODIFIED_AT = "2026-01-01T00:00:00.000000000Z"


def _normalize_model(name: str) -> str:
    """``"m"`` → ``"m:latest"``, as Ollama resolves names."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


_second_cache: tuple[int, bytes] = (-1, b"")


def _created_at(now: float) -> bytes:
    """RFC 3339 UTC time with nanoseconds, like Ollama's ``created_at``."""
    global _second_cache
    sec = int(now)
    cached_sec, prefix = _second_cache
    if cached_sec != sec:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)).encode()
        _second_cache = (sec, prefix)
    return b"%s.%09dZ" % (prefix, int((now - sec) * 1e9))


_date_cache: tuple[int, str] = (-1, "")


def _http_date() -> str:
    """The ``Date`` header (formatted once a second: thousands of answers may start at once)."""
    global _date_cache
    sec = int(time.time())
    if _date_cache[0] != sec:
        _date_cache = (sec, email.utils.formatdate(sec, usegmt=True))
    return _date_cache[1]


@functools.lru_cache(maxsize=128)
def _encoded_tokens(tokens: tuple[str, ...]) -> tuple[bytes, ...]:
    return tuple(json.dumps(t, ensure_ascii=False).encode() for t in tokens)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def _count_words(body: dict[str, Any]) -> int:
    words = 0
    for message in body.get("messages") or ():
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            words += len(message["content"].split())
    for key in ("prompt", "system"):
        if isinstance(body.get(key), str):
            words += len(body[key].split())
    return max(words, 1)


class _Request:
    """One parsed HTTP request (loop thread)."""

    __slots__ = ("body", "headers", "keep_alive", "method", "path", "query")

    def __init__(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        headers: dict[str, str],
        body: bytes,
        keep_alive: bool,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Live:
    """The server's mutable bookkeeping of one request.

    Written only by the loop thread. Other threads read it only through :meth:`snapshot`, under
    ``_ServerCore.cond``; single attribute writes are atomic under the GIL, so a snapshot is
    consistent enough (at worst ``tokens_sent`` is one ahead of ``token_times``).
    """

    __slots__ = (
        "answering",
        "body",
        "connection",
        "disconnected_at",
        "finished_at",
        "first_token_at",
        "format",
        "index",
        "messages",
        "method",
        "model",
        "options",
        "outcome",
        "path",
        "prompt",
        "script",
        "stalled",
        "stalled_at",
        "started_at",
        "status",
        "stream",
        "token_times",
        "tokens_sent",
    )

    def __init__(
        self, index: int, connection: int, method: str, path: str, body: Any, started_at: float
    ) -> None:
        self.index = index
        self.connection = connection
        self.method = method
        self.path = path
        self.body = body
        self.started_at = started_at
        b = body if isinstance(body, dict) else {}
        model = b.get("model")
        self.model: str | None = model if isinstance(model, str) else None
        messages = b.get("messages")
        self.messages: tuple[dict[str, Any], ...] = (
            tuple(m for m in messages if isinstance(m, dict)) if isinstance(messages, list) else ()
        )
        prompt = b.get("prompt")
        self.prompt: str | None = prompt if isinstance(prompt, str) else None
        options = b.get("options")
        self.options: dict[str, Any] | None = options if isinstance(options, dict) else None
        self.format: Any = b.get("format")
        self.stream: bool = b.get("stream", True) is not False
        self.script: Script | None = None
        self.tokens_sent = 0
        self.first_token_at: float | None = None
        self.token_times: list[float] = []
        self.stalled = False
        self.stalled_at: float | None = None
        self.disconnected_at: float | None = None
        self.finished_at: float | None = None
        self.status: int | None = None
        self.outcome: Outcome | None = None
        self.answering = False  # counted in _ServerCore.active

    def snapshot(self) -> RequestRecord:
        return RequestRecord(
            index=self.index,
            connection=self.connection,
            method=self.method,
            path=self.path,
            body=self.body,
            model=self.model,
            messages=self.messages,
            prompt=self.prompt,
            options=self.options,
            format=self.format,
            stream=self.stream,
            started_at=self.started_at,
            script=self.script,
            tokens_sent=self.tokens_sent,
            first_token_at=self.first_token_at,
            token_times=tuple(self.token_times),
            stalled_at=self.stalled_at,
            disconnected_at=self.disconnected_at,
            finished_at=self.finished_at,
            status=self.status,
            outcome=self.outcome,
        )


class _Connection(asyncio.Protocol):
    """One client connection: buffers bytes, notices EOF, runs a handler task. Loop thread only."""

    def __init__(self, core: _ServerCore) -> None:
        self.core = core
        self.loop = core.loop
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.eof = False
        self.lost = False
        self.busy = False  # a request is being answered
        self.current: _Live | None = None
        self.number = 0  # the connection's sequence number, set when accepted
        self.task: asyncio.Task[None] | None = None
        self._data_waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    # -- protocol callbacks ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.core.take_refusal():
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.lost = True
            transport.abort()
            return
        self.core.conns.add(self)
        self.core.connections_accepted += 1
        self.number = self.core.connections_accepted
        self.task = self.loop.create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._on_lost()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self._on_lost()
        self.core.conns.discard(self)
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    # -- helpers --------------------------------------------------------------------------------
    def _wake(self) -> None:
        if self._data_waiter is not None and not self._data_waiter.done():
            self._data_waiter.set_result(None)

    def _on_lost(self) -> None:
        if self.lost:
            return
        self.lost = True
        now = time.monotonic()
        live = self.current
        if live is not None and live.outcome is None:
            with self.core.cond:
                live.disconnected_at = now
                self.core.cond.notify_all()
        self._wake()
        if self.task is not None and not self.task.done() and self.busy:
            self.task.cancel()

    async def drain(self) -> None:
        if self._paused and not self.lost:
            self._drain_waiter = self.loop.create_future()
            await self._drain_waiter

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        if not self.lost:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def _wait_data(self) -> None:
        if self.eof:
            raise ConnectionResetError("client closed the connection")
        self._data_waiter = self.loop.create_future()
        try:
            await self._data_waiter
        finally:
            self._data_waiter = None

    async def _read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            await self._wait_data()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    async def _read_line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[: i + 2]
                return line
            if len(self.buf) > _MAX_HEAD:
                raise _BadRequest(400, "line too long")
            await self._wait_data()

    async def _read_request(self) -> _Request | None:
        """The next request, or None when the client closed an idle connection."""
        while True:
            while self.buf.startswith(b"\r\n"):  # tolerated before a request line
                del self.buf[:2]
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(self.buf) > _MAX_HEAD:
                raise _BadRequest(431, "request header too large")
            if self.eof:
                return None
            await self._wait_data()
        head = bytes(self.buf[:end]).decode("latin-1")
        del self.buf[: end + 4]
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest(400, "malformed request line")
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise _BadRequest(400, "malformed header line")
            headers[name.strip().lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        keep_alive = (
            "keep-alive" in connection if version == "HTTP/1.0" else "close" not in connection
        )
        if headers.get("expect", "").lower() == "100-continue":
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            chunks = []
            total = 0
            while True:
                size_line = await self._read_line()
                try:
                    size = int(size_line.split(b";", 1)[0], 16)
                except ValueError:
                    raise _BadRequest(400, "malformed chunk size") from None
                if size == 0:
                    while await self._read_line():  # trailers
                        pass
                    break
                total += size
                if total > _MAX_BODY:
                    raise _BadRequest(413, "request body too large")
                chunks.append(await self._read_exact(size))
                await self._read_exact(2)
            body = b"".join(chunks)
        else:
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                raise _BadRequest(400, "malformed content-length") from None
            if length > _MAX_BODY or length < 0:
                raise _BadRequest(413, "request body too large")
            body = await self._read_exact(length) if length else b""
        url = urllib.parse.urlsplit(target)
        query = dict(urllib.parse.parse_qsl(url.query))
        return _Request(method, url.path or "/", query, headers, body, keep_alive)

    # -- the handler task -----------------------------------------------------------------------
    async def _serve(self) -> None:
        try:
            while not self.lost:
                try:
                    request = await self._read_request()
                except _BadRequest as e:
                    self.send_response(e.status, _dumps({"error": str(e)}), keep_alive=False)
                    break
                except ConnectionResetError:
                    break
                if request is None:
                    break
                self.busy = True
                try:
                    keep_alive = await self.core.handle(self, request)
                except Exception as e:  # a bug, or a script function that raised: answer 500
                    traceback.print_exc()
                    live = self.current
                    if live is not None:
                        self.core.finish(live, "http_error", 500)
                    message = f"scripted server: {type(e).__name__}: {e}"
                    self.send_response(500, _dumps({"error": message}), keep_alive=False)
                    break
                self.busy = False
                self.current = None
                if not keep_alive or not request.keep_alive or self.lost:
                    break
        except asyncio.CancelledError:
            live = self.current
            if live is not None and live.outcome is None:
                if self.lost:
                    self.core.finish(live, "client_disconnected")
                else:
                    self.core.finish(live, "stalled" if live.stalled else "server_stopped")
            if not self.lost:  # cancelled by the server's shutdown: propagate
                self.close()
                raise
        finally:
            self.busy = False
            self.close()

    # -- responses ------------------------------------------------------------------------------
    def send_response(
        self,
        status: int,
        body: bytes,
        *,
        content_type: str = "application/json; charset=utf-8",
        keep_alive: bool = True,
        head_only: bool = False,
    ) -> None:
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Date: {_http_date()}\r\n"
            f"Content-Length: {len(body)}\r\n"
            + ("" if keep_alive else "Connection: close\r\n")
            + "\r\n"
        )
        self.write(head.encode("latin-1") + (b"" if head_only else body))

    def start_stream(self) -> None:
        self.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nDate: "
            + _http_date().encode()
            + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
        )

    def send_chunk(self, line: bytes, *, last: bool = False) -> None:
        """One chunk of a chunked body; ``last`` appends the terminating zero-size chunk."""
        self.write(b"%x\r\n%s\r\n%s" % (len(line), line, b"0\r\n\r\n" if last else b""))


class _TokenSender:
    """Sends token ``i`` of one answer (and records it). Loop thread only."""

    __slots__ = ("conn", "live", "middle", "prefix", "record_times", "stream", "suffix", "tokens")

    def __init__(
        self,
        conn: _Connection,
        live: _Live,
        tokens: tuple[bytes, ...],
        model_json: bytes,
        chat: bool,
        stream: bool,
        core: _ServerCore,
    ) -> None:
        self.conn = conn
        self.live = live
        self.tokens = tokens
        self.stream = stream
        self.record_times = core.record_token_times
        self.prefix = b'{"model":' + model_json + b',"created_at":"'
        if chat:
            self.middle = b'","message":{"role":"assistant","content":'
            self.suffix = b'},"done":false}\n'
        else:
            self.middle = b'","response":'
            self.suffix = b',"done":false}\n'

    def send(self, i: int, j: int | None = None) -> None:
        """Send tokens ``i`` … ``j - 1`` (default: token ``i`` alone) in one write, each its own
        NDJSON line in its own chunk, as Ollama frames them."""
        j = i + 1 if j is None else j
        live = self.live
        if self.stream:
            created = _created_at(time.time())
            frames = []
            for k in range(i, j):
                line = self.prefix + created + self.middle + self.tokens[k] + self.suffix
                frames.append(b"%x\r\n%s\r\n" % (len(line), line))
            sent_at = time.monotonic()
            self.conn.write(frames[0] if j == i + 1 else b"".join(frames))
        else:
            sent_at = time.monotonic()
        if i == 0:
            live.first_token_at = sent_at
        if self.record_times:
            live.token_times.extend([sent_at] * (j - i))
        live.tokens_sent = j


@dataclasses.dataclass(slots=True)
class _PacedRun:
    """Tokens ``i`` … ``stop - 1`` of one answer, token ``k`` due at ``base + k * delay``."""

    sender: _TokenSender
    i: int
    stop: int
    base: float
    delay: float
    done: asyncio.Future[None]


class _Pacer:
    """Sends the paced tokens of every answer from shared timers (loop thread only).

    One timer per occupied millisecond instead of a task wake-up per token: with thousands of
    streams at 20 tokens/s each, a per-token ``asyncio.sleep`` would cost the server more than the
    socket write. A token goes out in the first timer tick at or after its due time (never early,
    at most ``_PACE_TICK`` late); its send time is recorded as it is written.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.ticks: dict[int, list[_PacedRun]] = {}

    async def send(self, sender: _TokenSender, i: int, stop: int, base: float, delay: float) -> int:
        """Send tokens ``i`` … ``stop - 1`` on their schedule; the next index to send.

        Returns early (with the next unsent index) when the connection is lost or its write
        buffer is full, so that the caller deals with it.
        """
        run = _PacedRun(sender, i, stop, base, delay, self.loop.create_future())
        self._step(run, self.loop.time())
        if not run.done.done():
            await run.done
        return run.i

    def _add(self, run: _PacedRun, due: float) -> None:
        tick = math.ceil(due / _PACE_TICK)
        runs = self.ticks.get(tick)
        if runs is None:
            self.ticks[tick] = [run]
            self.loop.call_at(tick * _PACE_TICK, self._fire, tick)
        else:
            runs.append(run)

    def _fire(self, tick: int) -> None:
        now = self.loop.time()
        for run in self.ticks.pop(tick, ()):
            self._step(run, now)

    def _step(self, run: _PacedRun, now: float) -> None:
        if run.done.done():  # the answering task was cancelled (disconnect, shutdown)
            return
        sender, conn = run.sender, run.sender.conn
        i, stop, base, delay = run.i, run.stop, run.base, run.delay
        due = i
        while due < stop and base + due * delay <= now + 1e-6:
            due += 1
        if due > i and not (conn.lost or conn._paused):
            sender.send(i, due)  # several when the loop was late: one write catches up
            i = due
        run.i = i
        if i >= stop or conn.lost or conn._paused:
            run.done.set_result(None)
        else:
            self._add(run, base + i * delay)


class _ServerCore:
    """The server itself: listening socket, request handling, shared state.

    Constructed and run on the loop thread (``loop`` is that thread's running loop). The attributes
    ``records``, ``others``, ``queue`` and ``default`` are shared with other threads and guarded by
    ``cond``; everything else belongs to the loop thread.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        script: ScriptSource | None,
        models: Sequence[str],
        host: str,
        port: int,
        record_token_times: bool,
    ) -> None:
        self.loop = loop
        self.cond = threading.Condition()
        self.records: list[_Live] = []
        self.others: list[_Live] = []
        self.queue: deque[Script] = deque()
        self.default: ScriptSource = script if script is not None else Script()
        self.models = tuple(models)
        self._model_set = {_normalize_model(m) for m in models}
        self.host = host
        self.port = port
        self.record_token_times = record_token_times
        self.conns: set[_Connection] = set()
        self.server: asyncio.Server | None = None
        self.refuse_remaining = 0  # counted refusals (accept + reset)
        self.refused_connections = 0
        self.connections_accepted = 0
        self.loaded: dict[str, float] = {}
        self.pacer = _Pacer(loop)
        # generation requests whose answer has started and not finished (``_Live.answering``),
        # and the most at once since the last reset (guarded by ``cond``)
        self.active = 0
        self.peak = 0
        # like Ollama's full queue (OLLAMA_MAX_QUEUE): beyond this many answers in progress a
        # generation request gets 503 "server busy" (None: no limit; guarded by ``cond``)
        self.max_active: int | None = None
        self.busy_answers = 0

    # -- listening ------------------------------------------------------------------------------
    async def open(self) -> None:
        self.server = await self.loop.create_server(
            lambda: _Connection(self), self.host, self.port, reuse_address=True, backlog=4096
        )
        self.port = self.server.sockets[0].getsockname()[1]

    async def set_refusal(self, n: int | None) -> None:
        if n is None:
            self.refuse_remaining = 0
            if self.server is not None:
                self.server.close()
                self.server = None
            self._close_idle()
        elif n == 0:
            self.refuse_remaining = 0
            if self.server is None:
                await self.open()
        else:
            self.refuse_remaining = n
            if self.server is None:
                await self.open()
            self._close_idle()

    def _close_idle(self) -> None:
        for conn in list(self.conns):
            if not conn.busy:
                conn.close()

    def take_refusal(self) -> bool:
        if self.refuse_remaining > 0:
            self.refuse_remaining -= 1
            self.refused_connections += 1
            return True
        return False

    async def shutdown(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        tasks = [c.task for c in self.conns if c.task is not None and not c.task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        for conn in list(self.conns):
            if conn.transport is not None:
                conn.transport.abort()

    # -- bookkeeping ----------------------------------------------------------------------------
    def new_record(self, conn: _Connection, request: _Request, body: Any) -> _Live:
        generation = request.path in GENERATION_PATHS
        with self.cond:
            target = self.records if generation else self.others
            live = _Live(
                len(target), conn.number, request.method, request.path, body, time.monotonic()
            )
            target.append(live)
            self.cond.notify_all()
        return live

    def finish(self, live: _Live, outcome: Outcome, status: int | None = None) -> None:
        with self.cond:
            self._end_answer(live)
            if live.outcome is None:
                live.outcome = outcome
                live.finished_at = time.monotonic()
                if status is not None:
                    live.status = status
            self.cond.notify_all()

    def reset(self, *, records: bool = True) -> None:
        """Forget the records and queued scripts (unless ``records`` is false) and the peak."""
        with self.cond:
            if records:
                self.records.clear()
                self.others.clear()
                self.queue.clear()
            self.peak = self.active

    def activity(self) -> dict[str, int]:
        """``{"active": n, "peak": p}``: answers in progress now, and the most at once."""
        with self.cond:
            return {"active": self.active, "peak": self.peak}

    def choose_script(self, live: _Live) -> Script:
        with self.cond:
            if self.queue:
                return self.queue.popleft()
            source = self.default
        if isinstance(source, Script):
            return source
        script = source(live.snapshot())
        if not isinstance(script, Script):
            raise TypeError(f"the script function returned {type(script).__name__}, not a Script")
        return script

    # -- request handling -----------------------------------------------------------------------
    async def handle(self, conn: _Connection, request: _Request) -> bool:
        """Answer one request; returns whether the connection may be kept alive."""
        if request.path.startswith("/_scripted/"):
            return await self._control(conn, request)
        body: Any = None
        if request.body:
            try:
                body = json.loads(request.body)
            except ValueError:
                body = request.body.decode("utf-8", "replace")
        live = self.new_record(conn, request, body)
        conn.current = live
        path, method = request.path, request.method
        routes: dict[str, tuple[str, ...]] = {
            "/": ("GET", "HEAD"),
            "/api/version": ("GET",),
            "/api/tags": ("GET",),
            "/api/ps": ("GET",),
            "/api/show": ("POST",),
            "/api/chat": ("POST",),
            "/api/generate": ("POST",),
        }
        if path not in routes:
            return self._plain(conn, live, 404, b"404 page not found")
        if method not in routes[path]:
            return self._plain(conn, live, 405, b"405 method not allowed")
        if path == "/":
            return self._plain(conn, live, 200, b"Ollama is running")
        if path == "/api/version":
            return self._json(conn, live, 200, {"version": OLLAMA_VERSION})
        if path == "/api/tags":
            models = [
                {
                    "name": _normalize_model(m),
                    "model": _normalize_model(m),
                    "modified_at": _MODIFIED_AT,
                    "size": 1_000_000,
                    "digest": _DIGEST[7:],
                    "details": _DETAILS,
                }
                for m in self.models
            ]
            return self._json(conn, live, 200, {"models": models})
        if path == "/api/ps":
            now = time.time()
            running = [
                {
                    "name": name,
                    "model": name,
                    "size": 1_000_000,
                    "digest": _DIGEST[7:],
                    "details": _DETAILS,
                    "expires_at": _created_at(last + 300).decode(),
                    "size_vram": 0,
                }
                for name, last in self.loaded.items()
                if last + 300 > now
            ]
            return self._json(conn, live, 200, {"models": running})
        if not isinstance(body, dict):
            return self._json(conn, live, 400, {"error": "invalid request body"})
        model = body.get("model") or body.get("name")
        if not isinstance(model, str) or not model:
            return self._json(conn, live, 400, {"error": "model is required"})
        if _normalize_model(model) not in self._model_set:
            if path == "/api/show":
                return self._json(conn, live, 404, {"error": f"model '{model}' not found"})
            message = f'model "{model}" not found, try pulling it first'
            return self._json(conn, live, 404, {"error": message})
        if path == "/api/show":
            return self._json(
                conn,
                live,
                200,
                {
                    "modelfile": f"FROM {model}\n",
                    "parameters": "",
                    "template": "{{ .Prompt }}",
                    "details": _DETAILS,
                    "model_info": {"general.architecture": "scripted"},
                    "modified_at": _MODIFIED_AT,
                },
            )
        self.loaded[_normalize_model(model)] = time.time()
        return await self._generate(conn, live, request)

    # Records are finished *before* the last bytes are written, so that a client that has just
    # received a whole answer always finds its record finished.
    def _plain(self, conn: _Connection, live: _Live, status: int, text: bytes) -> bool:
        self.finish(live, "completed" if status == 200 else "http_error", status)
        conn.send_response(
            status,
            text,
            content_type="text/plain; charset=utf-8",
            head_only=live.method == "HEAD",
        )
        return True

    def _json(self, conn: _Connection, live: _Live, status: int, obj: Any) -> bool:
        self.finish(live, "completed" if status == 200 else "http_error", status)
        conn.send_response(status, _dumps(obj))
        return True

    async def _generate(self, conn: _Connection, live: _Live, request: _Request) -> bool:
        script = self.choose_script(live)
        live.script = script
        if script.status != 200:
            message = script.error_message or _REASONS.get(script.status, "scripted error")
            return self._json(conn, live, script.status, {"error": message})
        if script.refuse:
            self.finish(live, "refused")
            if conn.transport is not None:
                conn.transport.abort()
            return False
        with self.cond:
            busy = self.max_active is not None and self.active >= self.max_active
            if busy:
                self.busy_answers += 1
        if busy:
            return self._json(conn, live, 503, {"error": _BUSY})
        with self.cond:  # the answer has started (see peak_active); finish() ends it
            live.answering = True
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            return await self._answer(conn, live, script, request.path == "/api/chat")
        finally:
            with self.cond:  # every path finishes the record; this is only a safety net
                self._end_answer(live)

    def _end_answer(self, live: _Live) -> None:
        """Under ``cond``: ``live``'s answer is no longer in progress."""
        if live.answering:
            live.answering = False
            self.active -= 1

    async def _answer(self, conn: _Connection, live: _Live, script: Script, chat: bool) -> bool:
        """Send the tokens of ``script`` (faults included) and the final object."""
        loop = self.loop
        start = loop.time()
        stream = live.stream
        model = live.model or ""
        tokens = _encoded_tokens(tuple(script.tokens))
        n = len(tokens)
        stall_at = min(script.stall_after, n) if script.stall_after is not None else -1
        error_at = min(script.error_after, n) if script.error_after is not None else -1
        drop_at = min(script.drop_after, n) if script.drop_after is not None else -1
        paced = script.delay > 0 or script.first_delay > 0
        base = start + script.first_delay
        sender = _TokenSender(conn, live, tokens, _dumps(model), chat, stream, self)
        if stream:
            conn.start_stream()
        i = 0
        while True:
            if i == stall_at:
                stall_at = -1
                with self.cond:
                    live.stalled = True
                    live.stalled_at = time.monotonic()
                    self.cond.notify_all()
                if script.stall_for is None:
                    await loop.create_future()  # until the client disconnects or the server stops
                else:
                    await asyncio.sleep(script.stall_for)
                    base += script.stall_for
                live.stalled = False
            if i == error_at:
                message = script.error_message or "scripted error"
                if stream:
                    self.finish(live, "error_line", 200)
                    conn.send_chunk(_dumps({"error": message}) + b"\n", last=True)
                    return True
                return self._json(conn, live, 500, {"error": message})
            if i == drop_at:
                self.finish(live, "dropped", 200 if stream else None)
                conn.close()
                return False
            if i >= n:
                break
            if conn._paused:
                await conn.drain()
            if conn.lost:
                self.finish(live, "client_disconnected")
                return False
            if script.delay > 0:
                # paced: the tokens up to the next fault go out from the shared pacer's timers
                stop = min([k for k in (stall_at, error_at, drop_at) if k > i] or [n])
                i = await self.pacer.send(sender, i, stop, base, script.delay)
                continue
            wait = base - loop.time() if paced else 0.0
            if wait > 0:
                await asyncio.sleep(wait)
            elif i % _YIELD_EVERY == _YIELD_EVERY - 1:
                await asyncio.sleep(0)
            if conn._paused or conn.lost:
                continue  # drain or give up above
            sender.send(i)
            i += 1

        now = time.monotonic()
        first = live.first_token_at if live.first_token_at is not None else now
        final: dict[str, Any] = {"model": model, "created_at": _created_at(time.time()).decode()}
        content = "" if stream else "".join(script.tokens)
        if chat:
            final["message"] = {"role": "assistant", "content": content}
        else:
            final["response"] = content
        final.update(
            done_reason=script.done_reason,
            done=True,
            total_duration=int((now - live.started_at) * 1e9),
            load_duration=1_000_000,
            prompt_eval_count=_count_words(_request_body(live)),
            prompt_eval_duration=int(max(first - live.started_at, 0.0) * 1e9),
            eval_count=n,
            eval_duration=int(max(now - first, 0.0) * 1e9),
        )
        if conn.lost:
            self.finish(live, "client_disconnected")
            return False
        self.finish(live, "completed", 200)
        if stream:
            conn.send_chunk(_dumps(final) + b"\n", last=True)
        else:
            conn.send_response(200, _dumps(final))
        return True

    # -- control endpoints (used by ScriptedOllamaProcess) -----------------------------------
    async def _control(self, conn: _Connection, request: _Request) -> bool:
        """``/_scripted/...``: control endpoints; not recorded.

        * ``GET /_scripted/requests[?others=1]`` → ``{"requests": [record, ...]}``
        * ``POST /_scripted/enqueue`` ``{"scripts": [script, ...]}``
        * ``POST /_scripted/default`` ``{"script": script}``
        * ``POST /_scripted/reset`` clears records, queue and the peak count
        * ``POST /_scripted/reset_peak`` resets the peak count only
        * ``GET /_scripted/active`` → ``{"active": n, "peak": p}`` (see ``peak_active``)
        * ``POST /_scripted/max_active`` ``{"n": n | null}`` (see ``set_max_active``)
        * ``GET /_scripted/wait?n=N&timeout=S[&finished=1]`` → records once ``N`` generation
          requests arrived (or finished); 504 on timeout
        * ``GET /_scripted/wait_disconnect?index=I&timeout=S`` → the record once its disconnect was
          seen
        """
        try:
            body = json.loads(request.body) if request.body else {}
            action = request.path[len("/_scripted/") :]
            q = request.query
            if action == "requests":
                with self.cond:
                    lives = self.others if q.get("others") == "1" else self.records
                    data = [live.snapshot().to_json() for live in lives]
                conn.send_response(200, _dumps({"requests": data}))
            elif action == "enqueue":
                scripts = [Script.from_json(s) for s in body["scripts"]]
                with self.cond:
                    self.queue.extend(scripts)
                conn.send_response(200, b"{}")
            elif action == "default":
                script = Script.from_json(body["script"])
                with self.cond:
                    self.default = script
                conn.send_response(200, b"{}")
            elif action in ("reset", "reset_peak"):
                self.reset(records=action == "reset")
                conn.send_response(200, b"{}")
            elif action == "active":
                conn.send_response(200, _dumps(self.activity()))
            elif action == "max_active":
                limit = body.get("n")
                with self.cond:
                    self.max_active = None if limit is None else int(limit)
                conn.send_response(200, b"{}")
            elif action in ("wait", "wait_disconnect"):
                deadline = self.loop.time() + float(q.get("timeout", "5"))
                while True:
                    with self.cond:
                        if action == "wait":
                            result: Any = _wait_ready(
                                self.records, int(q["n"]), q.get("finished") == "1"
                            )
                        else:
                            ready = _disconnect_ready(self.records, int(q.get("index", "-1")))
                            result = (
                                ready.snapshot().to_json() if isinstance(ready, _Live) else ready
                            )
                    if isinstance(result, str):
                        conn.send_response(409, _dumps({"error": result}))
                        break
                    if result is not None:
                        conn.send_response(200, _dumps(result))
                        break
                    if self.loop.time() >= deadline or conn.lost:
                        conn.send_response(504, _dumps({"error": "timeout"}))
                        break
                    await asyncio.sleep(0.002)
            else:
                conn.send_response(404, _dumps({"error": f"unknown control action {action!r}"}))
        except (KeyError, TypeError, ValueError) as e:
            conn.send_response(400, _dumps({"error": f"{type(e).__name__}: {e}"}))
        return True


def _request_body(live: _Live) -> dict[str, Any]:
    return live.body if isinstance(live.body, dict) else {}


def _wait_ready(records: list[_Live], n: int, finished: bool) -> Any:
    """Under the lock: the records as JSON if ``n`` arrived (and finished, if asked), else None."""
    if len(records) < n:
        return None
    if finished and any(r.outcome is None for r in records[:n]):
        return None
    return {"requests": [r.snapshot().to_json() for r in records]}


def _disconnect_ready(records: list[_Live], index: int) -> _Live | str | None:
    """Under the lock: the record once its disconnect was seen; None to keep waiting; a message if
    it ended without one."""
    try:
        live = records[index]
    except IndexError:
        return None
    if live.disconnected_at is not None:
        return live
    if live.outcome is not None:
        return (
            f"request {live.index} ended with outcome {live.outcome!r} and the server saw no "
            "client disconnect while answering it"
        )
    return None


class ScriptedOllama:
    """A scripted Ollama-protocol server in a daemon thread with its own event loop.

    ``start()`` binds ``host:port`` (port 0: a free port) and returns once it listens; ``stop()``
    closes everything. The methods are thread-safe and may be called from any thread except the
    server's own loop thread (they would deadlock there; they raise ``RuntimeError`` instead).

    >>> with ScriptedOllama(Script(tokens=("a", "b"))) as server:
    ...     client = ollama.Client(host=server.base_url)
    ...     print(client.chat(model="scripted", messages=[]).message.content)
    ab
    """

    def __init__(
        self,
        script: ScriptSource | None = None,
        *,
        models: Sequence[str] = ("scripted",),
        host: str = "127.0.0.1",
        port: int = 0,
        record_token_times: bool = False,
    ) -> None:
        self._script = script
        self._models = tuple(models)
        self._host = host
        self._port = port
        self._record_token_times = record_token_times
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._core: _ServerCore | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self, timeout: float = 5.0) -> ScriptedOllama:
        """Start the server thread; returns once the server listens (raises what binding raised)."""
        if self._thread is not None:
            raise RuntimeError("ScriptedOllama already started")
        self._thread = threading.Thread(target=self._run, name="scripted-ollama", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"the scripted server did not start within {timeout} s")
        if self._startup_error is not None:
            raise self._startup_error
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, abort connections, join the thread (``TimeoutError`` if it hangs)."""
        loop, event, thread = self._loop, self._stop_event, self._thread
        if loop is None or event is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # loop already closed
            loop.call_soon_threadsafe(event.set)
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"the scripted server did not stop within {timeout} s")

    def __enter__(self) -> ScriptedOllama:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main(loop))
        finally:
            loop.close()

    async def _main(self, loop: asyncio.AbstractEventLoop) -> None:
        self._stop_event = asyncio.Event()
        core = _ServerCore(
            loop, self._script, self._models, self._host, self._port, self._record_token_times
        )
        try:
            await core.open()
        except BaseException as e:  # reported to start()
            self._startup_error = e
            self._ready.set()
            return
        self._core = core
        self._ready.set()
        await self._stop_event.wait()
        await core.shutdown()

    # -- addresses ------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The bound port (after ``start()``)."""
        return self._started().port

    @property
    def host(self) -> str:
        """``host:port``, as ``OLLAMA_HOST`` expects."""
        return f"{self._host}:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://host:port``, for ``ollama.Client(host=...)``."""
        return f"http://{self._host}:{self.port}"

    def _started(self) -> _ServerCore:
        if self._core is None:
            raise RuntimeError("ScriptedOllama is not started")
        return self._core

    def _call(self, coro: Coroutine[Any, Any, _T], timeout: float) -> _T:
        core = self._started()
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("this method cannot be called from the server's own loop thread")
        future = asyncio.run_coroutine_threadsafe(coro, core.loop)
        return future.result(timeout)

    # -- scripting ------------------------------------------------------------------------------
    def enqueue(self, *scripts: Script) -> None:
        """Scripts for the next generation requests, in order; then the default script applies."""
        core = self._started()
        with core.cond:
            core.queue.extend(scripts)

    def set_max_active(self, n: int | None) -> None:
        """Answer 503 "server busy" (Ollama's words) to generation requests beyond ``n``
        answers in progress, as Ollama does when its queue is full (None: no limit)."""
        core = self._started()
        with core.cond:
            core.max_active = n

    @property
    def busy_answers(self) -> int:
        """How many generation requests were answered 503 "server busy" (set_max_active)."""
        core = self._started()
        with core.cond:
            return core.busy_answers

    def set_script(self, script: ScriptSource) -> None:
        """Replace the default script (or script function)."""
        core = self._started()
        with core.cond:
            core.default = script

    def reset(self) -> None:
        """Forget all records and queued scripts; reset the peak count (see ``peak_active``)."""
        self._started().reset()

    def peak_active(self) -> int:
        """The most generation answers in progress at once since the start or the last reset.

        An answer is in progress from its first byte (status line; for a scripted HTTP error or
        a refusal it never is) until the server is done with it (completed, failed, dropped,
        client gone). ``n`` concurrent requests with nothing queued in the client give ``n``.
        """
        return self._started().activity()["peak"]

    @property
    def active_generations(self) -> int:
        """Generation answers in progress now."""
        return self._started().activity()["active"]

    def reset_peak(self) -> None:
        """Start counting the peak again from the answers in progress now."""
        self._started().reset(records=False)

    def refuse_connections(self, n: int | None = None, timeout: float = 5.0) -> None:
        """Refuse connections (see the module docstring for what the client sees).

        ``None``: close the listening socket (clients get ``httpx.ConnectError``) and idle
        keep-alive connections, until ``refuse_connections(0)``. ``0``: listen again on the same
        port. ``n > 0``: listen, but reset the next ``n`` accepted connections (clients get
        ``httpx.ReadError`` / ``httpx.WriteError``). Takes effect before this method returns.
        """
        if n is not None and n < 0:
            raise ValueError("n must be None or >= 0")
        core = self._started()
        self._call(core.set_refusal(n), timeout)

    @property
    def refused_connections(self) -> int:
        """How many accepted connections were reset by ``refuse_connections(n > 0)``."""
        return self._started().refused_connections

    # -- observation ----------------------------------------------------------------------------
    @property
    def requests(self) -> list[RequestRecord]:
        """Snapshots of the generation requests (``/api/chat``, ``/api/generate``), in order."""
        core = self._started()
        with core.cond:
            return [live.snapshot() for live in core.records]

    @property
    def other_requests(self) -> list[RequestRecord]:
        """Snapshots of the other requests (version, tags, show, ps, unknown paths)."""
        core = self._started()
        with core.cond:
            return [live.snapshot() for live in core.others]

    def wait_for_requests(
        self, n: int, timeout: float = 5.0, *, finished: bool = False
    ) -> list[RequestRecord]:
        """Block until ``n`` generation requests arrived (and, with ``finished``, the first ``n``
        ended); returns all records. ``TimeoutError`` otherwise."""
        core = self._started()
        with core.cond:
            ok = core.cond.wait_for(
                lambda: (
                    len(core.records) >= n
                    and not (finished and any(r.outcome is None for r in core.records[:n]))
                ),
                timeout,
            )
            records = [live.snapshot() for live in core.records]
        if not ok:
            states = [r.outcome for r in records]
            raise TimeoutError(f"wanted {n} requests within {timeout} s; have {states}")
        return records

    def wait_for_disconnect(self, index: int = -1, timeout: float = 5.0) -> RequestRecord:
        """Block until the server noticed the client disconnect during generation request ``index``.

        A negative index is resolved as soon as enough requests exist. Raises ``TimeoutError`` at
        the timeout, or at once if that request already ended without a client disconnect.
        """
        core = self._started()
        with core.cond:
            core.cond.wait_for(lambda: _disconnect_ready(core.records, index) is not None, timeout)
            verdict = _disconnect_ready(core.records, index)
            if isinstance(verdict, _Live):
                return verdict.snapshot()
        if verdict is None:
            raise TimeoutError(
                f"the server saw no client disconnect for request {index} within {timeout} s"
            )
        raise TimeoutError(verdict)


class ScriptedOllamaProcess:
    """The same server in a subprocess (``python -m mellea_actors.testing``), for benchmarks.

    The caller's thread owns the ``subprocess.Popen``; the control methods are plain HTTP requests
    to the server's ``/_scripted/...`` endpoints, each with a timeout. ``refuse_connections`` is not
    available (a closed listener could not receive the request to reopen). Monotonic times in the
    records come from the server process; on Linux ``CLOCK_MONOTONIC`` is system-wide, so they
    compare with the caller's.
    """

    def __init__(
        self,
        script: Script | None = None,
        *,
        models: Sequence[str] = ("scripted",),
        host: str = "127.0.0.1",
        port: int = 0,
        record_token_times: bool = False,
        python: str = sys.executable,
    ) -> None:
        self._script = script if script is not None else Script()
        self._models = tuple(models)
        self._host = host
        self._port = port
        self._record_token_times = record_token_times
        self._python = python
        self._proc: subprocess.Popen[bytes] | None = None
        self.base_url = ""

    def start(self, timeout: float = 10.0) -> ScriptedOllamaProcess:
        """Spawn the server; wait (at most ``timeout``) for the base URL on its stdout."""
        cmd = [
            self._python,
            "-m",
            "mellea_actors.testing",
            "--host",
            self._host,
            "--port",
            str(self._port),
            "--script-json",
            json.dumps(self._script.to_json()),
        ]
        for model in self._models:
            cmd += ["--model", model]
        if self._record_token_times:
            cmd.append("--record-token-times")
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ}
        )
        assert self._proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self._proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                self.stop()
                raise TimeoutError(f"the scripted server process did not start within {timeout} s")
        line = self._proc.stdout.readline().decode().strip()
        if not line.startswith("http://"):
            self.stop()
            raise RuntimeError(f"the scripted server process failed to start: {line!r}")
        self.base_url = line
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close its stdin (the server exits), then terminate / kill it if it lingers."""
        proc = self._proc
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> ScriptedOllamaProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        """The server process id (to sample its CPU time)."""
        if self._proc is None:
            raise RuntimeError("ScriptedOllamaProcess is not started")
        return self._proc.pid

    def _control(
        self, method: str, action: str, body: Any = None, http_timeout: float = 10.0, **query: Any
    ) -> Any:
        if not self.base_url:
            raise RuntimeError("ScriptedOllamaProcess is not started")
        url = urllib.parse.urlsplit(self.base_url)
        conn = http.client.HTTPConnection(
            url.hostname or "127.0.0.1", url.port, timeout=http_timeout
        )
        try:
            qs = f"?{urllib.parse.urlencode(query)}" if query else ""
            payload = json.dumps(body).encode() if body is not None else None
            conn.request(method, f"/_scripted/{action}{qs}", body=payload)
            response = conn.getresponse()
            data = json.loads(response.read() or b"{}")
        finally:
            conn.close()
        if response.status == 504:
            raise TimeoutError(f"scripted server: {action} timed out")
        if response.status == 409:
            raise TimeoutError(data.get("error", "never"))
        if response.status != 200:
            raise RuntimeError(f"scripted server: {action} failed: {data}")
        return data

    def enqueue(self, *scripts: Script) -> None:
        """Scripts for the next generation requests, in order."""
        self._control("POST", "enqueue", {"scripts": [s.to_json() for s in scripts]})

    def set_script(self, script: Script) -> None:
        """Replace the default script."""
        self._control("POST", "default", {"script": script.to_json()})

    def set_max_active(self, n: int | None) -> None:
        """Like :meth:`ScriptedOllama.set_max_active`."""
        self._control("POST", "max_active", {"n": n})

    def reset(self) -> None:
        """Forget all records and queued scripts; reset the peak count."""
        self._control("POST", "reset", {})

    def peak_active(self) -> int:
        """Like :meth:`ScriptedOllama.peak_active`."""
        return int(self._control("GET", "active")["peak"])

    @property
    def active_generations(self) -> int:
        """Like :attr:`ScriptedOllama.active_generations`."""
        return int(self._control("GET", "active")["active"])

    def reset_peak(self) -> None:
        """Like :meth:`ScriptedOllama.reset_peak`."""
        self._control("POST", "reset_peak", {})

    @property
    def requests(self) -> list[RequestRecord]:
        """Snapshots of the generation requests."""
        data = self._control("GET", "requests")
        return [RequestRecord.from_json(r) for r in data["requests"]]

    @property
    def other_requests(self) -> list[RequestRecord]:
        """Snapshots of the other requests."""
        data = self._control("GET", "requests", others=1)
        return [RequestRecord.from_json(r) for r in data["requests"]]

    def wait_for_requests(
        self, n: int, timeout: float = 5.0, *, finished: bool = False
    ) -> list[RequestRecord]:
        """Like :meth:`ScriptedOllama.wait_for_requests` (long poll)."""
        data = self._control(
            "GET", "wait", http_timeout=timeout + 5, n=n, finished=int(finished), timeout=timeout
        )
        return [RequestRecord.from_json(r) for r in data["requests"]]

    def wait_for_disconnect(self, index: int = -1, timeout: float = 5.0) -> RequestRecord:
        """Like :meth:`ScriptedOllama.wait_for_disconnect` (long poll)."""
        data = self._control(
            "GET", "wait_disconnect", http_timeout=timeout + 5, index=index, timeout=timeout
        )
        return RequestRecord.from_json(data)
