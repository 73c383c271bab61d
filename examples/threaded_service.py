"""A threaded HTTP service that streams generations to its clients — no asyncio in sight.

::

    python examples/threaded_service.py --port 8000 [--model M] [--ollama-host URL]
    curl -N 'http://127.0.0.1:8000/generate?prompt=Tell+me+a+story&max_tokens=200'

Standard library only (``http.server.ThreadingHTTPServer``): every request is served by a plain
thread that talks to the session's actors through the blocking API. One session is shared by all
handler threads (``session.submit`` is thread-safe and returns at once).

``GET /generate?prompt=…[&max_tokens=N]`` starts ``session.submit(prompt,
model_options={ModelOption.STREAM: True, …})`` and writes every chunk of
``thunk.iter_chunks(timeout=…)`` to the client as soon as it arrives (chunked transfer encoding,
flushed per chunk). The status line waits for the first chunk, so a generation that fails before
any text gets a real ``502`` with the error; a failure later ends the body with a ``[error] …``
line. The response carries the generation's id in ``X-Request-Id`` (its key in
``session.system.log.events(thunk=…)``).

When the client goes away, the generation is cancelled (its HTTP stream to Ollama closes):

* a write fails (``BrokenPipeError`` / ``ConnectionResetError``): the handler cancels with the
  reason and leaves the ``iter_chunks`` loop (leaving it early would cancel anyway);
* the client hangs up while the model is silent (long time to first token): a small watcher
  thread per request sees the end of file on the socket and cancels at once.

Either way the reason (``the HTTP client … left``) is in the supervision log's
``generation_cancelled`` record and in the server's own log line.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import select
import socket
import sys
import threading
from collections.abc import Generator, Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import mellea_actors
from mellea_actors import MelleaSession
from mellea_actors.backends import ModelOption
from mellea_actors.core.model_output import ModelOutputThunk
from mellea_actors.errors import InvalidInputError, MelleaActorsError
from mellea_actors.runtime.log import configure_output

__all__ = ["GenerationHandler", "GenerationServer", "main", "make_server"]

_log = logging.getLogger("threaded_service")

_CLIENT_ERRORS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


class GenerationServer(ThreadingHTTPServer):
    """A ``ThreadingHTTPServer`` holding the shared session and the streaming settings."""

    daemon_threads = True  # a handler blocked on a generation never holds up shutdown

    def __init__(
        self,
        address: tuple[str, int],
        session: MelleaSession,
        *,
        chunk_timeout: float = 120.0,
        max_tokens: int | None = None,
    ) -> None:
        super().__init__(address, GenerationHandler)
        self.session = session
        self.chunk_timeout = chunk_timeout
        self.max_tokens = max_tokens

    @property
    def url(self) -> str:
        """``http://host:port`` of the bound socket."""
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"


def make_server(
    session: MelleaSession,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    chunk_timeout: float = 120.0,
    max_tokens: int | None = None,
) -> GenerationServer:
    """Bind a server (``port=0``: a free port); run it with ``serve_forever()`` in any thread.

    Stop it with ``shutdown()`` (from another thread) and ``server_close()``; the session stays
    the caller's to close.
    """
    return GenerationServer(
        (host, port), session, chunk_timeout=chunk_timeout, max_tokens=max_tokens
    )


class _DisconnectWatcher:
    """Cancels a generation as soon as the client closes its end of the socket.

    A daemon thread waits until the socket is readable. End of file (``recv`` with ``MSG_PEEK``
    returns ``b""``) or a reset means the client left: the thunk is cancelled with a reason.
    Bytes (a pipelined request) are left in place and the watcher stops watching.
    """

    def __init__(self, sock: socket.socket, thunk: ModelOutputThunk[Any], client: str) -> None:
        self._sock = sock
        self._thunk = thunk
        self._client = client
        self._wake_r, self._wake_w = socket.socketpair()
        self.fired = False
        self._thread = threading.Thread(
            target=self._run, name=f"disconnect-watcher-{client}", daemon=True
        )

    def __enter__(self) -> _DisconnectWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._thread.join(timeout=5)
        self._wake_r.close()
        self._wake_w.close()

    def _run(self) -> None:
        try:
            readable, _, _ = select.select([self._sock, self._wake_r], [], [])
            if self._wake_r in readable or self._sock not in readable:
                return
            try:
                gone = self._sock.recv(1, socket.MSG_PEEK) == b""
            except _CLIENT_ERRORS:
                gone = True
        except (OSError, ValueError):  # the socket was closed under us: the handler is done
            return
        if gone:
            self.fired = True
            with contextlib.suppress(MelleaActorsError):
                self._thunk.cancel_sync(f"the HTTP client {self._client} left (connection closed)")


