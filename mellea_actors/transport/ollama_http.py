"""The Ollama transport: streamed ``/api/chat`` over httpx, errors mapped once, here.

One :class:`OllamaTransport` per Ollama host. It must be used from a single event loop (the
runtime's actor loop): the underlying ``httpx.AsyncClient`` pool is bound to it.

The ``ollama.AsyncClient`` provides the HTTP client (its headers and host handling) and the
management calls (``/api/tags``); the chat stream itself is read here, as NDJSON split on
``\n`` only. (The client's own reader splits with ``str.splitlines()``, which also breaks at
U+0085, U+2028 and U+2029 — characters Ollama writes raw inside JSON strings — and then loses
the rest of the stream to a ``JSONDecodeError``.) Only the fields the runtime needs are read
from each object: no pydantic model per delta.

Cancellation: cancelling the task that awaits :meth:`OllamaTransport.stream_chat` closes the
HTTP connection at once (httpx never returns a half-read response to its pool), even while Ollama
is silent; Ollama stops generating when it sees the disconnect. The stream timeout is a watchdog
that cancels the same way and is reported as :class:`StreamTimeoutError`.

Errors (the original is kept as ``__cause__``):

=================================================  =======================================
what the ``ollama`` client / httpx raised           what we raise
=================================================  =======================================
``httpx.ConnectError``, ``ConnectTimeout``,         :class:`BackendUnavailableError` (names host)
builtin ``ConnectionError``
``ResponseError`` 404 "model … not found"           :class:`ModelNotFoundError` (names model, host)
``ResponseError`` other status                      :class:`BackendResponseError` (status_code)
``ResponseError`` status -1 (error line mid-stream) :class:`BackendResponseError` (status_code=-1)
``httpx.RemoteProtocolError``, ``ReadError``, end   :class:`StreamDroppedError`
of stream without the final ``done`` object
a 200 answer that is not NDJSON objects             :class:`ProtocolMismatchError` (first bytes)
no delta for ``stream_timeout`` seconds             :class:`StreamTimeoutError`
=================================================  =======================================
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import ollama

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
from mellea_actors.transport.chat_request import GenerationRequest

__all__ = [
    "DEFAULT_HOST",
    "DeltaCallback",
    "FinalObject",
    "OllamaTransport",
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


def _chat_body(request: GenerationRequest) -> dict[str, Any]:
    """The JSON body of ``POST /api/chat`` (``None`` fields left out, as the client does)."""
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [m.model_dump(exclude_none=True) for m in request.messages],
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


DeltaCallback = Callable[[str, str], None]
"""``on_delta(content, thinking)``: called synchronously, on the loop, for each delta with text.

