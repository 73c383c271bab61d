"""The Ollama transport: streamed ``/api/chat``, errors mapped once, here.

One :class:`OllamaTransport` per Ollama host. It must be used from a single event loop (the
runtime's actor loop): its connections are bound to it.

The chat stream goes through the transport's own HTTP/1.1 client
(:mod:`~mellea_actors.transport.http_stream`: an asyncio protocol parsed by httptools, a
keep-alive pool) and is read here as NDJSON split on ``\n`` only. (The ``ollama`` client's own
reader splits with ``str.splitlines()``, which also breaks at U+0085, U+2028 and U+2029 —
characters Ollama writes raw inside JSON strings — and then loses the rest of the stream to a
``JSONDecodeError``.) Only the fields the runtime needs are read from each object, with orjson:
no pydantic model per delta. The ``ollama.AsyncClient`` provides the request headers and the
management calls (``/api/tags``, ``/api/version``). How many requests the host gets at once is
:mod:`~mellea_actors.transport.admission`'s job.

Cancellation: cancelling the task that awaits :meth:`OllamaTransport.stream_chat` aborts the
socket at once, in any phase, even while Ollama is silent; Ollama stops generating when it sees
the disconnect. The stream timeout is a watchdog that cancels the same way and is reported as
:class:`StreamTimeoutError`.

Errors (the original is kept as ``__cause__``):

=================================================  =======================================
what the connection / the ``ollama`` client raised  what we raise
=================================================  =======================================
refused or unreachable host (``OSError``,           :class:`BackendUnavailableError` (names host)
``httpx.ConnectError``, ``ConnectTimeout``)
HTTP 404 "model … not found"                        :class:`ModelNotFoundError` (names model, host)
HTTP error of another status                        :class:`BackendResponseError` (status_code)
an ``{"error": …}`` line mid-stream                 :class:`BackendResponseError` (status_code=-1)
the connection ended, broke or was reset before     :class:`StreamDroppedError`
the final ``done`` object
a 200 answer that is not NDJSON objects, or no HTTP :class:`ProtocolMismatchError` (first bytes)
no delta for ``stream_timeout`` seconds             :class:`StreamTimeoutError`
=================================================  =======================================
"""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import httpx
import ollama
import orjson

from mellea_actors._compat import http_client_of, parse_host
from mellea_actors.errors import (
    BackendError,
    BackendResponseError,
    BackendUnavailableError,
    InvalidInputError,
    ModelNotFoundError,
    ProtocolMismatchError,
    QueueTimeoutError,
    StreamDroppedError,
    StreamTimeoutError,
)
from mellea_actors.transport.admission import Admission, AdmissionClient, Ticket
from mellea_actors.transport.chat_request import ChatMessage, GenerationRequest
from mellea_actors.transport.http_stream import (
    ConnectionClosed,
    ConnectionPool,
    HttpStatusError,
    MalformedAnswer,
)

__all__ = [
    "DEFAULT_HOST",
    "DeltaSink",
    "FinalObject",
    "OllamaTransport",
    "default_max_in_flight",
    "map_error",
    "normalize_host",
]

DEFAULT_HOST = "http://127.0.0.1:11434"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class FinalObject:
    """What the runtime reads from the last streamed object (``done=true``)."""

    done_reason: str | None
    prompt_eval_count: int | None
    eval_count: int | None
    total_duration: int | None
    attempts: int | None = None
    """How many attempts a supervisor on the far side made (a Ray generation supervisor's
    restarts and failovers); None for a stream read here."""


def _message_body(message: ChatMessage) -> dict[str, Any]:
    body: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.images is not None:
        body["images"] = list(message.images)
    return body


def _chat_body(request: GenerationRequest) -> dict[str, Any]:
    """The JSON body of ``POST /api/chat`` (``None`` fields left out, as the client does)."""
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [_message_body(m) for m in request.messages],
        "stream": True,
    }
    if request.options:
        body["options"] = dict(request.options)
    if request.format is not None:
        body["format"] = (
            dict(request.format) if isinstance(request.format, Mapping) else request.format
        )
    if request.think is not None:
        body["think"] = request.think
    if request.keep_alive is not None:
        body["keep_alive"] = request.keep_alive
    return body


