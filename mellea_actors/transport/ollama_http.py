"""The Ollama transport: streamed ``/api/chat`` through ``ollama.AsyncClient``, errors mapped.

One :class:`OllamaTransport` per Ollama host. It must be used from a single event loop (the
runtime's actor loop): the underlying ``httpx.AsyncClient`` pool is bound to it.

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
no delta for ``stream_timeout`` seconds             :class:`StreamTimeoutError`
=================================================  =======================================
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import httpx
import ollama

from mellea_actors._compat import http_client_of, parse_host
from mellea_actors.errors import (
    BackendError,
    BackendResponseError,
    BackendUnavailableError,
    ModelNotFoundError,
    StreamDroppedError,
    StreamTimeoutError,
)
from mellea_actors.transport.chat_request import GenerationRequest

__all__ = ["DEFAULT_HOST", "DeltaCallback", "OllamaTransport", "map_error", "normalize_host"]

DEFAULT_HOST = "http://127.0.0.1:11434"

T = TypeVar("T")


def normalize_host(host: str | None) -> str:
    """``host:port``, ``http://host``, ``0.0.0.0`` … → a base URL like the ollama client's."""
    if not host:
        return DEFAULT_HOST
    return parse_host(host)


DeltaCallback = Callable[[str, str], None]
"""``on_delta(content, thinking)``: called synchronously, on the loop, for each delta with text.

A *delta* is one streamed object's ``message.content`` (and ``message.thinking``): the unit
Ollama sends. (A *chunk* is the unit a chunking strategy cuts the text into; see
:mod:`mellea_actors.runtime.stream_actor`.)"""


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
            f"cannot reach Ollama at {host}: {exc or type(exc).__name__}"
            " (is `ollama serve` running there? set OLLAMA_HOST or base_url)",
            host=host,
            model=model,
        )
    if isinstance(
        exc, (httpx.RemoteProtocolError, httpx.ReadError, ConnectionResetError, httpx.WriteError)
    ):
        return StreamDroppedError(
            f"the connection to Ollama at {host} broke mid-stream: {exc or type(exc).__name__}",
            host=host,
            model=model,
        )
    if isinstance(exc, httpx.TimeoutException):
        return StreamTimeoutError(f"Ollama at {host} timed out: {exc}", host=host, model=model)
    return BackendError(f"request to Ollama at {host} failed: {exc!r}", host=host, model=model)


class OllamaTransport:
    """Streams chat generations from one Ollama host (use from one event loop only).

    ``max_in_flight`` caps the requests open at once (the rest wait for a slot, FIFO): a few
    hundred connections saturate a local Ollama anyway, and an uncapped httpx pool spends most of
    its CPU on bookkeeping with a thousand of them.
    """

    def __init__(
        self, host: str, *, connect_timeout: float = 10.0, max_in_flight: int = 256
    ) -> None:
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
    ) -> ollama.ChatResponse:
        """Stream one chat: ``on_delta`` gets every delta with text; returns the final object.

        The final object is the one with ``done=True`` (``done_reason``, ``eval_count``, …).
        ``on_delta`` runs synchronously on the loop, between two reads of the stream: it must not
        block. Raises a :class:`BackendError` subclass (see the module docstring). Cancelling the
        calling task closes the connection at once.
        """
        client = self._ensure_client()
        assert self._slots is not None
        loop = asyncio.get_running_loop()
        timeout = request.stream_timeout
        final: ollama.ChatResponse | None = None
        fmt = dict(request.format) if isinstance(request.format, Mapping) else request.format
        async with self._slots:
            watchdog = None if timeout is None else _Watchdog(loop, timeout)
            try:
                stream = await client.chat(
                    model=request.model,
                    messages=[m.model_dump(exclude_none=True) for m in request.messages],
                    options=dict(request.options) or None,
                    format=fmt,
                    think=request.think,
                    keep_alive=request.keep_alive,
                    stream=True,
                )
                try:
                    async for part in stream:
                        if watchdog is not None:
                            watchdog.feed()
                        message = part.message
                        if message.content or message.thinking:
                            on_delta(message.content or "", message.thinking or "")
                        if part.done:
                            final = part
                finally:
                    await stream.aclose()  # type: ignore[attr-defined]
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
        if final is None:
            raise StreamDroppedError(
                f"the stream from Ollama at {self.host} ended without its final object (done=true)",
                host=self.host,
                model=request.model,
            )
        return final

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
