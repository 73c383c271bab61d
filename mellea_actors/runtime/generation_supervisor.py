"""The generation supervisor: starts, watches, restarts and cancels generators.

One :class:`GenerationSupervisor` per runtime (so per session by default). For each
``StartGeneration`` it runs a *generator*: an asyncio task on the actor loop that streams from
Ollama through the transport and tells the thunk actor every chunk. The supervisor owns the tasks:

* ``CancelGeneration`` cancels the task; the HTTP stream closes within milliseconds (even while
  Ollama is silent) and the thunk ends ``cancelled`` with the text received so far.
* A generator that failed is reported to the supervisor (``GeneratorExited``), which applies the
  :class:`RestartPolicy`: transient failures before any chunk are restarted after a backoff;
  everything else fails the thunk with the error (a :class:`BackendError` subclass).
* Stopping the supervisor cancels every generator it runs.
* A generation whose host has no free place (the transport's admission,
  :mod:`~mellea_actors.transport.admission`) waits as one admission ticket, with no task: the
  supervisor is the tickets' client, and starts the generator task when the ticket is granted
  (``admission_granted``), or exits the attempt with the queue timeout's error
  (``admission_expired``). A cancel takes the ticket out of the queue: nothing was sent.
* Every attempt that may start (a place at once, or granted later) is started from one FIFO,
  ``_starting``, at most :data:`START_BURST` per loop iteration: starting a stream (its task's
  first step opens a connection and sends the request) costs ~100-250 µs of the loop, so the
  running streams' chunks wait for a burst of starts in one iteration (a caller creating
  1,000 thunks at once delayed the first chunks by up to 140 ms; bench/README.md). New
  generations are *launched* (host and breaker, ``generation_started``, admission) the same
  way, from ``_launching``: a ``StartGeneration`` only records the generation, so a cancel
  that follows it finds it, and the launch skips it.

Ownership, precisely:

* ``_generations``, ``_breakers``, ``_probes`` and the restart intensity belong to the
  supervisor and are read and written only by its handlers and hooks (on the actor loop thread,
  one at a time): every restart, fail or cancel decision is taken there.
* A ``_Generation`` record is created by a handler; its delta counters (``deltas``,
  ``first_delta_at``) are written only by the running generator task (on the same thread,
  between two awaits), its control fields (``cancel_reason``, ``fail_with``, ``task``,
  ``attempt``) only by handlers.
* A generator task never changes supervisor state. It tells its thunk the deltas, and reports
  its exit to the supervisor with a ``GeneratorExited`` message, on which the supervisor
  decides. A *cancelled* generator's end — also one cancelled before it ever ran — is told by
  the task's done callback (``_generator_done``): the final ``GenerationCancelled`` or
  ``GenerationFailed`` goes *directly* to the thunk, so it ends even while the supervisor
  itself is stopping.

A pool of hosts (a session started with several, :mod:`~mellea_actors.runtime.host_pool`):
the supervisor then owns a :class:`~mellea_actors.runtime.host_pool.HostPool` (``_pool``, loop
thread, like the rest) and chooses the host of every *attempt* when it launches it
(``_Generation.host``; the request's own ``host`` is not used). Its rules:

* An attempt that fails for a transient reason before its first delta — refused, reset or
  dropped, HTTP 5xx, 503 "server busy", an open breaker, and also ``ModelNotFoundError`` (the
  host's tags were stale: refreshed at once) — *fails over*: it is launched at once (no backoff)
  on the least loaded other eligible host, logged ``failover`` (``from_host``, ``to_host``,
  ``reason``). A 503 fails over only to a host with room (``in_flight < capacity``). One round
  of failovers tries each host at most once; when no untried host is left, the normal policy
  decides (a 503: busy retry; else a restart with backoff, on whichever host is least loaded
  then, which starts a new round). Failovers are not restarts: they count neither toward
  ``max_restarts`` nor toward the restart intensity; they are bounded by the number of hosts
  per round. After a delta was delivered nothing moves: the reader gets the error.
* A generation that no host can take, or whose every try failed, fails with one
  ``BackendUnavailableError`` (a ``ConnectionError``) naming every host and what each said.
* ``AddHost`` / ``RemoveHost`` (asks, from any thread through the system) change the pool.
  ``drain=True`` stops new work to the host and lets its running attempts finish; the host
  leaves when the last one ends. ``drain=False`` stops its running attempts now: each one
  that delivered no text yet fails over as above, one with text fails with an error naming the
  host (``_Generation.evicted`` marks such a cancel, which ``_generator_done`` reports as a
  failure instead of ending the thunk).
* Per host: its breaker (``_breakers``), the breaker's probe (``_probes``) and a tags watcher
  (``_tag_watchers``: ``/api/tags`` at once, then every ``tags_every`` s), cancelled when the
  host leaves and when the supervisor stops.

With a single host (``_pool`` None) none of this runs: ``_Generation.host`` is the request's.

Under ``engine="ray"`` this same class runs inside every Ray generation supervisor, one per
session there (:mod:`~mellea_actors.runtime.ray_worker`: its "thunks" forward to the caller,
its log travels to the caller's); the caller's own instance is then a relay, with no pool, a
breaker that never opens and a policy that retries only a Ray actor's death before any text
(:mod:`~mellea_actors.runtime.ray_transport`).

The transport is anything that has the shape of :class:`ChatTransport`
(:class:`~mellea_actors.transport.ollama_http.OllamaTransport` in production, a fake in the unit
tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

import pykka

from mellea_actors.errors import (
    BackendError,
    BackendResponseError,
    BackendUnavailableError,
    CircuitOpenError,
    InvalidInputError,
    MelleaActorsError,
    ModelNotFoundError,
)
from mellea_actors.runtime.actor_base import RuntimeActor, handles
from mellea_actors.runtime.breaker import BreakerPolicy, CircuitBreaker
from mellea_actors.runtime.host_pool import (
    TAGS_EVERY,
    HostPool,
    HostRegistry,
    HostSpec,
    HostView,
    PooledHost,
)
from mellea_actors.runtime.loop import ActorLoop, actor_here, tell_here
from mellea_actors.runtime.messages import (
    AddHost,
    CancelGeneration,
    ChildCrashed,
    DeltasArrived,
    Escalated,
    GenerationCancelled,
    GenerationFailed,
    GenerationFinished,
    GenerationRequest,
    GenerationStats,
    GeneratorExited,
    HostAnswered,
    RemoveHost,
    RestartGenerator,
    StartGeneration,
    TagsRefreshed,
)
from mellea_actors.runtime.restart_policy import RestartIntensity, RestartPolicy

if TYPE_CHECKING:
    from mellea_actors.errors import QueueTimeoutError
    from mellea_actors.runtime.log import SupervisionLog
    from mellea_actors.transport.admission import AdmissionClient, Ticket
    from mellea_actors.transport.ollama_http import DeltaSink, FinalObject

__all__ = ["AdmittingTransport", "ChatTransport", "GenerationSupervisor"]


class ChatTransport(Protocol):
    """What the supervisor needs from the transport of one host (used on the actor loop only).

    A transport that also has ``admit`` is an :class:`AdmittingTransport`; without it, each
    generator waits for its place inside ``stream_chat``.
    """

    async def stream_chat(self, request: GenerationRequest, sink: DeltaSink) -> FinalObject:
        """Stream one chat into ``sink`` (``add`` per delta, ``flush`` at the end of every
        network read); raise a ``BackendError`` subclass.

        Cancelling the calling task must close the connection."""
        ...

    async def version(self, timeout: float = ...) -> str:
        """The host's version; ``BackendUnavailableError`` if it does not answer."""
        ...

    async def list_models(self, timeout: float = ...) -> list[str]:
        """The host's models (``/api/tags``; used by a pool only)."""
        ...


