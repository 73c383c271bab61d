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

Streams cross Ray in **channels**, batched across streams (a Ray item costs ~30 pykka hops; one
per token would cap the caller near 2,000 deltas/s, and per-stream batches of paced streams hold
~1 delta):

* :meth:`GenerationWorker.pump` — one long-running Ray *streaming generator*
  (``num_returns="streaming"``) per caller channel (a caller's ``RayTransport`` and this
  worker). The worker keeps, per caller, an outbox of entries; an item leaves ``window``
  seconds after its first entry, or at once when it holds ``max_deltas`` deltas or a stream's
  first delta (no window on time to first chunk). An item is a tuple of entries, one per stream
  with news, in order of arrival::

      (stream_id, contents, thinkings, end)   contents: tuple[str, ...]; thinkings: same
                                              length or None; end: None, or
      (FINAL, done_reason, prompt_eval_count, eval_count, total_duration)
      (ERROR, exception)                      a mellea_actors.errors instance (pickles with
                                              its fields)

  A stream's end travels with its last deltas. Cancelling the pump (``ray.cancel``) cancels
  every stream of that caller.
* :meth:`GenerationWorker.start` — a plain call: ``(stream_id, host, settings, request)``
  starts, several per call (the caller sends the starts of one loop iteration together).
* :meth:`GenerationWorker.cancel` — a plain call: cancels one stream's task, which closes its
  HTTP connection at once (Ollama sees the disconnect); a cancelled stream sends no end.
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


class _Outbox:
    """The entries waiting for one caller's :meth:`GenerationWorker.pump` (worker loop only):
    per stream, in first-arrival order, its deltas since the last item and its end, if any."""

    __slots__ = ("_loop", "_max", "_timer", "_window", "closed", "count", "entries", "wake")

    def __init__(self, window: float, max_deltas: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._window = window
        self._max = max_deltas
        self._timer: asyncio.TimerHandle | None = None
        self.entries: dict[str, list[Any]] = {}  # stream id -> [contents, thinking, end]
        self.count = 0  # deltas and ends waiting
        self.closed = False
        self.wake = asyncio.Event()

    def _entry(self, stream_id: str) -> list[Any]:
        entry = self.entries.get(stream_id)
        if entry is None:
            entry = self.entries[stream_id] = [[], None, None]
        return entry

    def _due(self, now: bool) -> None:
        self.count += 1
        if now or self.count >= self._max or self._window <= 0:
            self.wake.set()
        elif self._timer is None:
            self._timer = self._loop.call_later(self._window, self.wake.set)

    def add(self, stream_id: str, content: str, thinking: str, first: bool) -> None:
        entry = self._entry(stream_id)
        contents: list[str] = entry[0]
        if thinking and entry[1] is None:
            entry[1] = [""] * len(contents)
        contents.append(content)
        if entry[1] is not None:
            entry[1].append(thinking)
        self._due(first)  # a stream's first delta leaves at once: no window on time to first

    def end(self, stream_id: str, end: tuple[Any, ...]) -> None:
        self._entry(stream_id)[2] = end
        self._due(False)

    def close(self) -> None:
        self.closed = True
        self.wake.set()

    def take(self) -> tuple[tuple[Any, ...], ...]:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.wake.clear()
        item = tuple(
            (sid, tuple(c), None if t is None else tuple(t), end)
            for sid, (c, t, end) in self.entries.items()
        )
        self.entries.clear()
        self.count = 0
        return item


class _StreamSink:
    """The worker-side ``DeltaSink`` of one stream: its deltas go to its caller's outbox."""

    __slots__ = ("_box", "_first", "_id")

    def __init__(self, box: _Outbox, stream_id: str) -> None:
        self._box = box
        self._id = stream_id
        self._first = True

    def add(self, content: str, thinking: str) -> None:
        self._box.add(self._id, content, thinking, self._first)
        self._first = False

    def flush(self) -> None:
        """Batches are per caller and per window (the outbox's), not per network read."""


class GenerationWorker:
    """A Ray async actor streaming Ollama chats for callers in other processes (see the module
    docstring). One event loop (Ray's, for async actors); every method runs on it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._transports: dict[tuple[str, TransportSettings], OllamaTransport] = {}
        self._streams: dict[str, tuple[str, asyncio.Task[FinalObject]]] = {}
        self._boxes: dict[str, _Outbox] = {}
        self._gone: set[str] = set()  # callers whose pump ended: their late starts are refused
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
            "callers": len(self._boxes),
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

    def _box(self, caller_id: str, window: float, max_deltas: int) -> _Outbox:
        box = self._boxes.get(caller_id)
        if box is None:
            box = self._boxes[caller_id] = _Outbox(window, max_deltas)
        return box

    async def pump(
        self, caller_id: str, window: float, max_deltas: int
    ) -> AsyncIterator[tuple[tuple[Any, ...], ...]]:
        """The caller's channel: one item per window with every stream's entries (module
        docstring), until the caller cancels it or the worker closes."""
        box = self._box(caller_id, window, max_deltas)
        try:
            while not box.closed:
                await box.wake.wait()
                if box.entries:
                    yield box.take()
                else:
                    box.wake.clear()
        finally:  # also on CancelledError / GeneratorExit (ray.cancel): the caller left
            if self._boxes.get(caller_id) is box:
                del self._boxes[caller_id]
            if len(self._gone) > 10_000:
                self._gone.clear()
            self._gone.add(caller_id)
            for stream_id, (owner, task) in list(self._streams.items()):
                if owner == caller_id:
                    self._streams.pop(stream_id, None)
                    task.cancel()

    async def start(
        self,
        caller_id: str,
        starts: list[tuple[str, str, TransportSettings, GenerationRequest]],
        window: float,
        max_deltas: int,
    ) -> bool:
        """Start chats, each ``(stream_id, host, settings, request)``; their deltas and ends go
        out through the caller's pump. False if that caller's channel is closed already."""
        if caller_id in self._gone:
            return False
        box = self._box(caller_id, window, max_deltas)
        for stream_id, host, settings, request in starts:
            self._start(box, caller_id, stream_id, host, settings, request)
        return True

    def _start(
        self,
        box: _Outbox,
        caller_id: str,
        stream_id: str,
        host: str,
        settings: TransportSettings,
        request: GenerationRequest,
    ) -> None:
        task = asyncio.ensure_future(
            self._transport(host, settings).stream_chat(request, _StreamSink(box, stream_id))
        )
        self._streams[stream_id] = (caller_id, task)

        def ended(task: asyncio.Task[FinalObject]) -> None:
            if self._streams.get(stream_id, (None, None))[1] is task:
                del self._streams[stream_id]
            if task.cancelled():  # by cancel(stream_id): the caller stopped listening
                return
            error = task.exception()
            if error is None:
                final = task.result()
                box.end(
                    stream_id,
                    (
                        FINAL,
                        final.done_reason,
                        final.prompt_eval_count,
                        final.eval_count,
                        final.total_duration,
                    ),
                )
            else:
                box.end(stream_id, (ERROR, _portable(error, host, request.model)))

        task.add_done_callback(ended)

    async def cancel(self, stream_id: str) -> bool:
        """Stop one stream now (its HTTP connection closes); False if it already ended."""
        _, task = self._streams.pop(stream_id, (None, None))
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
        """Close every stream, channel and connection pool (before the actor is killed)."""
        for _, task in list(self._streams.values()):
            task.cancel()
        self._streams.clear()
        for box in list(self._boxes.values()):
            box.close()
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