def normalize_host(host: str | None, *, name: str = "base_url") -> str:
    """``host:port``, ``http://host``, ``0.0.0.0`` … → a base URL like the ollama client's.

    Raises InvalidInputError naming ``name`` (the parameter or variable the host came from)
    for anything that is not a host: a non-str, a bad port, a broken IPv6 literal …
    """
    if host is None or host == "":
        return DEFAULT_HOST
    if not isinstance(host, str):
        raise InvalidInputError(
            f"{name} must be a str such as 'http://127.0.0.1:11434', got "
            f"{type(host).__name__}: {host!r}"
        )
    try:
        url = parse_host(host.strip())
        parsed = httpx.URL(url)
        port = parsed.port
    except (ValueError, httpx.InvalidURL) as exc:
        raise InvalidInputError(f"{name}={host!r} is not a valid Ollama host: {exc}") from None
    if not parsed.host or (port is not None and not 0 < port < 65536):
        raise InvalidInputError(
            f"{name}={host!r} is not a valid Ollama host (expected http://HOST:PORT, "
            "PORT from 1 to 65535)"
        )
    return url


class DeltaSink(Protocol):
    """Where a chat stream's deltas go: called synchronously, on the loop, inside the read.

    A *delta* is one streamed object's ``message.content`` (and ``message.thinking``): the unit
    Ollama sends. (A *chunk* is the unit a chunking strategy cuts the text into; see
    :mod:`mellea_actors.runtime.stream_actor`.)
    """

    def add(self, content: str, thinking: str) -> None:
        """One delta with text (content or thinking non-empty)."""
        ...

    def flush(self) -> None:
        """The end of one network read: what was added since the last flush may go on now."""
        ...


async def _take_place(
    admission: Admission, timeout: float | None, host: str, model: str, place: Ticket | None
) -> None:
    """Hold a place of the host's admission, waiting at most ``timeout`` s (``place``: the
    caller's, taken with :meth:`OllamaTransport.admit`, already held). Given back by
    :func:`_give_place` (a plain ``try``/``finally``: an ``async with`` object and its bound
    ``__aexit__`` would stay alive, two tracked objects, for the stream's whole life)."""
    if place is not None:
        return
    if timeout is None or not admission.full():
        await admission.acquire()
        return
    try:
        async with asyncio.timeout(timeout):
            await admission.acquire()
    except TimeoutError:
        raise queue_timeout_error(admission, timeout, host, model) from None


def _give_place(admission: Admission, place: Ticket | None) -> None:
    if place is not None:
        place.release()
    else:
        admission.release()


def queue_timeout_error(
    admission: Admission, timeout: float, host: str, model: str
) -> QueueTimeoutError:
    return QueueTimeoutError(
        f"no free slot to Ollama at {host} within {timeout} s (all {admission.limit} requests "
        "the host takes now stayed open); nothing was sent",
        host=host,
        model=model,
    )


class _Watchdog:
    """One stream's watchdog: cancels its task when nothing was fed for ``timeout`` seconds.

    Feeding costs one ``loop.time()``; the stream owns no timer of its own: a
    :class:`_WatchdogWheel` checks every watchdog of the transport from one timer. Loop thread.
    """

    __slots__ = ("_loop", "_task", "_wheel", "fired", "last", "timeout")

    def __init__(self, wheel: _WatchdogWheel, timeout: float) -> None:
        self._wheel = wheel
        self._loop = wheel.loop
        self._task = asyncio.current_task()
        self.timeout = timeout
        self.fired = False
        self.last = self._loop.time()
        wheel.add(self)

    def feed(self) -> None:
        self.last = self._loop.time()

    def fire(self) -> None:
        """The wheel found it starved (it has left the wheel)."""
        self.fired = True
        if self._task is not None:
            self._task.cancel("stream timeout")

    def close(self) -> None:
        self._wheel.discard(self)