class AdmittingTransport(ChatTransport, Protocol):
    """A transport whose admission the supervisor waits on itself (as
    :class:`~mellea_actors.transport.ollama_http.OllamaTransport` does): a generator task
    starts only once the host has a place for it, and the place is handed to ``stream_chat``.
    """

    def admit(self, client: AdmissionClient, token: Any = None) -> Ticket:
        """A ticket that holds a place now, or waits (``client`` is told); see admission.py."""
        ...

    def queue_timeout_error(self, model: str) -> QueueTimeoutError:
        """The error of a request that waited ``queue_timeout`` s for a place."""
        ...

    async def stream_chat(
        self, request: GenerationRequest, sink: DeltaSink, *, place: Ticket | None = None
    ) -> FinalObject:
        """As :meth:`ChatTransport.stream_chat`, holding ``place`` (released here)."""
        ...


@dataclass(slots=True)
class _Generation:
    """The supervisor's record of one request (loop thread; see the module docstring for who
    writes which field)."""

    request: GenerationRequest
    thunk: pykka.ActorRef[Any]
    attempt: int = 1
    task: asyncio.Task[None] | None = None
    place: Ticket | None = None
    """The current attempt's place at its host's admission (``admit``): waiting (no task yet),
    then held by the task, which releases it (so does the task's done callback)."""
    restart_timer: asyncio.TimerHandle | None = None
    cancel_reason: str | None = None
    fail_with: BaseException | None = None
    """When set, the cancel ends the thunk as failed with this error (a crash), not cancelled."""
    deltas: int = 0
    first_delta_at: float | None = None
    started_at: float = field(default_factory=time.monotonic)
    busy_retries: int = 0
    """Attempts that the host answered "server busy" (503): retried, not counted as restarts."""
    host: str = ""
    """The host of the current attempt (the request's; in a pool, the pool's choice)."""
    slot: PooledHost | None = None
    """Pool only: the host the running attempt holds (``in_flight``), until its exit."""
    failovers: int = 0
    """Pool only: attempts moved to another host (not restarts)."""
    tried: set[str] | None = None
    """Pool only: the hosts of the current failover round."""
    errors: dict[str, str] | None = None
    """Pool only: the last error each host gave this generation (for the final error)."""
    evicted: BaseException | None = None
    """Pool only: the running attempt is being stopped because its host was removed."""
    starting: bool = False
    """The current attempt waits in ``_starting`` (its place, if any, granted): cleared when
    it starts or is taken out (``_unqueue``), so a stale entry of the deque is skipped."""
    deltas_queued: bool = False
    """A delta batch went to the thunk as a queued message (its actor could not take it at
    once): every later batch, and the end, is queued behind it, so none overtakes it."""


