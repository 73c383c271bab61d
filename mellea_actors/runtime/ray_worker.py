"""The Ray engine's *generation worker*: a Ray async actor that streams chats from Ollama.

Placement (SPEC §11, ``start_session(engine="ray")``): only the network part of a generation
runs in Ray — the :class:`~mellea_actors.transport.ollama_http.OllamaTransport` of each host
(its connection pool, admission and stream timeout) lives in a :class:`GenerationWorker`, a Ray
async actor; there are N of them per cluster (see :mod:`~mellea_actors.runtime.ray_transport`).
Everything else stays in the caller's process, on the session's actor loop: the generation
supervisor (restarts, failover, breakers, the host pool), the thunk actors and their single
reader, stream actors, validators and chunkers. The caller reaches a worker through
:class:`~mellea_actors.runtime.ray_transport.RayTransport`, which has the same
``ChatTransport`` shape as ``OllamaTransport``, so supervision is the same code in both engines.
(Departure from the wording "generation supervisors are Ray actors": a supervisor in Ray would
have to call back into the caller's process for every thunk, validator and reader message;
keeping it with them costs one Ray stream per generation and nothing per message.)

One worker method per ``ChatTransport`` method:

* :meth:`GenerationWorker.stream` — a Ray *streaming generator* (``num_returns="streaming"``).
  It runs ``stream_chat`` in a task whose sink collects the deltas, and yields them in
  **batches**: a batch leaves ``window`` seconds after its first delta or as soon as it holds
  ``max_deltas`` deltas, whichever comes first (a Ray item costs ~30 pykka hops; one per
  token would cap a stream near 2,000 deltas/s). Items, in order::

      (BATCH, contents, thinkings)     contents: tuple[str, ...]; thinkings: same length or None
      (FINAL, contents, thinkings, done_reason, prompt_eval_count, eval_count, total_duration)
      (ERROR, contents, thinkings, exception)   a mellea_actors.errors instance (pickles with
                                       its fields)

  The last item is FINAL or ERROR and carries the deltas not sent yet, so that the last
  deltas and the end reach the thunk together, as in the in-process engine (where the last
  network read holds both).

  Cancelling the call (``ray.cancel`` of the generator, which raises ``CancelledError`` in this
  async generator) cancels the stream task, which closes the HTTP connection at once: Ollama
  sees the disconnect. :meth:`GenerationWorker.cancel` does the same by stream id (a second
  path, used together with ``ray.cancel`` so the socket closes even if Ray delivers the
  cancel late).
* :meth:`GenerationWorker.list_models`, :meth:`GenerationWorker.version` — ``(OK, value)`` or
  ``(ERROR, exception)``.

A worker is stateless beyond its connection pools: Ray's ``max_restarts`` reruns the
constructor after a crash and the caller just sends the next generation again.

This module imports nothing of Ray at import time (the class is made a Ray actor by
:mod:`~mellea_actors.runtime.ray_transport`), so it is importable without the extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from mellea_actors.errors import BackendError
from mellea_actors.transport.chat_request import GenerationRequest
from mellea_actors.transport.ollama_http import FinalObject, OllamaTransport

__all__ = ["BATCH", "ERROR", "FINAL", "OK", "GenerationWorker", "TransportSettings"]

BATCH = 0
FINAL = 1
ERROR = 2
OK = 3

TransportSettings = tuple[float, int | None, float | None]
"""``(connect_timeout, max_in_flight, queue_timeout)`` of the caller's session."""