_WHEEL_SPACING = 0.01
"""Seconds: the wheel's timer fires at most this often (a watchdog fires that much late at most)."""


class _WatchdogWheel:
    """The stream watchdogs of one transport, checked by one timer (loop thread).

    The timer is armed for the earliest deadline (``last`` + ``timeout``) among the watchdogs;
    when it fires, every watchdog past its deadline fires, and the timer is re-armed for the
    earliest of the rest, never sooner than :data:`_WHEEL_SPACING` ahead. Fed streams push
    their deadline on without touching the timer, so 1,000 streams cost one timer instead of
    1,000 (each a timer handle, a context and a bound method, in the event loop's heap), and a
    check of all of them once per ``timeout`` while they are busy.
    """

    __slots__ = ("_armed_at", "_dogs", "_handle", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._dogs: set[_Watchdog] = set()
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = 0.0

    def add(self, dog: _Watchdog) -> None:
        self._dogs.add(dog)
        deadline = dog.last + dog.timeout
        if self._handle is None or deadline < self._armed_at:
            self._arm(deadline)

    def discard(self, dog: _Watchdog) -> None:
        self._dogs.discard(dog)
        if not self._dogs and self._handle is not None:
            self._handle.cancel()
            self._handle = None

    @property
    def watching(self) -> int:
        """How many streams it watches."""
        return len(self._dogs)

    @property
    def armed(self) -> bool:
        """Whether its one timer is armed."""
        return self._handle is not None

    def _arm(self, at: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self.loop.call_at(at, self._tick)
        self._armed_at = at

    def _tick(self) -> None:
        self._handle = None
        now = self.loop.time()
        earliest: float | None = None
        starved: list[_Watchdog] = []
        for dog in self._dogs:
            deadline = dog.last + dog.timeout
            if deadline <= now:
                starved.append(dog)
            elif earliest is None or deadline < earliest:
                earliest = deadline
        for dog in starved:
            self._dogs.discard(dog)
            dog.fire()
        if earliest is not None:
            self._arm(max(earliest, now + _WHEEL_SPACING))


def _said(exc: BaseException) -> str:
    """What an exception says, or its type when it says nothing (httpx raises ReadError(''))."""
    return str(exc) or type(exc).__name__


def map_error(exc: BaseException, *, host: str, model: str | None) -> BackendError:
    """Translate an exception of the ollama client / httpx into our hierarchy."""
    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, ollama.ResponseError):
        status = exc.status_code
        text = exc.error
        if status == 404 and "not found" in text.lower():
            return ModelNotFoundError(
                f"model {model!r} not found on Ollama at {host} ({text})", host=host, model=model
            )
        if status == -1:
            return BackendResponseError(
                f"Ollama at {host} reported an error mid-stream for model {model!r}: {text}",
                status_code=-1,
                host=host,
                model=model,
            )
        return BackendResponseError(
            f"Ollama at {host} answered HTTP {status} for model {model!r}: {text}",
            status_code=status,
            host=host,
            model=model,
        )
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, ConnectionRefusedError)) or (
        isinstance(exc, ConnectionError) and not isinstance(exc, ConnectionResetError)
    ):
        return BackendUnavailableError(
            f"cannot reach Ollama at {host}: {_said(exc)}"
            " (is `ollama serve` running there? set OLLAMA_HOST or base_url)",
            host=host,
            model=model,
        )
    if isinstance(
        exc, (httpx.RemoteProtocolError, httpx.ReadError, ConnectionResetError, httpx.WriteError)
    ):
        return StreamDroppedError(
            f"the connection to Ollama at {host} broke mid-stream: {_said(exc)}",
            host=host,
            model=model,
        )
    if isinstance(exc, httpx.TimeoutException):
        return StreamTimeoutError(f"Ollama at {host} timed out: {exc}", host=host, model=model)
    return BackendError(f"request to Ollama at {host} failed: {exc!r}", host=host, model=model)


