"""The Ray engine's *Ray generation supervisor*: a Ray async actor that supervises generations.

Placement (SPEC §11, ``start_session(engine="ray")``): the generation supervisors run in Ray.
Each :class:`RayGenerationSupervisor` (a Ray async actor; N per cluster, see
:mod:`~mellea_actors.runtime.ray_transport`) runs, for every caller session that uses it, a
real :class:`~mellea_actors.runtime.generation_supervisor.GenerationSupervisor` — the same class
as the local engine's — with that session's own
:class:`~mellea_actors.transport.ollama_http.OllamaTransport` per host and, for a session of
several hosts, its own :class:`~mellea_actors.runtime.host_pool.HostPool` (capacities, weights,
per-host breakers and probes, tags watchers). Every restart before text, 503 busy retry,
failover and breaker decision of a stream on this actor is taken here. The caller's process
keeps the thunk actors and their single reader, stream actors, validators and chunkers; its own
generation supervisor only relays (its one retry is for the death of a Ray actor before any
text, :mod:`~mellea_actors.runtime.ray_transport`).

Inside the actor: Ray's event loop serves the Ray calls; the sessions' supervisors, their
transports, the outboxes and the control link run on one
:class:`~mellea_actors.runtime.loop.ActorLoop` (a thread of its own, as in a caller's session).
A Ray call hops to it (:mod:`~mellea_actors.runtime.crossing`) once per call or channel item,
never per delta. Per stream the supervisor's "thunk" is a :class:`_StreamOut`, a tiny loop actor
that turns its messages (``DeltasArrived``, ``GenerationFinished`` / ``Failed`` / ``Cancelled``)
into outbox entries; the supervisor's log is a :class:`_ForwardingLog` whose records travel to
the caller in the same items.

Streams cross Ray in **channels**, one per caller session and Ray actor, batched across streams
(a Ray item costs ~30 pykka hops; one per token would cap the caller near 2,000 deltas/s, and
per-stream batches of paced streams hold ~1 delta). A channel *is* the session on this actor:
its id (``caller_id``) keys its supervisor, and its config (:class:`SessionConfig`: transport
settings, restart and breaker policies, hosts, tags period) comes with its first call.

* :meth:`RayGenerationSupervisor.pump` — one long-running Ray *streaming generator*
  (``num_returns="streaming"``) per channel. Per channel an outbox; an item leaves ``window``
  seconds after its first entry, or at once when it holds ``max_deltas`` deltas or a stream's
  first delta (no window on time to first text). **Items** are columns of plain values (one
  pickle of a few tuples, no object per delta), one entry per stream with news, in order of
  first arrival::

      (stream_ids, texts, deltas, thinkings, ends, news)
        stream_ids: tuple[int, ...]   the caller's ids (given in ``start``)
        texts:      tuple[str, ...]   per entry, its stream's deltas since the last item,
                                      joined (a window holds several deltas of a fast stream:
                                      the caller makes one ``add`` of them)
        deltas:     int               the raw deltas the item carries (statistics)
        thinkings:  None, or a tuple of str beside ``texts`` (only if one has thinking)
        ends:       None, or ((stream_id, end), ...), end being
                    (FINAL, done_reason, prompt_tokens, completion_tokens, total_duration,
                     attempts) or
                    (ERROR, exception)   a mellea_actors.errors instance (pickles with its
                                         fields): the supervisor here gave up on it
        news:       None, or (records, hosts): the supervision records since the last item
                    (dicts as SupervisionLog.emit makes them, the caller re-emits them with
                    ray_actor_id and node_id) and, when it changed, the session's hosts here
                    (``(seq, views)``, views a tuple of HostView: url, state, in_flight,
                    capacity, weight, models; a higher seq is newer)

  A stream's end travels with its last text (the caller delivers an item's texts before its
  ends). Joining deltas is what the reader could see anyway (``astream()`` returns all text
  since the last call, and chunkers and validators work on the accumulated text, never on
  delta boundaries). Cancelling the pump (``ray.cancel``) ends the session here: its
  supervisor stops, which cancels every stream of it (each closes its HTTP connection).
* :meth:`RayGenerationSupervisor.poll` / :meth:`RayGenerationSupervisor.leave` — the same
  channel for a caller connected through Ray Client (``ray://``), which cannot hold streaming
  calls: one plain call per item, and ``leave`` when it closes.
* :meth:`RayGenerationSupervisor.start` — a plain call: ``(stream_id, request)`` starts,
  several per call (the caller sends the starts of one loop iteration together); a stream id
  is an int, unique within its channel. Each becomes a ``StartGeneration`` to the session's
  supervisor here.
* :meth:`RayGenerationSupervisor.cancel` — ``(caller_id, stream_id)``: a ``CancelGeneration``
  to the supervisor, which cancels the stream's task and closes its HTTP connection at once
  (Ollama sees the disconnect); a stream cancelled by its caller sends no end.
* :meth:`RayGenerationSupervisor.add_host` / :meth:`RayGenerationSupervisor.remove_host` —
  ``session.hosts.add`` / ``remove`` under ``engine="ray"``: the caller sends them to every
  Ray supervisor that has the session (an ``AddHost`` / ``RemoveHost`` to its supervisor).
* :meth:`RayGenerationSupervisor.list_models`, :meth:`RayGenerationSupervisor.version` —
  ``(OK, value)`` or ``(ERROR, exception)``.
* **Control link.** A Ray actor call takes 1.5 ms here when the machine is idle, 3 to 8 ms when
  it is busy (several thread hand-offs on each side), which a cancel would add to "a 'fail'
  verdict → Ollama sees the disconnect". So each Ray supervisor also listens on a TCP port of
  its node (:meth:`RayGenerationSupervisor.where` gives ``(ip, port, token)``, the token a
  random secret that only travels through Ray); a caller's channel connects, sends
  ``TOKEN CALLER_ID``, then one stream id per line to cancel: one hop, handled at once on the
  actor loop. The caller sends the Ray ``cancel`` call too (the reliable path: ordered after
  the stream's start, and there when the link could not connect, e.g. a Ray Client caller
  outside the cluster); the second cancel of a stream does nothing.

State is per session and lost with the actor: Ray's ``max_restarts`` reruns the constructor
after a crash; every channel to the dead actor fails at the caller (each of its streams sees
the death there), and the caller's next generation opens a new channel, whose session starts
afresh with the hosts of the moment.

This module imports nothing of Ray at import time (the class is made a Ray actor by
:mod:`~mellea_actors.runtime.ray_transport`), so it is importable without the extra.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hmac
import os
import secrets
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from mellea_actors.errors import (
    BackendError,
    InvalidInputError,
    RuntimeClosedError,
    StreamDroppedError,
)
from mellea_actors.runtime.breaker import BreakerPolicy
from mellea_actors.runtime.crossing import await_concurrent
from mellea_actors.runtime.generation_supervisor import GenerationSupervisor
from mellea_actors.runtime.host_pool import TAGS_EVERY, HostRegistry, HostSpec, HostView
from mellea_actors.runtime.log import SupervisionLog, make_record
from mellea_actors.runtime.loop import ActorLoop, LoopActor, ask_async, tell_here
from mellea_actors.runtime.messages import (
    AddHost,
    CancelGeneration,
    DeltasArrived,
    GenerationCancelled,
    GenerationFailed,
    GenerationFinished,
    RemoveHost,
    StartGeneration,
)
from mellea_actors.runtime.restart_policy import RestartPolicy
from mellea_actors.transport.chat_request import GenerationRequest
from mellea_actors.transport.ollama_http import OllamaTransport

__all__ = [
    "BATCH",
    "ERROR",
    "FINAL",
    "OK",
    "Item",
    "RayGenerationSupervisor",
    "SessionConfig",
    "TransportSettings",
]

BATCH = 0
FINAL = 1
ERROR = 2
OK = 3

T = TypeVar("T")

TransportSettings = tuple[float, int | None, float | None]
"""``(connect_timeout, max_in_flight, queue_timeout)`` of the caller's session."""

