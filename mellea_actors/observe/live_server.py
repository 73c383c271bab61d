"""The live view's HTTP server: a stdlib ``ThreadingHTTPServer`` on a daemon thread of its own.

Why a thread of its own and not the runtime's loop: the loop carries every generation's hot
path; a page or a scrape must not take time there, and serving on it would put loop↔thread
hand-offs in this package. The server only reads thread-safe snapshots (:class:`LiveSource`:
the log is lock-guarded, the registries are copied), so it needs no hand-off at all.

Endpoints (GET; ``docs/live_view.md``): ``/`` (the page, from ``static/``), ``/static/…``,
``/api/state`` (everything the page shows, in one answer), ``/api/tree``, ``/api/streams``,
``/api/events?thunk=&actor=&event=&since=&limit=``, ``/metrics`` (Prometheus text format).

Security: see :func:`~mellea_actors.observe.live_source.check_bind`. With a token, a request
without it is answered 401. Bound to loopback, a request whose ``Host`` header names anything
else is answered 403 (a web page the user visits could otherwise reach the view by DNS
rebinding).

Closing (:meth:`LiveView.close`, called by the system's ``close()``): stops the accept loop,
shuts the open connections' sockets (so no handler waits on a slow client), closes the
listening socket and joins every thread: nothing outlives it.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import socket
import socketserver
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST

from mellea_actors.observe.live_source import LiveSource, check_bind, is_loopback
from mellea_actors.observe.live_state import LiveState

__all__ = ["LiveView", "start_live_view"]

_STATIC = {
    "index.html": "text/html; charset=utf-8",
    "live.js": "text/javascript; charset=utf-8",
    "live.css": "text/css; charset=utf-8",
}
#: How often the server reads the log's new records while no request comes (seconds).
TICK = 0.5
#: Bound of a blocked read or write on one connection (seconds).
SOCKET_TIMEOUT = 10.0
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _static(name: str) -> bytes:
    return resources.files("mellea_actors.observe").joinpath("static", name).read_bytes()


def _int(params: dict[str, list[str]], name: str, default: int | None) -> int | None:
    values = params.get(name)
    if not values or values[-1] == "":
        return default
    try:
        return int(values[-1])
    except ValueError:
        raise _BadRequest(f"{name} must be an integer, got {values[-1]!r}") from None


def _str(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    return values[-1] if values and values[-1] != "" else None


class _BadRequest(Exception):
    pass


class _Server(ThreadingHTTPServer):
    """Tracks its connections (closed on shutdown) and reads the log on its idle tick."""

    daemon_threads = True  # never holds up the interpreter's exit; joined by close() instead
    block_on_close = False  # (socketserver joins non-daemon threads only: see join_threads)

    def __init__(self, address: tuple[str, int], view: LiveView) -> None:
        self.view = view
        self.connections: set[socket.socket] = set()
        self.threads: set[threading.Thread] = set()
        self.connections_lock = threading.Lock()  # guards both sets
        self._last_tick = 0.0
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would resolve the host's FQDN (a DNS lookup): not needed here
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def service_actions(self) -> None:  # serve_forever's loop, every poll interval
        now = time.monotonic()
        if now - self._last_tick >= TICK:
            self._last_tick = now
            with contextlib.suppress(Exception):  # a source gone mid-close: nothing to read
                self.view.state.ingest()

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name="mellea-actors-live-view-request",
            daemon=True,
        )
        with self.connections_lock:
            self.connections.add(request)
            self.threads = {t for t in self.threads if t.is_alive()}
            self.threads.add(thread)
        thread.start()

    def join_threads(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.connections_lock:
            threads = list(self.threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self.connections_lock:
            open_now = list(self.connections)
        for sock in open_now:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = SOCKET_TIMEOUT
    server_version = "mellea-actors-live-view"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # quiet: a library prints nothing
        return

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _not_allowed(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "the live view is read-only: GET"})

    do_POST = do_PUT = do_DELETE = do_PATCH = _not_allowed

    # -----------------------------------------------------------------------------------------
    def _serve(self, *, head: bool) -> None:
        view = self.server.view
        parts = urlsplit(self.path)
        params = parse_qs(parts.query, keep_blank_values=True)
        refusal = view.refusal(self.headers.get("Host"), self.headers.get("Authorization"), params)
        if refusal is not None:
            status, message = refusal
            extra = {"WWW-Authenticate": 'Bearer realm="mellea-actors"'} if status == 401 else {}
            self._send(status, {"error": message}, head=head, headers=extra)
            return
        path = parts.path.rstrip("/") or "/"
        try:
            if path in ("/", "/index.html"):
                self._send_bytes(HTTPStatus.OK, view.page(), _STATIC["index.html"], head)
                return
            if path.startswith("/static/") and path.removeprefix("/static/") in _STATIC:
                name = path.removeprefix("/static/")
                self._send_bytes(HTTPStatus.OK, _static(name), _STATIC[name], head)
                return
            if path == "/metrics":
                view.state.ingest()
                self._send_bytes(
                    HTTPStatus.OK, view.state.metrics.exposition(), CONTENT_TYPE_LATEST, head
                )
                return
            answer = view.answer(path, params)
        except _BadRequest as exc:
            self._send(HTTPStatus.BAD_REQUEST, {"error": str(exc)}, head=head)
            return
        if answer is None:
            self._send(HTTPStatus.NOT_FOUND, {"error": f"no such page: {parts.path}"}, head=head)
            return
        self._send(HTTPStatus.OK, answer, head=head)

    def _send(
        self,
        status: int,
        payload: Any,
        *,
        head: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        body = json.dumps(payload, default=str, separators=(",", ":")).encode()
        self._send_bytes(status, body, "application/json", head, headers)

    def _send_bytes(
        self,
        status: int,
        body: bytes,
        content_type: str,
        head: bool,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", _CSP)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            with contextlib.suppress(OSError):  # the client left: nothing to do
                self.wfile.write(body)


class LiveView:
    """A running live view (what ``serve()`` returns): ``url``, ``close()``.

    ``url`` is the page's address (``http://HOST:PORT/``); with a token, ``url_with_token``
    carries it as ``?token=`` (for a browser; the page passes it on to the API).
    """

    def __init__(self, source: LiveSource, host: str, port: int, token: str | None) -> None:
        self.state = LiveState(source)
        self.token = token
        self.bound_host = host
        self._loopback = is_loopback(host)
        self._server = _Server((host, port), self)
        self.port: int = self._server.server_address[1]
        self.host = host
        self._closed = False
        self._close_lock = threading.Lock()
        self.state.ingest()
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": TICK / 2},
            name=f"mellea-actors-live-view-{source.id}",
            daemon=True,
        )
        self._thread.start()

    # -- the address -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"

    @property
    def url_with_token(self) -> str:
        if self.token is None:
            return self.url
        return f"{self.url}?token={quote(self.token, safe='')}"

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        auth = "token" if self.token else "no token"
        return f"LiveView({self.url!r}, {auth}{', closed' if self._closed else ''})"

    # -- requests (server threads) ---------------------------------------------------------------
    def page(self) -> bytes:
        """The page; with a token, its script and style sheet are linked with it (a browser
        sends no Authorization header for them)."""
        html = _static("index.html")
        if self.token is None:
            return html
        suffix = ("?token=" + quote(self.token, safe="")).encode()
        for asset in (b"static/live.js", b"static/live.css"):
            html = html.replace(b'"' + asset + b'"', b'"' + asset + suffix + b'"')
        return html

    def refusal(
        self, host_header: str | None, authorization: str | None, params: dict[str, list[str]]
    ) -> tuple[int, str] | None:
        """Why a request is refused (status, message), or None."""
        if self._loopback:
            name = (host_header or "").strip()
            if name.startswith("["):
                name = name[1:].partition("]")[0]
            else:
                name = name.rpartition(":")[0] if name.count(":") == 1 else name
            if name and not is_loopback(name):
                return 403, f"this live view answers loopback Host names only, not {name!r}"
        if self.token is None:
            return None
        given = None
        if authorization and authorization.startswith("Bearer "):
            given = authorization.removeprefix("Bearer ").strip()
        elif params.get("token"):
            given = params["token"][-1]
        if given is None or not hmac.compare_digest(given.encode(), self.token.encode()):
            return 401, "a token is required: 'Authorization: Bearer <token>' or '?token=<token>'"
        return None

    def answer(self, path: str, params: dict[str, list[str]]) -> Any:
        """The JSON answer for an API path (None: no such path)."""
        state = self.state
        if path == "/api/tree":
            state.ingest()
            return state.tree()
        if path == "/api/streams":
            state.ingest()
            return {"system": state.source.id, "streams": state.streams()}
        if path == "/api/events":
            state.ingest()
            return self._events(params, default_limit=200)
        if path == "/api/state":
            state.ingest()
            events = self._events(params, default_limit=100)
            return {
                "system": state.source.id,
                "time": time.time(),
                "updates": state.updates,
                "tree": state.tree(),
                "streams": state.streams(),
                "hosts": state.source.hosts(),
                "breakers": state.breakers(),
                "event_names": state.event_names(),
                **events,
            }
        return None

    def _events(self, params: dict[str, list[str]], *, default_limit: int) -> dict[str, Any]:
        limit = _int(params, "limit", default_limit)
        if limit is not None and not 0 < limit <= 10_000:
            raise _BadRequest(f"limit must be in 1..10000, got {limit}")
        since = _int(params, "since", None)
        names = [n for value in params.get("event", []) for n in value.split(",") if n]
        events, last = self.state.events(
            thunk=_str(params, "thunk"),
            actor=_str(params, "actor"),
            event=names or None,
            since=since,
            limit=limit,
        )
        return {"events": events, "seq": last}

    # -- closing ----------------------------------------------------------------------------------
    def close(self, timeout: float = 5.0) -> None:
        """Stop serving: no thread or socket of the view is left (idempotent)."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        if self._thread.is_alive():
            self._server.shutdown()  # returns once serve_forever returned
        self._server.close_connections()
        self._server.server_close()  # closes the listening socket
        self._server.join_threads(timeout)
        self._thread.join(timeout)

    def abandon(self) -> None:
        """In a forked child: its thread was not copied; drop the listening socket only."""
        self._closed = True
        with contextlib.suppress(OSError):
            self._server.socket.close()


def start_live_view(
    source: LiveSource,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
    *,
    explicit: bool = True,
) -> LiveView:
    """Check the bind rule (ValueError before binding), then serve ``source``'s live view."""
    check_bind(host, port, token, explicit=explicit)
    return LiveView(source, host, port, token)