class _NdjsonDecoder:
    """Ollama's NDJSON chat answer, fed as it arrives; split on ``\n`` only (loop thread).

    The :class:`~mellea_actors.transport.http_stream.BodyReader` of the chat request: ``body``
    hands each object's delta to the sink and returns True once the final object
    (``done=true``) came; ``end_of_read`` flushes the sink once per network read.
    Only the fields the runtime needs are read: no model object per delta.
    """

    __slots__ = ("_host", "_model", "_pending", "_sink", "admission", "final", "watchdog")

    def __init__(self, host: str, model: str, sink: DeltaSink) -> None:
        self._host = host
        self._model = model
        self._sink = sink
        self._pending = b""
        self.final: FinalObject | None = None
        self.watchdog: _Watchdog | None = None
        self.admission: Admission | None = None

    def answered(self, status: int) -> None:
        """The host took the request (slow start of its admission) unless it refused it."""
        if status < 400 and self.admission is not None:
            self.admission.answered()

    def body(self, data: bytes) -> bool:
        if not data:  # the end of the body: a last object may lack its newline
            pending, self._pending = self._pending, b""
            return bool(pending.strip()) and self._on_line(pending)
        if self._pending:
            data = self._pending + data
        start = 0
        while (end := data.find(b"\n", start)) != -1:
            if end > start and self._on_line(data[start:end]):
                self._pending = b""
                return True
            start = end + 1
        self._pending = data[start:]
        return False

    def end_of_read(self) -> None:
        """One network read is over: its deltas go on together; the stream is alive."""
        if self.watchdog is not None:
            self.watchdog.feed()
        self._sink.flush()

    def dropped(self, exc: ConnectionClosed) -> BackendError:
        """The error for an answer that ended before the final object."""
        if exc.orderly:
            return StreamDroppedError(
                f"the stream from Ollama at {self._host} ended without its final object "
                "(done=true)",
                host=self._host,
                model=self._model,
            )
        if exc.received:
            return StreamDroppedError(
                f"the connection to Ollama at {self._host} broke mid-stream: {exc}",
                host=self._host,
                model=self._model,
            )
        return StreamDroppedError(
            f"the connection to Ollama at {self._host} closed before an answer: {exc}",
            host=self._host,
            model=self._model,
        )

    def _on_line(self, line: bytes) -> bool:
        """One NDJSON object: deliver its delta; True for the final object."""
        try:
            part = orjson.loads(line)
        except orjson.JSONDecodeError:
            if not line.strip():
                return False
            part = None
        if not isinstance(part, dict):
            raise ProtocolMismatchError(
                f"the host at {self._host} does not speak the Ollama protocol: /api/chat "
                f"answered 200 with {line[:120]!r} (expected one JSON object per line); is "
                "base_url / OLLAMA_HOST an Ollama server?",
                host=self._host,
                model=self._model,
            )
        error = part.get("error")
        if error:
            raise ollama.ResponseError(str(error))
        message = part.get("message")
        if message.__class__ is dict:
            content = message.get("content") or ""
            thinking = message.get("thinking") or ""
            if content or thinking:
                self._sink.add(content, thinking)
        if part.get("done"):
            self.final = FinalObject(
                done_reason=part.get("done_reason"),
                prompt_eval_count=part.get("prompt_eval_count"),
                eval_count=part.get("eval_count"),
                total_duration=part.get("total_duration"),
            )
            return True
        return False


def default_max_in_flight() -> int:
    """How many requests one process keeps open to a host by default: as many as it has file
    descriptors for (the soft ``RLIMIT_NOFILE`` less 128 kept for everything else; 64 at least).

    Admission is the server's job: Ollama queues what it accepts (``OLLAMA_MAX_QUEUE``) and
    answers 503 "server busy" beyond, which the generation supervisor retries with backoff
    before the first chunk. A client-side cap below that would only hold requests back.
    """
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 65536
    return max(64, soft - 128)