HostsNews = tuple[int, tuple[HostView, ...]]
"""``(seq, views)``: the session's hosts on a Ray supervisor, numbered (a higher ``seq`` is
newer: an item and a host change's answer may cross)."""

News = tuple[tuple[dict[str, Any], ...], HostsNews | None]
"""An item's ``(records, hosts)`` (module docstring, "Items")."""

Item = tuple[
    tuple[int, ...],
    tuple[str, ...],
    int,
    tuple[str, ...] | None,
    tuple[tuple[int, tuple[Any, ...]], ...] | None,
    News | None,
]
"""One channel item, ``(stream_ids, texts, deltas, thinkings, ends, news)`` (module docstring)."""


@dataclass(frozen=True)
class SessionConfig:
    """What a Ray supervisor needs to supervise one caller session (sent with a channel's
    ``pump`` / ``poll`` and ``start`` calls; used when the channel's session starts here)."""

    session: str
    """The caller's system id (names the supervisor here)."""
    settings: TransportSettings
    policy: RestartPolicy | None = None
    breaker_policy: BreakerPolicy | None = None
    hosts: tuple[HostSpec, ...] | None = None
    """A pool's hosts when the channel opened; None: a single-host session."""
    tags_every: float = TAGS_EVERY


class _Outbox:
    """The entries waiting for one channel's :meth:`RayGenerationSupervisor.pump` (actor loop
    only): per stream, in first-arrival order, its text since the last item (one entry however
    many deltas it got), its thinking and its end, if any; and the session's news (records,
    a changed hosts view)."""

    __slots__ = (
        "_loop",
        "_max",
        "_sent_view",
        "_seq",
        "_timer",
        "_window",
        "changed",
        "closed",
        "count",
        "deltas",
        "ends",
        "entries",
        "hosts_view",
        "records",
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
        self.records: list[dict[str, Any]] = []  # supervision records since the last item
        self.count = 0  # deltas, ends and records waiting (the ``max_deltas`` trigger)
        self.deltas = 0  # deltas waiting (the item's count)
        self.changed = False  # the hosts view may have changed since the last item
        self.hosts_view: Any = None  # () -> tuple[HostView, ...], set by the session
        self._sent_view: tuple[HostView, ...] | None = None
        self._seq = 0
        self.closed = False
        self.wake = asyncio.Event()

    def _due(self, now: bool) -> None:
        self.count += 1
        if now or self.count >= self._max or self._window <= 0:
            self.wake.set()
        elif self._timer is None:
            self._timer = self._loop.call_later(self._window, self.wake.set)

    def add(self, stream_id: int, content: str, thinking: str, first: bool) -> None:
        self.add_many(stream_id, (content,), thinking, first)

    def add_many(self, stream_id: int, contents: Sequence[str], thinking: str, first: bool) -> None:
        """The deltas of one network read (one ``DeltasArrived``)."""
        parts = self.entries.get(stream_id)
        if parts is None:
            self.entries[stream_id] = list(contents)
        else:
            parts.extend(contents)
        if thinking:
            self.thinks.setdefault(stream_id, []).append(thinking)
        self.deltas += len(contents) or 1
        self._due(first)  # a stream's first delta leaves at once: no window on time to first

    def end(self, stream_id: int, end: tuple[Any, ...]) -> None:
        if stream_id not in self.entries:
            self.entries[stream_id] = []
        self.ends[stream_id] = end
        self.changed = True
        self._due(False)

    def record(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self.changed = True
        self._due(False)

    def has_news(self) -> bool:
        return bool(self.entries or self.records)

    def close(self) -> None:
        self.closed = True
        self.wake.set()

    def hosts_now(self) -> HostsNews:
        """The hosts view now, numbered (also for a host change's answer)."""
        self._seq += 1
        view = () if self.hosts_view is None else self.hosts_view()
        self._sent_view = view
        return self._seq, view

    def _news(self) -> News | None:
        hosts = None
        if self.changed and self.hosts_view is not None:
            view = self.hosts_view()
            if view != self._sent_view:
                hosts = self.hosts_now()
        self.changed = False
        if not self.records and hosts is None:
            return None
        records, self.records = tuple(self.records), []
        return records, hosts

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
        news = self._news() if self.records or self.changed else None
        item = (ids, texts, self.deltas, thinks, ends, news)
        self.entries = {}
        self.count = 0
        self.deltas = 0
        return item


class _ForwardingLog(SupervisionLog):
    """The supervision log of a session's supervisor here: each record goes to the caller,
    in the channel's next item (the caller's session log re-emits it with the Ray ids)."""

    def __init__(self, box: _Outbox) -> None:
        super().__init__(capacity=1)
        self._box = box
        self.caller_cancelled: set[str] = set()
        """Request ids the caller cancelled (actor loop): their ``generation_cancelled`` is the
        caller's own record (it may have cancelled before the start got here), not sent."""

    def emit(self, event: str, **fields: Any) -> None:
        """As :meth:`SupervisionLog.emit` (the same keywords), into the channel."""
        record = make_record(event, **fields)
        if event == "generation_cancelled" and record["thunk"] in self.caller_cancelled:
            self.caller_cancelled.discard(record["thunk"])
            return
        if not self._box.closed:
            self._box.record(record)


class _StreamOut(LoopActor):
    """The "thunk" of one stream for the session's supervisor here (actor loop): its deltas
    and its end become entries of the channel's outbox."""

    kind = "ray_stream_out"

    def __init__(self, actor_loop: ActorLoop, session: _Session, stream_id: int) -> None:
        super().__init__(actor_loop)
        self._session = session
        self._id = stream_id
        self._first = True

    def take_deltas(self, deltas: Sequence[str], thinking: str, at: float) -> None:
        """The deltas of one network read: ``DeltasArrived`` without the message (the
        generator's fast path, as :meth:`ThunkActor.take_deltas`)."""
        self._session.box.add_many(self._id, deltas, thinking, self._first)
        self._first = False

    def on_receive(self, message: Any) -> Any:
        kind = type(message)
        session = self._session
        if kind is DeltasArrived:
            self.take_deltas(message.deltas, message.thinking, message.at)
            return None
        end: tuple[Any, ...]
        if kind is GenerationFinished:
            meta = message.meta
            end = (
                FINAL,
                meta.done_reason,
                meta.prompt_tokens,
                meta.completion_tokens,
                meta.total_duration_ns,
                meta.attempts,
            )
        elif kind is GenerationFailed:
            error = message.error
            end = (ERROR, _portable(error, getattr(error, "host", None) or "", message.meta.model))
        elif kind is GenerationCancelled:  # not by its caller (it sends no end then)
            end = (
                ERROR,
                StreamDroppedError(
                    f"the generation was cancelled on {session.owner.name}: {message.reason}",
                    model=message.meta.model,
                ),
            )
        else:
            return None
        session.ended(self._id, end)
        return None


class _Session:
    """One caller channel on this Ray actor (actor loop only): the session's generation
    supervisor, its transports, its outbox and its streams (module docstring)."""

    def __init__(
        self,
        owner: RayGenerationSupervisor,
        caller_id: str,
        config: SessionConfig,
        window: float,
        max_deltas: int,
    ) -> None:
        self.owner = owner
        self.caller_id = caller_id
        self.config = config
        self.box = _Outbox(window, max_deltas)
        self.log = _ForwardingLog(self.box)
        self.transports: dict[str, OllamaTransport] = {}
        self.streams: dict[int, tuple[str, str]] = {}
        """Stream id -> (request id, the request's host), until its end or cancel."""
        self.in_flight: dict[str, int] = {}  # a single-host session's hosts view
        self.registry = None if config.hosts is None else HostRegistry(config.hosts)
        self.box.hosts_view = self._view
        self.closed = False
        self.supervisor = self._start_supervisor()

    @property
    def supervisor_id(self) -> str:
        return f"{self.owner.name}/{self.config.session}"

    def _start_supervisor(self) -> GenerationSupervisor:
        config = self.config
        actor = GenerationSupervisor(
            self.owner.actor_loop,
            transport_for=self.transport,
            log=self.log,
            policy=config.policy,
            breaker_policy=config.breaker_policy,
            actor_id=self.supervisor_id,
            parent_id=None,
            hosts=self.registry,
            tags_every=config.tags_every,
        )
        actor.begin()  # on_start now: this runs on the actor loop
        return actor

    def transport(self, host: str) -> OllamaTransport:
        transport = self.transports.get(host)
        if transport is None:
            connect_timeout, max_in_flight, queue_timeout = self.config.settings
            transport = self.transports[host] = OllamaTransport(
                host,
                connect_timeout=connect_timeout,
                max_in_flight=max_in_flight,
                queue_timeout=queue_timeout,
            )
        return transport

    def _view(self) -> tuple[HostView, ...]:
        if self.registry is not None:
            return self.registry.view
        breakers = self.supervisor.breakers()
        capacity = self.config.settings[1] or 0
        return tuple(
            HostView(url, "open" if breakers.get(url) == "open" else "up", n, capacity, 1.0, None)
            for url, n in self.in_flight.items()
        )

    def start(self, stream_id: int, request: GenerationRequest) -> None:
        if self.supervisor.actor_stopped.is_set():  # crashed (its generations failed): anew
            crashed = self.supervisor
            self.supervisor = self._start_supervisor()
            self.log.emit(
                "actor_restarted",
                actor=self.supervisor_id,
                kind=crashed.kind,
                reason="the Ray supervisor of this session had crashed",
            )
        out = _StreamOut(self.owner.actor_loop, self, stream_id)
        self.streams[stream_id] = (request.request_id, request.host)
        self.in_flight[request.host] = self.in_flight.get(request.host, 0) + 1
        tell_here(self.supervisor.actor_ref, StartGeneration(request, out.actor_ref))

    def _forget(self, stream_id: int) -> str | None:
        entry = self.streams.pop(stream_id, None)
        if entry is None:
            return None
        rid, host = entry
        self.in_flight[host] = self.in_flight.get(host, 1) - 1
        self.box.changed = True
        return rid

    def ended(self, stream_id: int, end: tuple[Any, ...]) -> None:
        """The supervisor here ended the stream (done, or gave up): its end goes out."""
        if self._forget(stream_id) is not None and not self.closed:
            self.box.end(stream_id, end)

    def cancel(self, stream_id: int) -> bool:
        rid = self._forget(stream_id)
        if rid is None:
            return False
        cancelled = self.log.caller_cancelled
        if len(cancelled) > 10_000:  # ids whose cancel raced their end (no record came)
            cancelled.clear()
        cancelled.add(rid)
        with contextlib.suppress(Exception):
            tell_here(self.supervisor.actor_ref, CancelGeneration(rid, "cancelled by its caller"))
        return True

    async def add_host(self, spec: HostSpec) -> HostView | None:
        if self.registry is None:
            raise InvalidInputError("this session was started with one host: not a pool")
        present = {view.url: view for view in self.supervisor.hosts()}.get(spec.url)
        if present is not None and present.state != "draining":
            return present  # the session started here with it already
        with self.registry.lock:
            self.registry.specs[spec.url] = spec
        message = AddHost(spec.url, spec.capacity, spec.weight)
        view: HostView = await ask_async(self.supervisor.actor_ref, message, timeout=10)
        return view

    async def remove_host(self, url: str, drain: bool) -> None:
        if self.registry is None:
            raise InvalidInputError("this session was started with one host: not a pool")
        present = {view.url: view for view in self.supervisor.hosts()}.get(url)
        with self.registry.lock:
            self.registry.specs.pop(url, None)
        if present is None or present.state == "draining":
            return
        await ask_async(self.supervisor.actor_ref, RemoveHost(url, drain), timeout=10)

    def close(self) -> None:
        """The channel closed: stop the supervisor (it cancels every stream; each closes its
        HTTP connection), then close the transports."""
        if self.closed:
            return
        self.closed = True
        self.box.close()
        with contextlib.suppress(Exception):
            self.supervisor.stop_now()
        transports, self.transports = list(self.transports.values()), {}
        if transports:
            self.owner.actor_loop.spawn(_close_transports(transports))


async def _close_transports(transports: list[OllamaTransport]) -> None:
    await asyncio.sleep(0)  # the cancelled streams close their connections first
    for transport in transports:
        with contextlib.suppress(Exception):
            await transport.aclose()


class RayGenerationSupervisor:
    """A Ray async actor supervising the generations of callers in other processes (see the
    module docstring). Ray's event loop serves the calls; everything else runs on
    :attr:`actor_loop`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.actor_loop = ActorLoop(name=f"mellea-actors-{name}").start()
        self._sessions: dict[str, _Session] = {}  # caller id -> its session (actor loop)
        self._gone: set[str] = set()  # callers whose channel ended: their late starts refused
        self._transports: dict[tuple[str, TransportSettings], OllamaTransport] = {}
        """For ``list_models`` / ``version`` (actor loop)."""
        self._started_at = time.time()
        self._links: asyncio.Server | None = None
        self._control: tuple[str, int, str] | None = None

    async def _on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the actor loop and await it here (on Ray's loop)."""
        return await await_concurrent(self.actor_loop.run_coroutine(coro))

    async def where(self) -> dict[str, Any]:
        """Who and where this actor is: Ray actor id, node id, pid, start time, its streams and
        callers, and its control port ``(ip, port, token)`` (None if it could not listen)."""
        import ray  # inside a Ray worker process: always importable

        context = ray.get_runtime_context()
        ip = ray.util.get_node_ip_address()
        streams, callers = await self._on_loop(self._listen(ip))
        return {
            "name": self.name,
            "actor_id": context.get_actor_id(),
            "node_id": context.get_node_id(),
            "pid": os.getpid(),
            "started_at": self._started_at,
            "streams": streams,
            "callers": callers,
            "control": self._control,
        }

    async def _listen(self, ip: str) -> tuple[int, int]:
        if self._links is None:
            with contextlib.suppress(OSError):
                self._links = await asyncio.start_server(self._on_link, host=ip, port=0)
                port = self._links.sockets[0].getsockname()[1]
                self._control = (ip, port, secrets.token_hex(16))
        sessions = list(self._sessions.values())
        return sum(len(s.streams) for s in sessions), len(sessions)

    async def _on_link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A caller's control link: ``TOKEN CALLER_ID`` then one stream id per line, each
        cancelled at once (module docstring, "Control link"); on the actor loop."""
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

    # sessions (actor loop) ---------------------------------------------------------------------
    def _session(
        self, caller_id: str, config: SessionConfig | None, window: float, max_deltas: int
    ) -> _Session | None:
        """The caller's session here, started now if needed (not without its config: a
        polling caller sends it with its first poll only)."""
        if caller_id in self._gone:
            return None
        session = self._sessions.get(caller_id)
        if session is None:
            if config is None:
                return None
            session = _Session(self, caller_id, config, window, max_deltas)
            self._sessions[caller_id] = session
        return session

    async def _next_item(
        self, caller_id: str, config: SessionConfig | None, window: float, max_deltas: int
    ) -> Item | None:
        session = self._session(caller_id, config, window, max_deltas)
        if session is None:
            return None
        box = session.box
        while not box.closed:
            await box.wake.wait()
            if box.has_news():
                return box.take()
            box.wake.clear()
        return None

    def _leave(self, caller_id: str) -> None:
        session = self._sessions.pop(caller_id, None)
        if len(self._gone) > 10_000:
            self._gone.clear()
        self._gone.add(caller_id)
        if session is not None:
            session.close()

    def _leave_soon(self, caller_id: str) -> None:
        with contextlib.suppress(RuntimeClosedError):
            self.actor_loop.call_soon(self._leave, caller_id)

    def _start_here(
        self,
        done: concurrent.futures.Future[bool],
        caller_id: str,
        config: SessionConfig,
        starts: list[tuple[int, GenerationRequest]],
        window: float,
        max_deltas: int,
    ) -> None:
        if done.cancelled():  # the caller's channel left meanwhile
            return
        outcome: bool | BaseException
        try:
            session = self._session(caller_id, config, window, max_deltas)
            if session is not None:
                for stream_id, request in starts:
                    session.start(stream_id, request)
            outcome = session is not None
        except Exception as exc:
            outcome = exc
        with contextlib.suppress(concurrent.futures.InvalidStateError):  # cancelled since
            if isinstance(outcome, BaseException):
                done.set_exception(outcome)
            else:
                done.set_result(outcome)

    def _cancel(self, caller_id: str, stream_id: int) -> bool:
        session = self._sessions.get(caller_id)
        return session is not None and session.cancel(stream_id)

    # the Ray calls (Ray's loop) ----------------------------------------------------------------
    async def pump(
        self, caller_id: str, config: SessionConfig, window: float, max_deltas: int
    ) -> AsyncIterator[Item]:
        """The caller's channel: one item per window with every stream's entries and the
        session's news (module docstring), until the caller cancels it or the actor closes."""
        try:
            while True:
                item = await self._on_loop(self._next_item(caller_id, config, window, max_deltas))
                if item is None:
                    return
                yield item
        finally:  # also on CancelledError / GeneratorExit (ray.cancel): the caller left
            self._leave_soon(caller_id)

    async def poll(
        self, caller_id: str, config: SessionConfig | None, window: float, max_deltas: int
    ) -> Item | None:
        """The channel of a caller that cannot hold a streaming call (a Ray Client driver,
        ``ray://``): the next item, once there is one (the caller asks again after each, its
        config with the first only); None once the channel or the actor closed."""
        return await self._on_loop(self._next_item(caller_id, config, window, max_deltas))

    async def leave(self, caller_id: str) -> None:
        """A polling caller closed its channel: end its session (as the end of a pump)."""
        self._leave_soon(caller_id)

    async def start(
        self,
        caller_id: str,
        config: SessionConfig,
        starts: list[tuple[int, GenerationRequest]],
        window: float,
        max_deltas: int,
    ) -> bool:
        """Start generations, each ``(stream_id, request)``, under the session's supervisor
        here; their deltas, ends and records go out through the channel. False if that
        channel is closed already.

        A plain callback on the actor loop (not a task): it runs before the ``cancel`` of
        these streams, which the caller sends after this call (Ray starts one caller's calls
        in order; the loop runs callbacks in order)."""
        done: concurrent.futures.Future[bool] = concurrent.futures.Future()
        self.actor_loop.call_soon(
            self._start_here, done, caller_id, config, starts, window, max_deltas
        )
        return await await_concurrent(done)

    async def cancel(self, caller_id: str, stream_id: int) -> bool:
        """Stop one stream now (its HTTP connection closes)."""
        with contextlib.suppress(RuntimeClosedError):
            self.actor_loop.call_soon(self._cancel, caller_id, stream_id)
        return True

    async def add_host(
        self, caller_id: str, url: str, capacity: int | None, weight: float
    ) -> tuple[int, Any]:
        """``session.hosts.add`` for the caller's session here: ``(OK, hosts)`` — the session's
        hosts here after the change (``(seq, views)``; None if the session has no supervisor
        here: one starting later starts with the host) — or ``(ERROR, exception)``."""
        return await self._on_loop(self._hosts_here(caller_id, HostSpec(url, capacity, weight)))

    async def remove_host(self, caller_id: str, url: str, drain: bool) -> tuple[int, Any]:
        """``session.hosts.remove`` for the caller's session here: as :meth:`add_host`."""
        return await self._on_loop(self._hosts_here(caller_id, url, drain))

    async def _hosts_here(
        self, caller_id: str, what: HostSpec | str, drain: bool = True
    ) -> tuple[int, Any]:
        session = self._sessions.get(caller_id)
        if session is None:
            return (OK, None)
        try:
            if isinstance(what, HostSpec):
                await session.add_host(what)
            else:
                await session.remove_host(what, drain)
            return (OK, session.box.hosts_now())
        except Exception as exc:
            return (ERROR, _portable(exc, str(what), None))

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

    async def _ask_host(
        self, method: str, host: str, settings: TransportSettings, timeout: float
    ) -> tuple[int, Any]:
        try:
            call = getattr(self._transport(host, settings), method)
            return (OK, await call(timeout=timeout))
        except Exception as exc:
            return (ERROR, _portable(exc, host, None))

    async def list_models(
        self, host: str, settings: TransportSettings, timeout: float
    ) -> tuple[int, Any]:
        return await self._on_loop(self._ask_host("list_models", host, settings, timeout))

    async def version(
        self, host: str, settings: TransportSettings, timeout: float
    ) -> tuple[int, Any]:
        return await self._on_loop(self._ask_host("version", host, settings, timeout))

    async def close(self) -> None:
        """End every session (their streams close), the control port and the connection
        pools, then the actor loop (before the actor is killed)."""
        with contextlib.suppress(RuntimeClosedError):
            await self._on_loop(self._close_here())
        self.actor_loop.stop(2)

    async def _close_here(self) -> None:
        if self._links is not None:
            self._links.close()
        for caller_id in list(self._sessions):
            self._leave(caller_id)
        await asyncio.sleep(0)
        transports = list(self._transports.values())
        self._transports.clear()
        await _close_transports(transports)


def _portable(error: BaseException, host: str, model: str | None) -> BackendError:
    """The error as it will cross to the caller: a ``BackendError`` (pickles with its fields;
    the ``__cause__`` does not cross, so its repr is appended to the message). An
    ``InvalidInputError`` crosses as it is."""
    if isinstance(error, InvalidInputError) and not isinstance(error, BackendError):
        return error  # type: ignore[return-value]
    if not isinstance(error, BackendError):
        wrapped = BackendError(
            f"the Ray generation supervisor failed unexpectedly: {error!r}", host=host, model=model
        )
        return wrapped
    cause = error.__cause__
    if cause is not None and not isinstance(cause, BackendError):
        error.args = (f"{error} (cause in the Ray supervisor: {cause!r})", *error.args[1:])
    return error