#: Attempts started per loop iteration at most (see ``_queue_start``). Each start is ~100-250
#: µs of the loop, and the running streams' reads wait behind a burst: 16 keeps that to a few
#: ms. (Measured on bench scenario 4, 1,000 streams created at once: with every immediate
#: admission started inline and 128 granted ones per iteration, first chunks waited up to
#: 140 ms and the p99 delay was 15-28 ms; with 16 for all, 4-8 ms; 4 measured like 16.)
START_BURST = 16

#: The records a relay leaves to the supervisor on the far side (see ``relay``).
_RELAY_QUIET = frozenset({"generation_started", "first_chunk", "generation_completed"})


class _DeltaBatch:
    """The generator's :class:`~mellea_actors.transport.ollama_http.DeltaSink` (loop thread).

    The transport adds the deltas of one network read, then flushes (its contract): the thunk
    actor takes them at once, in one call of its ``take_deltas`` (the same-loop fast path,
    :func:`~mellea_actors.runtime.loop.actor_here`: the generator and the thunk actor share the
    loop; no message is built), or, when the actor cannot run now, in one queued
    ``DeltasArrived``. ``flush()`` also runs before the generator's final message to the thunk.
    """

    __slots__ = ("_at", "_gen", "_supervisor", "_texts", "_thinking")

    def __init__(self, gen: _Generation, supervisor: GenerationSupervisor) -> None:
        self._gen = gen
        self._supervisor = supervisor  # told of the first delta (its log's first_chunk)
        self._texts: list[str] = []
        self._thinking: list[str] | None = None  # made for the first piece of thinking
        self._at = 0.0

    def add(self, content: str, thinking: str) -> None:
        gen = self._gen
        if not self._texts and not self._thinking:
            self._at = time.monotonic()
            if gen.deltas == 0:
                gen.first_delta_at = self._at
                self._supervisor._first_chunk(gen)
        gen.deltas += 1
        if content:
            self._texts.append(content)
        if thinking:
            if self._thinking is None:
                self._thinking = []
            self._thinking.append(thinking)

    def flush(self) -> None:
        texts, thinking = self._texts, self._thinking
        if not texts and not thinking:
            return
        joined = "".join(thinking) if thinking else ""
        if thinking:
            thinking.clear()
        gen = self._gen
        ref = gen.thunk
        if not gen.deltas_queued:
            actor = actor_here(ref)
            take = getattr(actor, "take_deltas", None)  # a ThunkActor, or the Ray side's stream
            if take is not None:  # the usual case: no message object, no dispatch
                assert actor is not None
                actor.run_now(take, texts, joined, self._at)
                texts.clear()
                return
            gen.deltas_queued = True  # from now on in the mailbox, in order
        message = DeltasArrived(tuple(texts), joined, self._at)
        texts.clear()
        try:  # noqa: SIM105 (not contextlib.suppress: this runs once per network read)
            ref.tell(message)
        except pykka.ActorDeadError:  # a crashed thunk: reported elsewhere
            pass


class _AttemptEnded:
    """The done callback of one attempt's generator task: ``_generator_done`` with what the
    attempt was started with (one small object; a ``functools.partial`` is two)."""

    __slots__ = ("attempt", "gen", "place", "supervisor")

    def __init__(
        self,
        supervisor: GenerationSupervisor,
        gen: _Generation,
        attempt: int,
        place: Ticket | None,
    ) -> None:
        self.supervisor = supervisor
        self.gen = gen
        self.attempt = attempt
        self.place = place

    def __call__(self, task: asyncio.Task[None]) -> None:
        self.supervisor._generator_done(self.gen, self.attempt, self.place, task)