class _BatchSink:
    """The worker-side ``DeltaSink``: collects deltas; wakes the generator when a batch is due
    (worker loop only)."""

    __slots__ = (
        "_first",
        "_loop",
        "_max",
        "_timer",
        "_window",
        "contents",
        "thinking",
        "wake",
    )

    def __init__(self, window: float, max_deltas: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._window = window
        self._max = max_deltas
        self._timer: asyncio.TimerHandle | None = None
        self._first = True  # the first read leaves at once: no window on time to first chunk
        self.contents: list[str] = []
        self.thinking: list[str] | None = None
        self.wake = asyncio.Event()

    def add(self, content: str, thinking: str) -> None:
        if thinking and self.thinking is None:
            self.thinking = [""] * len(self.contents)
        self.contents.append(content)
        if self.thinking is not None:
            self.thinking.append(thinking)
        if len(self.contents) == 1 and self._window > 0:
            self._timer = self._loop.call_later(self._window, self.wake.set)

    def flush(self) -> None:
        if self._first or len(self.contents) >= self._max or self._window <= 0:
            self._first = False
            self.wake.set()

    def take(self) -> tuple[int, tuple[str, ...], tuple[str, ...] | None]:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.wake.clear()
        contents, thinking = tuple(self.contents), self.thinking
        self.contents.clear()
        self.thinking = None
        return (BATCH, contents, None if thinking is None else tuple(thinking))


class GenerationWorker:
    """A Ray async actor streaming Ollama chats for callers in other processes (see the module
    docstring). One event loop (Ray's, for async actors); every method runs on it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._transports: dict[tuple[str, TransportSettings], OllamaTransport] = {}
        self._streams: dict[str, asyncio.Task[FinalObject]] = {}
        self._started_at = time.time()

    def where(self) -> dict[str, Any]:
        """Who and where this worker is: Ray actor id, node id, pid, start time."""
        import ray  # inside a Ray worker process: always importable

        context = ray.get_runtime_context()
        return {
            "name": self.name,
            "actor_id": context.get_actor_id(),
            "node_id": context.get_node_id(),
            "pid": os.getpid(),
            "started_at": self._started_at,
            "streams": len(self._streams),
        }

    def _transport(self, host: str, settings: TransportSettings) -> OllamaTransport:
        key = (host, settings)
        transport = self._transports.get(key)
        if transport is None:
            connect_timeout, max_in_flight, queue_timeout = settings
            transport = OllamaTransport(
                host,
                connect_timeout=connect_timeout,
                max_in_flight=max_in_flight,
                queue_timeout=queue_timeout,
            )
            self._transports[key] = transport
        return transport

    async def stream(
        self,
        stream_id: str,
        host: str,
        settings: TransportSettings,
        request: GenerationRequest,
        window: float,
        max_deltas: int,
    ) -> AsyncIterator[tuple[Any, ...]]:
        """Stream one chat as batches of deltas, then a FINAL or ERROR item (module docstring)."""
        sink = _BatchSink(window, max_deltas)
        transport = self._transport(host, settings)
        task = asyncio.ensure_future(transport.stream_chat(request, sink))
        task.add_done_callback(lambda _: sink.wake.set())
        self._streams[stream_id] = task
        try:
            while True:
                await sink.wake.wait()
                if task.done():
                    break  # what is left goes with the FINAL / ERROR item
                if sink.contents:
                    yield sink.take()
                else:
                    sink.wake.clear()
            _, contents, thinking = sink.take()
            if task.cancelled():  # by cancel(stream_id): the caller stopped listening
                return
            error = task.exception()
            if error is None:
                final = task.result()
                yield (
                    FINAL,
                    contents,
                    thinking,
                    final.done_reason,
                    final.prompt_eval_count,
                    final.eval_count,
                    final.total_duration,
                )
            else:
                yield (ERROR, contents, thinking, _portable(error, host, request.model))
        finally:  # also on CancelledError / GeneratorExit (ray.cancel): close the socket now
            self._streams.pop(stream_id, None)
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    def cancel(self, stream_id: str) -> bool:
        """Stop one stream now (its HTTP connection closes); False if it already ended."""
        task = self._streams.get(stream_id)
        if task is None or task.done():
            return False
        task.cancel()
        return True

    async def list_models(
        self, host: str, settings: TransportSettings, timeout: float
    ) -> tuple[int, Any]:
        try:
            return (OK, await self._transport(host, settings).list_models(timeout=timeout))
        except Exception as exc:
            return (ERROR, _portable(exc, host, None))

    async def version(
        self, host: str, settings: TransportSettings, timeout: float
    ) -> tuple[int, Any]:
        try:
            return (OK, await self._transport(host, settings).version(timeout=timeout))
        except Exception as exc:
            return (ERROR, _portable(exc, host, None))

    async def close(self) -> None:
        """Close every connection pool (before the actor is killed)."""
        for task in list(self._streams.values()):
            task.cancel()
        for transport in list(self._transports.values()):
            with contextlib.suppress(Exception):
                await transport.aclose()
        self._transports.clear()


def _portable(error: BaseException, host: str, model: str | None) -> BackendError:
    """The error as it will cross to the caller: a ``BackendError`` (pickles with its fields;
    the ``__cause__`` does not cross, so its repr is appended to the message)."""
    if not isinstance(error, BackendError):
        wrapped = BackendError(
            f"the Ray generation worker failed unexpectedly: {error!r}", host=host, model=model
        )
        return wrapped
    cause = error.__cause__
    if cause is not None and not isinstance(cause, BackendError):
        error.args = (f"{error} (cause in the Ray worker: {cause!r})", *error.args[1:])
    return error