class OllamaTransport:
    """Streams chat generations from one Ollama host (use from one event loop only).

    ``max_in_flight`` caps the requests open at once (the rest wait for a slot, FIFO, at most
    ``queue_timeout`` seconds: :class:`QueueTimeoutError`; None: no bound on the wait).
    ``None`` (the default) sizes it to the process: :func:`default_max_in_flight`.
    """

    def __init__(
        self,
        host: str,
        *,
        connect_timeout: float = 10.0,
        max_in_flight: int | None = None,
        queue_timeout: float | None = 300.0,
    ) -> None:
        self._queue_timeout = queue_timeout
        self.host = normalize_host(host)
        self._connect_timeout = connect_timeout
        self._max_in_flight = default_max_in_flight() if max_in_flight is None else max_in_flight
        self._client: ollama.AsyncClient | None = None
        self._admission: Admission | None = None
        self._pool: ConnectionPool | None = None
        self._wheel: _WatchdogWheel | None = None  # the streams' watchdogs (loop of the pool)
        self._head = b""  # the request line and headers but Content-Length (see _ensure_pool)

    def _ensure_client(self) -> ollama.AsyncClient:
        if self._client is None:
            tls = self.host.startswith("https:")
            self._client = ollama.AsyncClient(
                host=self.host,
                timeout=httpx.Timeout(None, connect=self._connect_timeout),
                # management calls only (tags, version): the chat streams use their own pool
                limits=httpx.Limits(max_connections=16, max_keepalive_connections=4),
                # a plain-http host never uses TLS: skip loading the CA bundle (~30 ms of CPU,
                # paid inside the first request of every session otherwise)
                **({} if tls else {"verify": False}),
            )
        return self._client

    def _ensure_wheel(self) -> _WatchdogWheel:
        if self._wheel is None:
            self._wheel = _WatchdogWheel(asyncio.get_running_loop())
        return self._wheel

    def _ensure_pool(self) -> ConnectionPool:
        if self._pool is None:
            url = httpx.URL(self.host)
            self._pool = ConnectionPool(
                asyncio.get_running_loop(),
                scheme=url.scheme,
                host=url.host,
                port=url.port or (443 if url.scheme == "https" else 80),
                connect_timeout=self._connect_timeout,
            )
            self._admission = Admission(asyncio.get_running_loop(), self._max_in_flight)
            headers = http_client_of(self._ensure_client()).headers
            # the client's own headers (user agent, auth), minus what we do not speak; the same
            # for every request, so the head is built once
            self._head = self._pool.request_head(
                url.path.rstrip("/") + "/api/chat",
                {k: v for k, v in headers.items() if k not in ("accept-encoding", "connection")},
            )
        return self._pool

    def admit(self, client: AdmissionClient, token: Any = None) -> Ticket:
        """A place of the host's admission for one request, for a caller that starts its task
        only once admitted (nothing of the request is built while it waits). The ticket holds
        the place now (``state == 1``) or waits; then ``client`` is told when it gets it, or
        that it expired after ``queue_timeout`` s (:meth:`queue_timeout_error` is the error to
        give); ``Ticket.cancel()`` leaves the queue. A place is handed to :meth:`stream_chat`
        (``place=``), which releases it; whoever ends the request calls ``Ticket.release()``
        too (a no-op after that), which covers a task cancelled before it ran. Loop thread only.
        """
        self._ensure_pool()
        assert self._admission is not None
        return self._admission.enter(client, token, self._queue_timeout)

    def queue_timeout_error(self, model: str) -> QueueTimeoutError:
        """The error of a request that waited ``queue_timeout`` s for a place."""
        assert self._admission is not None and self._queue_timeout is not None
        return queue_timeout_error(self._admission, self._queue_timeout, self.host, model)

    async def stream_chat(
        self, request: GenerationRequest, sink: DeltaSink, *, place: Ticket | None = None
    ) -> FinalObject:
        """Stream one chat: ``sink`` gets every delta with text; returns the final object.

        The final object is the one with ``done=True`` (``done_reason``, ``eval_count``, …).
        ``sink`` is called synchronously on the loop, inside the socket's read callback: it must
        not block. Raises a :class:`BackendError` subclass (see the module docstring).
        Cancelling the calling task closes the connection at once. ``place``: the caller's
        place of the admission (:meth:`admit`), released here however the call ends.
        """
        pool = self._ensure_pool()
        admission = self._admission
        assert admission is not None
        body = orjson.dumps(_chat_body(request))  # orjson's buffer is 4 KB: keep only the
        message = b"%sContent-Length: %d\r\n\r\n%s" % (self._head, len(body), body)  # copy
        del body
        decoder = _NdjsonDecoder(self.host, request.model, sink)
        decoder.admission = admission
        timeout = request.stream_timeout
        await _take_place(admission, self._queue_timeout, self.host, request.model, place)
        try:
            watchdog = None if timeout is None else _Watchdog(self._ensure_wheel(), timeout)
            decoder.watchdog = watchdog
            try:
                await pool.stream_post(message, decoder)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if watchdog is None or not watchdog.fired or task is None or task.uncancel():
                    raise  # a real cancel (or one more than ours): let it through
                raise StreamTimeoutError(
                    f"nothing from Ollama at {self.host} for {timeout} s "
                    f"(model {request.model!r}; ModelOption.STREAM_TIMEOUT)",
                    host=self.host,
                    model=request.model,
                ) from None
            except BackendError:
                raise
            except HttpStatusError as exc:
                if exc.status == 503:  # "server busy": the host's queue is full (admission.py)
                    admission.busy()
                text = exc.body.decode("utf-8", "replace")
                error = ollama.ResponseError(text, exc.status)
                raise map_error(error, host=self.host, model=request.model) from exc
            except ConnectionClosed as exc:
                raise decoder.dropped(exc) from exc
            except MalformedAnswer as exc:
                raise ProtocolMismatchError(
                    f"the host at {self.host} does not speak HTTP as Ollama does: /api/chat "
                    f"answered {exc.head!r} ({exc}); is base_url / OLLAMA_HOST an Ollama server?",
                    host=self.host,
                    model=request.model,
                ) from exc
            except Exception as exc:
                raise map_error(exc, host=self.host, model=request.model) from exc
            finally:
                if watchdog is not None:
                    watchdog.close()
            admission.completed()
        finally:
            _give_place(admission, place)
        assert decoder.final is not None
        return decoder.final

    async def _bounded(self, call: Awaitable[T], timeout: float, what: str) -> T:
        """Await a short request to the host, with a timeout and our errors."""
        try:
            async with asyncio.timeout(timeout):
                return await call
        except TimeoutError as exc:
            raise BackendUnavailableError(
                f"Ollama at {self.host} did not {what} within {timeout} s", host=self.host
            ) from exc
        except Exception as exc:
            raise map_error(exc, host=self.host, model=None) from exc

    async def list_models(self, timeout: float = 5.0) -> list[str]:
        """Names of the models the host has (``/api/tags``)."""
        listed = await self._bounded(self._ensure_client().list(), timeout, "list its models")
        return [m.model for m in listed.models if m.model]

    async def version(self, timeout: float = 5.0) -> str:
        """The server's version (``/api/version``); BackendUnavailableError if unreachable."""
        http = http_client_of(self._ensure_client())
        response = await self._bounded(http.get("/api/version"), timeout, "answer")
        try:
            response.raise_for_status()
        except httpx.HTTPStatusError as exc:
            raise map_error(exc, host=self.host, model=None) from exc
        data: dict[str, Any] = response.json()
        return str(data.get("version", ""))

    async def aclose(self) -> None:
        if self._pool is not None:
            self._pool.close()
        if self._client is not None:
            client, self._client = self._client, None
            await http_client_of(client).aclose()