A *delta* is one streamed object's ``message.content`` (and ``message.thinking``): the unit
Ollama sends. (A *chunk* is the unit a chunking strategy cuts the text into; see
:mod:`mellea_actors.runtime.stream_actor`.)"""


class _Slot:
    """``async with``: hold one of the host's slots, waiting at most ``timeout`` seconds."""

    __slots__ = ("_host", "_model", "_slots", "_timeout")

    def __init__(
        self, slots: asyncio.Semaphore, timeout: float | None, host: str, model: str
    ) -> None:
        self._slots = slots
        self._timeout = timeout
        self._host = host
        self._model = model

    async def __aenter__(self) -> None:
        if self._timeout is None or not self._slots.locked():
            await self._slots.acquire()
            return
        try:
            async with asyncio.timeout(self._timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise QueueTimeoutError(
                f"no free slot to Ollama at {self._host} within {self._timeout} s (all "
                "max_in_flight requests stayed open); nothing was sent",
                host=self._host,
                model=self._model,
            ) from None

    async def __aexit__(self, *exc_info: object) -> None:
        self._slots.release()


class _Watchdog:
    """Cancels a task when nothing was fed for ``timeout`` seconds (one timer, re-armed lazily).

    Feeding costs one ``loop.time()``; the timer only re-arms when it fires early. Loop thread.
    """

    __slots__ = ("_handle", "_loop", "_task", "_timeout", "fired", "last")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self._timeout = timeout
        self._task = asyncio.current_task()
        self.fired = False
        self.last = loop.time()
        self._handle = loop.call_at(self.last + timeout, self._check)

    def feed(self) -> None:
        self.last = self._loop.time()

    def _check(self) -> None:
        deadline = self.last + self._timeout
        if self._loop.time() < deadline:
            self._handle = self._loop.call_at(deadline, self._check)
            return
        self.fired = True
        if self._task is not None:
            self._task.cancel("stream timeout")

    def close(self) -> None:
        self._handle.cancel()


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


class OllamaTransport:
    """Streams chat generations from one Ollama host (use from one event loop only).

    ``max_in_flight`` caps the requests open at once (the rest wait for a slot, FIFO, at most
    ``queue_timeout`` seconds: :class:`QueueTimeoutError`; None: no bound): a few
    hundred connections saturate a local Ollama anyway, and an uncapped httpx pool spends most of
    its CPU on bookkeeping with a thousand of them.
    """

    def __init__(
        self,
        host: str,
        *,
        connect_timeout: float = 10.0,
        max_in_flight: int = 256,
        queue_timeout: float | None = 300.0,
    ) -> None:
        self._queue_timeout = queue_timeout
        self.host = normalize_host(host)
        self._connect_timeout = connect_timeout
        self._max_in_flight = max_in_flight
        self._client: ollama.AsyncClient | None = None
        self._slots: asyncio.Semaphore | None = None

    def _ensure_client(self) -> ollama.AsyncClient:
        if self._client is None:
            self._client = ollama.AsyncClient(
                host=self.host,
                timeout=httpx.Timeout(None, connect=self._connect_timeout),
                limits=httpx.Limits(
                    max_connections=self._max_in_flight,
                    # few idle connections: httpcore checks every idle one at each request start
                    max_keepalive_connections=min(self._max_in_flight, 8),
                ),
            )
            self._slots = asyncio.Semaphore(self._max_in_flight)
        return self._client

    async def stream_chat(
        self, request: GenerationRequest, on_delta: DeltaCallback
    ) -> FinalObject:
        """Stream one chat: ``on_delta`` gets every delta with text; returns the final object.

        The final object is the one with ``done=True`` (``done_reason``, ``eval_count``, …).
        ``on_delta`` runs synchronously on the loop, between two reads of the stream: it must not
        block. Raises a :class:`BackendError` subclass (see the module docstring). Cancelling the
        calling task closes the connection at once.
        """
        http = http_client_of(self._ensure_client())
        assert self._slots is not None
        loop = asyncio.get_running_loop()
        timeout = request.stream_timeout
        async with _Slot(self._slots, self._queue_timeout, self.host, request.model):
            watchdog = None if timeout is None else _Watchdog(loop, timeout)
            try:
                async with http.stream("POST", "/api/chat", json=_chat_body(request)) as response:
                    if response.status_code >= 400:
                        text = (await response.aread()).decode("utf-8", "replace")
                        raise ollama.ResponseError(text, response.status_code)
                    final = await self._read_stream(response, request, on_delta, watchdog)
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
            except Exception as exc:
                raise map_error(exc, host=self.host, model=request.model) from exc
            finally:
                if watchdog is not None:
                    watchdog.close()
        return final

    async def _read_stream(
        self,
        response: httpx.Response,
        request: GenerationRequest,
        on_delta: DeltaCallback,
        watchdog: _Watchdog | None,
    ) -> FinalObject:
        """Read NDJSON objects until the final one; split on ``\n`` only."""
        pending = b""
        async for data in response.aiter_bytes():
            if watchdog is not None:
                watchdog.feed()
            pending += data
            start = 0
            while (end := pending.find(b"\n", start)) != -1:
                line = pending[start:end]
                start = end + 1
                if line.strip():
                    final = self._on_line(line, request, on_delta)
                    if final is not None:
                        return final
            pending = pending[start:]
        if pending.strip():  # a last object without its newline
            final = self._on_line(pending, request, on_delta)
            if final is not None:
                return final
        raise StreamDroppedError(
            f"the stream from Ollama at {self.host} ended without its final object (done=true)",
            host=self.host,
            model=request.model,
        )

    def _on_line(
        self, line: bytes, request: GenerationRequest, on_delta: DeltaCallback
    ) -> FinalObject | None:
        """One NDJSON object: deliver its delta; the final object, or None."""
        try:
            part = json.loads(line)
        except ValueError:
            part = None
        if not isinstance(part, dict):
            raise ProtocolMismatchError(
                f"the host at {self.host} does not speak the Ollama protocol: /api/chat "
                f"answered 200 with {line[:120]!r} (expected one JSON object per line); is "
                "base_url / OLLAMA_HOST an Ollama server?",
                host=self.host,
                model=request.model,
            )
        error = part.get("error")
        if error:
            raise ollama.ResponseError(str(error))
        message = part.get("message")
        if isinstance(message, dict):
            content = message.get("content") or ""
            thinking = message.get("thinking") or ""
            if content or thinking:
                on_delta(content, thinking)
        if part.get("done"):
            return FinalObject(
                done_reason=part.get("done_reason"),
                prompt_eval_count=part.get("prompt_eval_count"),
                eval_count=part.get("eval_count"),
                total_duration=part.get("total_duration"),
            )
        return None

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
        if self._client is not None:
            client, self._client = self._client, None
            await http_client_of(client).aclose()