class GenerationHandler(BaseHTTPRequestHandler):
    """Serves ``GET /generate``; one plain thread per request, blocking calls only."""

    protocol_version = "HTTP/1.1"
    server: GenerationServer

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/generate":
            self._plain(HTTPStatus.NOT_FOUND, "try GET /generate?prompt=...\n")
            return
        params = parse_qs(url.query)
        prompt = params.get("prompt", [""])[0]
        if not prompt.strip():
            self._plain(HTTPStatus.BAD_REQUEST, "the prompt parameter is required\n")
            return
        options: dict[str, Any] = {ModelOption.STREAM: True}
        try:
            max_tokens = int(params.get("max_tokens", [self.server.max_tokens or 0])[0])
        except ValueError:
            self._plain(HTTPStatus.BAD_REQUEST, "max_tokens must be an integer\n")
            return
        if max_tokens > 0:
            options[ModelOption.MAX_NEW_TOKENS] = max_tokens
        try:
            thunk = self.server.session.submit(prompt, model_options=options)
        except InvalidInputError as exc:
            self._plain(HTTPStatus.BAD_REQUEST, f"{exc}\n")
            return
        except MelleaActorsError as exc:
            self._plain(HTTPStatus.SERVICE_UNAVAILABLE, f"{exc}\n")
            return
        self._stream(thunk)

    # -- streaming ------------------------------------------------------------------------------
    def _stream(self, thunk: ModelOutputThunk[Any]) -> None:
        client = "{}:{}".format(*self.client_address[:2])
        rid = thunk.request_id or "?"
        # iter_chunks is a generator: closing it (below) cancels a generation left early
        chunks = cast(
            Generator[str, None, None], thunk.iter_chunks(timeout=self.server.chunk_timeout)
        )
        with _DisconnectWatcher(self.connection, thunk, client) as watcher:
            try:
                sent_headers = False
                try:
                    for text in self._nonempty(chunks):
                        if not sent_headers:
                            self._start_chunked(rid)
                            sent_headers = True
                        self._write_chunk(text.encode("utf-8"))
                except _CLIENT_ERRORS as exc:
                    reason = f"the HTTP client {client} left ({type(exc).__name__} on write)"
                    thunk.cancel_sync(reason)
                    self.close_connection = True
                    self.log_message("generation %s cancelled: %s", rid, reason)
                    return
                except MelleaActorsError as exc:
                    self._fail(rid, exc, sent_headers)
                    return
                if watcher.fired:
                    self.close_connection = True
                    self.log_message("generation %s cancelled: the client %s left", rid, client)
                    return
                if not sent_headers:
                    self._start_chunked(rid)
                self._end_chunked()
            except _CLIENT_ERRORS:
                self.close_connection = True
            finally:
                chunks.close()  # no-op after the end; cancels if we left early

    @staticmethod
    def _nonempty(chunks: Iterator[str]) -> Iterator[str]:
        """The pieces that carry text (a zero-length chunk would end a chunked body)."""
        return (text for text in chunks if text)

    def _start_chunked(self, request_id: str) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Accel-Buffering", "no")
        self.send_header("X-Request-Id", request_id)
        self.end_headers()
        self.wfile.flush()

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _end_chunked(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _fail(self, request_id: str, exc: MelleaActorsError, sent_headers: bool) -> None:
        message = " ".join(str(exc).split())
        self.log_message("generation %s failed: %s", request_id, message)
        if not sent_headers:
            self._plain(HTTPStatus.BAD_GATEWAY, f"{message}\n", request_id=request_id)
            return
        self._write_chunk(f"\n[error] {message}\n".encode())
        self._end_chunked()

    def _plain(self, status: HTTPStatus, body: str, request_id: str | None = None) -> None:
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        if request_id is not None:
            self.send_header("X-Request-Id", request_id)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def log_message(self, format: str, *args: Any) -> None:
        _log.info("%s %s", self.address_string(), format % args)


def main(argv: list[str] | None = None) -> int:
    """Serve until Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    parser.add_argument("--model", help="Ollama model (default: as start_session resolves it)")
    parser.add_argument("--ollama-host", help="Ollama URL (default: as start_session resolves it)")
    parser.add_argument("--max-tokens", type=int, help="default max_tokens per generation")
    parser.add_argument("--json-log", action="store_true", help="supervision log as JSON lines")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Ollama request is noise
    configure_output(json=args.json_log)  # the supervision log on stderr, as it happens
    try:
        session = mellea_actors.start_session(model_id=args.model, base_url=args.ollama_host)
    except MelleaActorsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    with session:
        server = make_server(session, args.host, args.port, max_tokens=args.max_tokens)
        _log.info("serving on %s/generate?prompt=...", server.url)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