class GenerationSupervisor(RuntimeActor):
    """Runs generators against Ollama; see the module docstring."""

    kind = "generation_supervisor"

    def __init__(
        self,
        actor_loop: ActorLoop,
        *,
        transport_for: Callable[[str], ChatTransport],
        log: SupervisionLog,
        policy: RestartPolicy | None = None,
        breaker_policy: BreakerPolicy | None = None,
        actor_id: str = "generation-supervisor",
        parent_id: str | None = None,
        parent: pykka.ActorRef[Any] | None = None,
        hosts: HostRegistry | None = None,
        tags_every: float = TAGS_EVERY,
        relay: bool = False,
    ) -> None:
        super().__init__(actor_loop, log=log, actor_id=actor_id, parent_id=parent_id, parent=parent)
        # A relay (engine="ray": the supervisor on the far side reports each attempt's start,
        # first chunk and end, with its Ray ids) does not record them a second time; nor a
        # failure the far side recorded (``recorded_remotely`` on the error).
        self._relay = relay
        self.transport_for = transport_for
        self.policy = policy or RestartPolicy()
        self.breaker_policy = breaker_policy or BreakerPolicy()
        self._intensity = RestartIntensity(self.policy)
        self._generations: dict[str, _Generation] = {}
        self._breakers: dict[str, CircuitBreaker] = {}
        self._probes: dict[str, asyncio.Task[None]] = {}
        self._tag_watchers: dict[str, asyncio.Task[None]] = {}
        self._tags_every = tags_every
        # attempts that may start, with their transport (FIFO; _queue_start)
        self._starting: deque[tuple[_Generation, ChatTransport]] = deque()
        self._launching: deque[_Generation] = deque()  # new generations, to launch (FIFO)
        self._start_scheduled = False  # a _start_queued is scheduled
        self._pool = None if hosts is None else HostPool(hosts, self._breaker)

    # lifecycle -------------------------------------------------------------------------------
    def on_start(self) -> None:
        self._emit("actor_started")
        for host in self._pool or ():
            self._host_joined(host)

    def on_stop(self) -> None:
        for gen in list(self._generations.values()):
            self._cancel(gen, "supervisor stopped (session closed)")
        self._stop_probes()
        self._emit("actor_stopped")

    def on_crash(self, exc_info: Any) -> None:
        """Fail every generation it ran (their thunks get the error), report to the parent."""
        self._emit("actor_crashed", reason=repr(exc_info[1]))
        error = MelleaActorsError(f"the generation supervisor crashed: {exc_info[1]!r}")
        for gen in list(self._generations.values()):
            self._cancel(gen, f"supervisor crashed: {exc_info[1]!r}", fail_with=error)
        self._stop_probes()
        self.tell_parent(ChildCrashed(self.actor_id, self.kind, None, repr(exc_info[1])))

    def _stop_probes(self) -> None:
        for task in [*self._probes.values(), *self._tag_watchers.values()]:
            task.cancel()
        self._probes.clear()
        self._tag_watchers.clear()

    def _emit(self, event: str, gen: _Generation | None = None, **fields: Any) -> None:
        """A record of the supervisor itself, or (``gen``) of one of its generators."""
        if gen is None:
            self.emit(event, **fields)
            return
        if self._relay and event in _RELAY_QUIET:
            return
        rid = gen.request.request_id
        self.emit_child(event, actor=f"generator-{rid}", kind="generator", thunk=rid, **fields)

    def active(self) -> list[str]:
        """Request ids of the generations under way (for introspection)."""
        return list(self._generations)

    def breakers(self) -> dict[str, str]:
        """The state of each host's circuit breaker (for introspection)."""
        return {host: b.state.value for host, b in self._breakers.items()}

    def hosts(self) -> list[HostView]:
        """The pool's hosts (empty for a single-host supervisor; for introspection)."""
        return [host.view() for host in self._pool or ()]

    # handlers --------------------------------------------------------------------------------
    @handles(StartGeneration)
    def _on_start_generation(self, message: StartGeneration) -> None:
        request = message.request
        gen = _Generation(request=request, thunk=message.thunk, host=request.host)
        self._generations[request.request_id] = gen  # known now: a cancel finds it
        # launched soon, at most START_BURST per iteration (_start_queued): the starts a caller
        # makes in a row arrive here together, and launching each (its breaker, its log
        # record, its admission) in one go held the loop for tens of ms at a burst's head
        self._launching.append(gen)
        self._schedule_starts()

    def _breaker(self, host: str) -> CircuitBreaker:
        breaker = self._breakers.get(host)
        if breaker is None:
            breaker = self._breakers[host] = CircuitBreaker(host, self.breaker_policy)
        return breaker

    def _launch(self, gen: _Generation, target: PooledHost | None = None) -> None:
        """Start the generator of ``gen``'s current attempt (in a pool: on ``target``, else on
        the pool's choice now)."""
        gen.restart_timer = None
        pool = self._pool
        if pool is not None:
            target = target or pool.choose(gen.request.model)
            if target is None:
                rid = gen.request.request_id
                self._fail(gen, pool.unavailable_error(gen.request.model, gen.errors, rid))
                return
            gen.host = target.url
        breaker = self._breaker(gen.host)
        if breaker.is_open:  # fail fast instead of waiting for a connect timeout
            self._fail(gen, breaker.open_error(gen.request.model))
            return
        self._emit(
            "generation_started",
            gen,
            attempt=gen.attempt,
            model=gen.request.model,
            host=gen.host,
        )
        if pool is not None and target is not None:
            pool.acquire(target)
            gen.slot = target
        transport = self.transport_for(gen.host)
        if hasattr(transport, "admit"):
            # self: the AdmissionClient; gen: the ticket's token
            place = cast("AdmittingTransport", transport).admit(self, gen)
            gen.place = place
            if place.state != 1:  # no place now: admission_granted queues it when one frees
                return
        self._queue_start(gen, transport)

    def _start_attempt(
        self, gen: _Generation, transport: ChatTransport, place: Ticket | None
    ) -> None:
        attempt = gen.attempt
        task = self.actor_loop.spawn(
            self._generate(gen, attempt, transport, place),
            name=f"generator-{gen.request.request_id}",
        )
        task.add_done_callback(
            _AttemptEnded(self, gen, attempt, place), context=self.actor_loop.callback_context
        )
        gen.task = task

    def admission_granted(self, ticket: Ticket) -> None:
        """An attempt that waited got its place at the host's admission (loop thread, inside
        the admission: another request ended, or the limit grew): it is queued to start."""
        gen: _Generation = ticket.token
        assert gen.place is ticket
        self._queue_start(gen, self.transport_for(gen.host))

    def _queue_start(self, gen: _Generation, transport: ChatTransport) -> None:
        """``gen``'s attempt may start (its place, if any, is held): its task starts soon, at
        most :data:`START_BURST` per loop iteration (:meth:`_start_queued`), in FIFO order. A
        slow start that grants hundreds at once, or a caller creating hundreds of thunks in
        one go, would otherwise open hundreds of connections in one iteration while the
        running streams' chunks wait."""
        gen.starting = True
        self._starting.append((gen, transport))
        self._schedule_starts()

    def _schedule_starts(self) -> None:
        if not self._start_scheduled:
            self._start_scheduled = True
            self.actor_loop.loop.call_soon(self._start_queued)

    def _start_queued(self) -> None:
        """One loop iteration's share: up to START_BURST new generations launched, then up to
        START_BURST attempts started; the rest in the next iterations."""
        launching = self._launching
        for _ in range(min(len(launching), START_BURST)):
            gen = launching.popleft()
            if gen.cancel_reason is None and self._generations.get(gen.request.request_id) is gen:
                self._launch(gen)
        starting = self._starting
        for _ in range(min(len(starting), START_BURST)):
            gen, transport = starting.popleft()
            if not gen.starting:
                continue  # taken out since (cancelled, or moved: a later entry is its own)
            gen.starting = False
            place = gen.place
            if gen.task is not None or gen.cancel_reason:
                continue
            if place is not None and place.state != 1:  # its place was given back since
                continue
            self._start_attempt(gen, transport, place)
        if starting or launching:
            self.actor_loop.loop.call_soon(self._start_queued)
        else:
            self._start_scheduled = False

    def admission_expired(self, ticket: Ticket) -> None:
        """An attempt waited ``queue_timeout`` s for a place (loop thread, the admission's
        timer): it exits with the transport's error, as if its generator had raised it."""
        gen: _Generation = ticket.token
        assert gen.place is ticket
        gen.place = None
        transport = cast("AdmittingTransport", self.transport_for(gen.host))
        error = transport.queue_timeout_error(gen.request.model)
        self._report(GeneratorExited(gen.request.request_id, gen.attempt, gen.deltas, error=error))

    def _generator_done(
        self, gen: _Generation, attempt: int, place: Ticket | None, task: asyncio.Task[None]
    ) -> None:
        """A generator task ended (loop thread). Every cancelled generator ends here, whether
        the cancel landed before its first step (``_generate`` never ran) or inside it (it
        flushed its deltas and re-raised): the thunk is told here, not via the supervisor's
        mailbox, since the supervisor may be stopping. The attempt's admission place is given
        back here if the task did not (it never ran): ``place``, bound at spawn, since
        ``gen.place`` may be the next attempt's by now.
        """
        if place is not None:
            place.release()
        if task.cancelled():
            rid = gen.request.request_id
            evicted, gen.evicted = gen.evicted, None
            if evicted is not None and gen.cancel_reason is None:  # its host left the pool
                self._report(GeneratorExited(rid, attempt, gen.deltas, error=evicted))
                return
            self._end_cancelled(gen)
            self._report(GeneratorExited(rid, attempt, gen.deltas, cancelled=True))

    @handles(CancelGeneration)
    def _on_cancel(self, message: CancelGeneration) -> bool:
        gen = self._generations.get(message.request_id)
        if gen is None:
            return False
        self._cancel(gen, message.reason)
        return True

    def _cancel(
        self, gen: _Generation, reason: str, fail_with: BaseException | None = None
    ) -> None:
        if gen.cancel_reason is not None:
            return
        gen.cancel_reason = reason
        gen.fail_with = fail_with
        if gen.task is not None and not gen.task.done():
            gen.task.cancel(reason)
            return
        # waiting for a place, or between attempts (for a restart): nothing runs; end it here
        self._unqueue(gen)
        if gen.restart_timer is not None:
            gen.restart_timer.cancel()
        self._generations.pop(gen.request.request_id, None)
        self._end_cancelled(gen)

    def _unqueue(self, gen: _Generation) -> bool:
        """Take an attempt that waits for a place — in its host's queue, or granted and about
        to start — out (and give back its pool slot); False if it was not waiting. Only for an
        attempt whose task is not running."""
        place, gen.place = gen.place, None
        queued, gen.starting = gen.starting, False
        if place is None:
            if not queued:  # (a transport without admission: waiting only in _starting)
                return False
        elif not place.cancel():  # granted already (in _starting) or ended: give it back
            if place.state != 1:
                return False
            place.release()
        slot, gen.slot = gen.slot, None
        if slot is not None:
            self._release(slot)
        return True

    def _end_cancelled(self, gen: _Generation) -> None:
        """Tell the thunk its generation was cancelled (or failed, after a crash)."""
        reason = gen.cancel_reason or "cancelled"
        if gen.fail_with is not None:
            self._emit(
                "generation_failed",
                gen,
                reason=reason,
                chunks=gen.deltas,
                error_type=type(gen.fail_with).__name__,
            )
            self._tell_thunk(gen, GenerationFailed(gen.fail_with, self._meta(gen)))
            return
        self._emit("generation_cancelled", gen, reason=reason, chunks=gen.deltas)
        self._tell_thunk(gen, GenerationCancelled(reason, self._meta(gen)))

    def _fail(self, gen: _Generation, error: BaseException, why: str = "") -> None:
        self._generations.pop(gen.request.request_id, None)
        if not (self._relay and getattr(error, "recorded_remotely", False)):
            self._emit(
                "generation_failed",
                gen,
                reason=f"{error} {why}".strip(),
                error_type=type(error).__name__,
                attempts=gen.attempt,
                chunks=gen.deltas,
            )
        self._tell_thunk(gen, GenerationFailed(error, self._meta(gen)))

    @handles(ChildCrashed)
    def _on_child_crashed(self, message: ChildCrashed) -> None:
        """A thunk actor crashed: its output is gone, so its generation stops."""
        self.log.emit(
            "child_crashed",
            actor=self.actor_id,
            kind=self.kind,
            parent=self.parent_id,
            thunk=message.request_id,
            reason=f"{message.kind} {message.child_id}: {message.reason}",
        )
        gen = self._generations.get(message.request_id or "")
        if gen is not None:
            self._cancel(gen, f"its thunk actor crashed: {message.reason}")

    # circuit breaker ---------------------------------------------------------------------------
    def _count_transport_result(self, gen: _Generation, error: BaseException | None) -> None:
        """Tell the host's breaker what this attempt showed (see ``breaker.py``): a connection
        failure counts against the host; anything else — a delta, an HTTP error, a dropped
        stream — means the host is there, which resets the count (and closes an open breaker).
        An error of our own making (an open breaker failing fast) says nothing about the host.
        """
        if isinstance(error, CircuitOpenError):
            return
        host = None if self._pool is None else self._pool.get(gen.host)
        if self._pool is not None and (host is None or host.draining):
            return  # leaving the pool: what it did no longer matters
        breaker = self._breaker(gen.host)
        if isinstance(error, BackendUnavailableError) and gen.deltas == 0:
            opened = breaker.trip(error) if host and host.trial else breaker.record_failure(error)
            if host is not None:
                host.trial = False
            if opened:
                self._emit_breaker("breaker_opened", breaker, str(error))
                self._start_probe(breaker)
            return
        if breaker.record_success():
            why = "a generation got through" if error is None else "the host answered"
            self._emit_breaker("breaker_closed", breaker, why)
        if host is not None and host.trial:
            host.trial = False
            self._host_state(host, "an attempt got an answer")

    def _emit_breaker(self, event: str, breaker: CircuitBreaker, reason: str) -> None:
        self.emit_child(
            event,
            actor=f"breaker-{breaker.host}",
            kind="circuit_breaker",
            reason=reason,
            host=breaker.host,
            failures=breaker.consecutive_failures,
        )
        host = None if self._pool is None else self._pool.get(breaker.host)
        if host is not None and event != "breaker_probe_failed":
            self._host_state(host, reason)

    def _start_probe(self, breaker: CircuitBreaker) -> None:
        if breaker.host in self._probes:
            return
        self._probes[breaker.host] = self.actor_loop.spawn(
            self._probe(breaker.host, breaker), name=f"probe-{breaker.host}"
        )

    async def _probe(self, host: str, breaker: CircuitBreaker) -> None:
        """Probe ``/api/version`` with growing delays until the host answers (loop thread)."""
        transport = self.transport_for(host)
        while True:
            await asyncio.sleep(breaker.next_probe_delay())
            try:
                await transport.version(timeout=self.breaker_policy.probe_timeout)
            except BackendError as exc:
                self._emit_breaker("breaker_probe_failed", breaker, str(exc))
                continue
            self.tell_self(HostAnswered(host))
            return

    @handles(HostAnswered)
    def _on_host_answered(self, message: HostAnswered) -> None:
        self._probes.pop(message.host, None)
        breaker = self._breaker(message.host)
        host = None if self._pool is None else self._pool.get(message.host)
        if host is not None and breaker.is_open:
            host.trial = True  # half-open: one attempt at a time until one gets an answer
        if breaker.record_success():
            self._emit_breaker("breaker_closed", breaker, "/api/version answered")

    @handles(GeneratorExited)
    def _on_exited(self, message: GeneratorExited) -> None:
        gen = self._generations.get(message.request_id)
        if gen is None or message.attempt != gen.attempt:
            return
        gen.task = None
        error = message.error
        if not message.cancelled or gen.deltas:  # a cancel before any delta says nothing
            self._count_transport_result(gen, error)
        slot, gen.slot = gen.slot, None
        if slot is not None:
            self._release(slot)
        if error is None:  # completed or cancelled: the generator told the thunk already
            self._generations.pop(message.request_id, None)
            return
        if self._pool is not None and self._failover(gen, error):
            return
        waited = time.monotonic() - gen.started_at
        if gen.cancel_reason is None and self.policy.should_retry_busy(error, gen.deltas, waited):
            gen.busy_retries += 1
            delay = self.policy.backoff(gen.busy_retries) * (0.5 + random.random() / 2)
            self._emit(
                "generator_restarting",
                gen,
                reason=f"server busy, sent again (not a restart): {error}",
                attempt=gen.attempt,
                backoff=delay,
            )
            self._schedule_restart(gen, delay)
            return
        restarts = gen.attempt - 1 - gen.busy_retries - gen.failovers
        if gen.cancel_reason is None and self.policy.should_restart(error, restarts, gen.deltas):
            if self._intensity.record():
                delay = self.policy.backoff(restarts + 1)
                self._emit(
                    "generator_restarting",
                    gen,
                    reason=str(error),
                    attempt=gen.attempt,
                    backoff=delay,
                )
                self._schedule_restart(gen, delay)
                return
            self._emit("escalated", gen, reason=f"restart intensity exceeded: {error}")
            self.tell_parent(Escalated(self.actor_id, gen.request.request_id, str(error)))
        why = "after text was delivered (not retried)" if gen.deltas else ""
        if self._pool is not None and gen.errors and not gen.deltas and _pool_wide(error):
            rid = gen.request.request_id
            pooled = self._pool.unavailable_error(gen.request.model, gen.errors, rid)
            pooled.__cause__ = error
            error = pooled
        self._fail(gen, error, why)

    # the pool ------------------------------------------------------------------------------------
    def _failover(self, gen: _Generation, error: BaseException) -> bool:
        """Move a failed attempt that delivered nothing to another host at once; False when
        it must not move (text delivered, cancelled, not transient) or no untried host is left
        (the round ends; the restart policy decides)."""
        pool = self._pool
        if pool is None or gen.cancel_reason is not None or gen.deltas or not _moves(error):
            return False
        model = gen.request.model
        errors = gen.errors if gen.errors is not None else {}
        errors[gen.host] = str(error)
        gen.errors = errors
        failed = pool.get(gen.host)
        if isinstance(error, ModelNotFoundError) and failed is not None:
            failed.models = (failed.models or frozenset()) - {model, f"{model}:latest"}
            self._watch_tags(failed, restart=True)  # its tags were stale: ask again now
        tried = gen.tried if gen.tried is not None else set()
        tried.add(gen.host)
        busy = isinstance(error, BackendResponseError) and error.status_code == 503
        target = pool.choose(model, tried, need_room=busy)
        if target is None:
            gen.tried = None  # the round is over
            return False
        gen.tried = tried
        gen.failovers += 1
        gen.attempt += 1
        self._emit(
            "failover",
            gen,
            from_host=gen.host,
            to_host=target.url,
            reason=str(error),
            attempt=gen.attempt,
            in_flight=target.in_flight,
            capacity=target.capacity,
        )
        self._launch(gen, target)
        return True

    def _release(self, host: PooledHost) -> None:
        assert self._pool is not None
        self._pool.release(host)
        if host.draining and host.in_flight == 0:
            self._host_left(host)

    def _emit_host(self, event: str, host: PooledHost, **fields: Any) -> None:
        """A record of one pooled host: its url, state, in-flight count and capacity."""
        fields.setdefault("state", host.state.value)
        fields.setdefault("in_flight", host.in_flight)
        self.emit_child(
            event,
            actor=f"host-{host.url}",
            kind="host",
            host=host.url,
            capacity=host.capacity,
            **fields,
        )

    def _host_state(self, host: PooledHost, reason: str) -> None:
        """Log a host's state (pool only) and publish the pool's view."""
        self._emit_host("host_state", host, reason=reason)
        if self._pool is not None:
            self._pool.publish()

    def _host_joined(self, host: PooledHost) -> None:
        self._emit_host("host_added", host, weight=host.weight)
        self._watch_tags(host)

    def _host_left(self, host: PooledHost) -> None:
        assert self._pool is not None
        self._pool.discard(host.url)
        for tasks in (self._probes, self._tag_watchers):
            task = tasks.pop(host.url, None)
            if task is not None:
                task.cancel()
        self._breakers.pop(host.url, None)
        self._emit_host("host_removed", host, state="removed", in_flight=0)

    def _watch_tags(self, host: PooledHost, *, restart: bool = False) -> None:
        running = self._tag_watchers.get(host.url)
        if running is not None:
            if not restart:
                return
            running.cancel()
        self._tag_watchers[host.url] = self.actor_loop.spawn(
            self._tags(host.url), name=f"tags-{host.url}"
        )

    async def _tags(self, url: str) -> None:
        """List the host's models now, then every ``tags_every`` s (loop thread)."""
        transport = self.transport_for(url)
        while True:
            try:
                models = await transport.list_models(timeout=self.breaker_policy.probe_timeout)
            except BackendError as exc:
                self.tell_self(TagsRefreshed(url, None, str(exc)))
            else:
                self.tell_self(TagsRefreshed(url, tuple(models)))
            await asyncio.sleep(self._tags_every)

    @handles(TagsRefreshed)
    def _on_tags(self, message: TagsRefreshed) -> None:
        host = None if self._pool is None else self._pool.get(message.host)
        if host is None or message.models is None:  # a host that is down: its breaker's job
            return
        host.models = frozenset(message.models)
        assert self._pool is not None
        self._pool.publish()

    @handles(AddHost)
    def _on_add_host(self, message: AddHost) -> HostView:
        pool = self._pool
        if pool is None:
            raise InvalidInputError(
                "this session was started with one host; hosts can be added to a pool only "
                "(start it with base_url=[...] or a comma-separated OLLAMA_HOST)"
            )
        spec = HostSpec(message.url, message.capacity, message.weight)
        present = pool.get(spec.url)
        if present is not None and not present.draining:
            raise InvalidInputError(f"host {spec.url} is already in the pool")
        if present is not None:  # re-added while draining: it stays, with the new settings
            self._host_left(present)
        host = pool.add(spec)
        self._host_joined(host)
        return host.view()

    @handles(RemoveHost)
    def _on_remove_host(self, message: RemoveHost) -> None:
        pool = self._pool
        host = None if pool is None else pool.get(message.url)
        if host is None or host.draining:
            listed = ", ".join(pool.hosts) if pool is not None else "none (not a pool)"
            raise InvalidInputError(f"host {message.url} is not in the pool (hosts: {listed})")
        host.draining = True
        how = "drain: running attempts finish" if message.drain else "running attempts stopped"
        self._host_state(host, f"removed ({how})")
        if not message.drain:
            error = BackendUnavailableError(
                f"Ollama host {host.url} was removed from the pool (drain=False) during the "
                "generation",
                host=host.url,
            )
            for gen in list(self._generations.values()):
                if gen.slot is not host:
                    continue
                if gen.task is not None and not gen.task.done():
                    gen.evicted = error
                    gen.task.cancel("its host was removed from the pool")
                elif self._unqueue(gen):  # still waiting for a place there: fails over now
                    rid = gen.request.request_id
                    self._on_exited(GeneratorExited(rid, gen.attempt, gen.deltas, error=error))
        if host.in_flight == 0:
            self._host_left(host)

    def _schedule_restart(self, gen: _Generation, delay: float) -> None:
        gen.attempt += 1
        gen.restart_timer = self.actor_loop.loop.call_later(
            delay, self.actor_ref.tell, RestartGenerator(gen.request.request_id, gen.attempt)
        )

    @handles(RestartGenerator)
    def _on_restart(self, message: RestartGenerator) -> None:
        gen = self._generations.get(message.request_id)
        if gen is None or gen.attempt != message.attempt or gen.cancel_reason is not None:
            return
        self._emit("generator_restarted", gen, attempt=gen.attempt)
        self._launch(gen)

    # the generator ---------------------------------------------------------------------------
    def _tell_thunk(self, gen: _Generation, message: Any) -> None:
        """Tell the thunk actor (same loop: handled at once, after the deltas it was told; queued
        behind them once a delta batch had to be queued)."""
        with contextlib.suppress(pykka.ActorDeadError):
            if gen.deltas_queued:
                gen.thunk.tell(message)
            else:
                tell_here(gen.thunk, message)

    def _meta(self, gen: _Generation, final: Any = None) -> GenerationStats:
        ttfc = None if gen.first_delta_at is None else gen.first_delta_at - gen.started_at
        if final is None:  # cancelled or failed: count what we received
            return GenerationStats(
                model=gen.request.model,
                done_reason=None,
                completion_tokens=gen.deltas,
                time_to_first_chunk=ttfc,
                streaming=gen.request.stream,
                attempts=gen.attempt,
            )
        return GenerationStats(
            model=gen.request.model,
            done_reason=final.done_reason,
            prompt_tokens=final.prompt_eval_count,
            completion_tokens=final.eval_count if final.eval_count is not None else gen.deltas,
            total_duration_ns=final.total_duration,
            time_to_first_chunk=ttfc,
            streaming=gen.request.stream,
            # a supervisor on the far side (Ray) counts its own attempts of our last one
            attempts=gen.attempt - 1 + (getattr(final, "attempts", None) or 1),
        )

    def _first_chunk(self, gen: _Generation) -> None:
        """The attempt's first delta arrived (the log's public event name, SPEC §7)."""
        assert gen.first_delta_at is not None
        self._emit("first_chunk", gen, latency=gen.first_delta_at - gen.started_at)

    async def _generate(
        self, gen: _Generation, attempt: int, transport: ChatTransport, place: Ticket | None
    ) -> None:
        """Stream one attempt into the thunk; always ends with a GeneratorExited report.

        Runs as a task on the actor loop. The body between deltas never awaits anything but the
        stream, so a stall is always seen by the transport's stream timeout.
        """
        request = gen.request
        batch = _DeltaBatch(gen, self)
        try:
            if place is None:
                final = await transport.stream_chat(request, batch)
            else:
                admitting = cast("AdmittingTransport", transport)
                final = await admitting.stream_chat(request, batch, place=place)
        except asyncio.CancelledError:
            batch.flush()  # the deltas reach the thunk before _generator_done ends it
            raise
        except BaseException as exc:
            batch.flush()
            error: BaseException = exc
            if not isinstance(exc, BackendError):
                error = BackendError(
                    f"generation {request.request_id} failed unexpectedly: {exc!r}",
                    host=gen.host,
                    model=request.model,
                )
                error.__cause__ = exc
            self._report(GeneratorExited(request.request_id, attempt, gen.deltas, error=error))
            return
        batch.flush()
        meta = self._meta(gen, final)
        self._emit(
            "generation_completed",
            gen,
            chunks=gen.deltas,
            done_reason=meta.done_reason,
            completion_tokens=meta.completion_tokens,
        )
        self._tell_thunk(gen, GenerationFinished(meta))
        self._report(GeneratorExited(request.request_id, attempt, gen.deltas))

    def _report(self, message: GeneratorExited) -> None:
        """A generator's exit, from its task or its done callback (never from a handler of
        this supervisor): handled at once, as the task's last step."""
        with contextlib.suppress(pykka.ActorDeadError):  # stopped: its on_stop ended it all
            tell_here(self.actor_ref, message)


def _moves(error: BaseException) -> bool:
    """True if an attempt that failed with ``error`` before its first delta may move to another
    host of a pool: a transient backend failure (refused, dropped, 5xx, 503 busy), an open
    breaker, or a host that turned out not to have the model."""
    return isinstance(error, BackendUnavailableError | ModelNotFoundError) or (
        isinstance(error, BackendError) and error.transient
    )


def _pool_wide(error: BaseException) -> bool:
    """True if the final error of a pooled generation that delivered nothing is the pool's
    (every host was tried or is down): one ``BackendUnavailableError`` naming them all."""
    return _moves(error) and not isinstance(error, ModelNotFoundError)
