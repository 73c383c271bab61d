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
  worker). The worker keeps, per caller, an outbox; an item leaves ``window`` seconds after
  its first entry, or at once when it holds ``max_deltas`` deltas or a stream's first delta
  (no window on time to first text). **Items** are columns of plain values (one pickle of a
  few tuples, no object per delta), one entry per stream with news, in order of first
  arrival::

      (stream_ids, texts, deltas, thinkings, ends)
        stream_ids: tuple[int, ...]   the caller's ids (given in ``start``)
        texts:      tuple[str, ...]   per entry, its stream's deltas since the last item,
                                      joined (a window holds several deltas of a fast stream:
                                      the caller makes one ``add`` of them)
        deltas:     int               the raw deltas the item carries (statistics)
        thinkings:  None, or a tuple of str beside ``texts`` (only if one has thinking)
        ends:       None, or ((stream_id, end), ...), end being
                    (FINAL, done_reason, prompt_eval_count, eval_count, total_duration) or
                    (ERROR, exception)   a mellea_actors.errors instance (pickles with its
                                         fields)

  A stream's end travels with its last text (the caller delivers an item's texts before its
  ends). Joining deltas is what the reader could see anyway
  (``astream()`` returns all text since the last call, and chunkers and validators work on
  the accumulated text, never on delta boundaries). Cancelling the pump (``ray.cancel``)
  cancels every stream of that caller.
* :meth:`GenerationWorker.poll` / :meth:`GenerationWorker.leave` — the same channel for a
  caller connected through Ray Client (``ray://``), which cannot hold streaming calls: one
  plain call per item (the next item once there is one), and ``leave`` when it closes.
* :meth:`GenerationWorker.start` — a plain call: ``(stream_id, host, settings, request)``
  starts, several per call (the caller sends the starts of one loop iteration together); a
  stream id is an int, unique within its caller's channel.
* :meth:`GenerationWorker.cancel` — a plain call ``(caller_id, stream_id)``: cancels one
  stream's task, which closes its HTTP connection at once (Ollama sees the disconnect); a
  cancelled stream sends no end.
* :meth:`GenerationWorker.list_models`, :meth:`GenerationWorker.version` — ``(OK, value)`` or
  ``(ERROR, exception)``.
* **Control link.** A Ray actor call takes 1.5 ms here when the machine is idle, 3 to 8 ms when
  it is busy (several thread hand-offs on each side), which a cancel would add to "a 'fail'
  verdict → Ollama sees the disconnect". So each worker also listens on a TCP port of its
  node (:meth:`GenerationWorker.where` gives ``(ip, port, token)``, the token a random secret
  that only travels through Ray); a caller's channel connects, sends ``TOKEN CALLER_ID``, then
  one stream id per line to cancel: one hop, handled at once on the worker's loop. The caller
  sends the Ray ``cancel`` call too (the reliable path: ordered after the stream's start, and
  there when the link could not connect, e.g. a Ray Client caller outside the cluster); the
  second cancel of a stream does nothing.

A worker is stateless beyond its connection pools: Ray's ``max_restarts`` reruns the
constructor after a crash and the caller just sends the next generation again.

This module imports nothing of Ray at import time (the class is made a Ray actor by
:mod:`~mellea_actors.runtime.ray_transport`), so it is importable without the extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from mellea_actors.errors import BackendError
from mellea_actors.transport.chat_request import GenerationRequest
from mellea_actors.transport.ollama_http import FinalObject, OllamaTransport

__all__ = ["BATCH", "ERROR", "FINAL", "OK", "GenerationWorker", "Item", "TransportSettings"]

BATCH = 0
FINAL = 1
ERROR = 2
OK = 3

TransportSettings = tuple[float, int | None, float | None]
"""``(connect_timeout, max_in_flight, queue_timeout)`` of the caller's session."""

Item = tuple[
    tuple[int, ...],
    tuple[str, ...],
    int,
    tuple[str, ...] | None,
    tuple[tuple[int, tuple[Any, ...]], ...] | None,
]
"""One channel item, ``(stream_ids, texts, deltas, thinkings, ends)`` (module docstring)."""


class _Outbox:
    """The entries waiting for one caller's :meth:`GenerationWorker.pump` (worker loop only):
    per stream, in first-arrival order, its text since the last item (one entry however many
    deltas it got), its thinking and its end, if any."""

    __slots__ = (
        "_loop",
        "_max",
        "_timer",
        "_window",
        "closed",
        "count",
        "deltas",
        "ends",
        "entries",
        "thinks",
        "wake",
    )

    def __init__(self, window: float, max_deltas: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._window = window
        self._max = max_deltas
        self._timer: asyncio.TimerHandle | None = None
        self.entries: dict[int, list[str]] = {}  # stream id -> its contents since the last item
        self.thinks: dict[int, list[str]] = {}  # stream id -> its thinking (rare)
        self.ends: dict[int, tuple[Any, ...]] = {}  # stream id -> its end
        self.count = 0  # deltas and ends waiting (the ``max_deltas`` trigger)
        self.deltas = 0  # deltas waiting (the item's count)
        self.closed = False
        self.wake = asyncio.Event()

    def _due(self, now: bool) -> None:
        self.count += 1
        if now or self.count >= self._max or self._window <= 0:
            self.wake.set()
        elif self._timer is None:
            self._timer = self._loop.call_later(self._window, self.wake.set)

    def add(self, stream_id: int, content: str, thinking: str, first: bool) -> None:
        parts = self.entries.get(stream_id)
        if parts is None:
            self.entries[stream_id] = [content]
        else:
            parts.append(content)
        if thinking:
            self.thinks.setdefault(stream_id, []).append(thinking)
        self.deltas += 1
        self._due(first)  # a stream's first delta leaves at once: no window on time to first

    def end(self, stream_id: int, end: tuple[Any, ...]) -> None:
        if stream_id not in self.entries:
            self.entries[stream_id] = []
        self.ends[stream_id] = end
        self._due(False)

    def close(self) -> None:
        self.closed = True
        self.wake.set()

    def take(self) -> Item:
        """The item (module docstring, "Items"): one entry per stream, its deltas joined."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.wake.clear()
        entries = self.entries
        ids = tuple(entries)
        texts = tuple(p[0] if len(p) == 1 else "".join(p) for p in entries.values())
        thinks = ends = None
        if self.thinks:
            got = self.thinks
            thinks = tuple("".join(got.get(sid, ())) for sid in ids)
            self.thinks = {}
        if self.ends:
            ends = tuple(self.ends.items())
            self.ends = {}
        item = (ids, texts, self.deltas, thinks, ends)
        self.entries = {}
        self.count = 0
        self.deltas = 0
        return item


class _StreamSink:
    """The worker-side ``DeltaSink`` of one stream: its deltas go to its caller's outbox."""

    __slots__ = ("_box", "_first", "_id")

    def __init__(self, box: _Outbox, stream_id: int) -> None:
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
        self._streams: dict[tuple[str, int], asyncio.Task[FinalObject]] = {}
        """(caller id, stream id) -> the stream's task."""
        self._boxes: dict[str, _Outbox] = {}
        self._gone: set[str] = set()  # callers whose pump ended: their late starts are refused
        self._started_at = time.time()
        self._links: asyncio.Server | None = None
        self._control: tuple[str, int, str] | None = None

    async def where(self) -> dict[str, Any]:
        """Who and where this worker is: Ray actor id, node id, pid, start time, and its
        control port ``(ip, port, token)`` (None if it could not listen)."""
        import ray  # inside a Ray worker process: always importable

        context = ray.get_runtime_context()
        if self._links is None:
            with contextlib.suppress(OSError):
                ip = ray.util.get_node_ip_address()
                self._links = await asyncio.start_server(self._on_link, host=ip, port=0)
                port = self._links.sockets[0].getsockname()[1]
                self._control = (ip, port, secrets.token_hex(16))
        return {
            "name": self.name,
            "actor_id": context.get_actor_id(),
            "node_id": context.get_node_id(),
            "pid": os.getpid(),
            "started_at": self._started_at,
            "streams": len(self._streams),
            "callers": len(self._boxes),
            "control": self._control,
        }

    async def _on_link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A caller's control link: ``TOKEN CALLER_ID`` then one stream id per line, each
        cancelled at once (module docstring, "Control link")."""
        try:
            token, _, caller_id = (await reader.readline()).decode().strip().partition(" ")
            if self._control is None or not hmac.compare_digest(token, self._control[2]):
                return
            while line := await reader.readline():
                with contextlib.suppress(ValueError):
                    self._cancel(caller_id, int(line))
        except (OSError, UnicodeDecodeError):
            pass
        finally:
            writer.close()

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

    async def pump(self, caller_id: str, window: float, max_deltas: int) -> AsyncIterator[Item]:
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
            self._leave(caller_id)

    async def poll(self, caller_id: str, window: float, max_deltas: int) -> Item | None:
        """The channel of a caller that cannot hold a streaming call (a Ray Client driver,
        ``ray://``): the next item, once there is one (the caller asks again after each);
        None once the channel or the worker closed."""
        if caller_id in self._gone:
            return None
        box = self._box(caller_id, window, max_deltas)
        while not box.closed:
            await box.wake.wait()
            if box.entries:
                return box.take()
            box.wake.clear()
        return None

    async def leave(self, caller_id: str) -> None:
        """A polling caller closed its channel: cancel its streams (as the end of a pump)."""
        self._leave(caller_id)

    def _leave(self, caller_id: str) -> None:
        box = self._boxes.pop(caller_id, None)
        if box is not None:
            box.close()
        if len(self._gone) > 10_000:
            self._gone.clear()
        self._gone.add(caller_id)
        for key, task in list(self._streams.items()):
            if key[0] == caller_id:
                self._streams.pop(key, None)
                task.cancel()

    async def start(
        self,
        caller_id: str,
        starts: list[tuple[int, str, TransportSettings, GenerationRequest]],
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
        stream_id: int,
        host: str,
        settings: TransportSettings,
        request: GenerationRequest,
    ) -> None:
        task = asyncio.ensure_future(
            self._transport(host, settings).stream_chat(request, _StreamSink(box, stream_id))
        )
        key = (caller_id, stream_id)
        self._streams[key] = task

        def ended(task: asyncio.Task[FinalObject]) -> None:
            if self._streams.get(key) is task:
                del self._streams[key]
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

    async def cancel(self, caller_id: str, stream_id: int) -> bool:
        """Stop one stream now (its HTTP connection closes); False if it already ended."""
        return self._cancel(caller_id, stream_id)

    def _cancel(self, caller_id: str, stream_id: int) -> bool:
        task = self._streams.pop((caller_id, stream_id), None)
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
        if self._links is not None:
            self._links.close()
        for task in list(self._streams.values()):
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
