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

State (``_generations``) is owned by the actor loop thread; generator tasks only report through
messages, so every decision is taken in a handler, one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pykka

from mellea_actors.errors import (
    BackendError,
    BackendUnavailableError,
    CircuitOpenError,
    MelleaActorsError,
)
from mellea_actors.runtime.breaker import BreakerPolicy, CircuitBreaker
from mellea_actors.runtime.loop import ActorLoop, LoopActor
from mellea_actors.runtime.messages import (
    CancelGeneration,
    ChildCrashed,
    ChunkArrived,
    Escalated,
    GenerationCancelled,
    GenerationFailed,
    GenerationFinished,
    GenerationMeta,
    GenerationRequest,
    GeneratorExited,
    HostAnswered,
    RestartGenerator,
    StartGeneration,
)
from mellea_actors.runtime.restart_policy import RestartIntensity, RestartPolicy

if TYPE_CHECKING:
    from mellea_actors.runtime.log import SupervisionLog
    from mellea_actors.transport.ollama_http import OllamaTransport

__all__ = ["GenerationSupervisor"]


@dataclass
class _Generation:
    """The supervisor's record of one request (loop thread only)."""

    request: GenerationRequest
    thunk: pykka.ActorRef[Any]
    attempt: int = 1
    task: asyncio.Task[None] | None = None
    restart_timer: asyncio.TimerHandle | None = None
    cancel_reason: str | None = None
    fail_with: BaseException | None = None
    """When set, the cancel ends the thunk as failed with this error (a crash), not cancelled."""
    chunks: int = 0
    first_chunk_at: float | None = None
    started_at: float = field(default_factory=time.monotonic)


class _ChunkBatch:
    """Gathers the pieces received in one loop tick into one ``ChunkArrived`` (loop thread).

    Several pieces often arrive in one network read; one message for all of them saves a mailbox
    round per piece. ``flush()`` must run before the generator's final message to the thunk.
    """

    __slots__ = ("_at", "_loop", "_scheduled", "_texts", "_thinking", "_thunk")

    def __init__(self, loop: asyncio.AbstractEventLoop, thunk: pykka.ActorRef[Any]) -> None:
        self._loop = loop
        self._thunk = thunk
        self._texts: list[str] = []
        self._thinking: list[str] = []
        self._scheduled = False
        self._at = 0.0

    def add(self, content: str, thinking: str) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._at = time.monotonic()
            self._loop.call_soon(self.flush)
        if content:
            self._texts.append(content)
        if thinking:
            self._thinking.append(thinking)

    def flush(self) -> None:
        self._scheduled = False
        if not self._texts and not self._thinking:
            return
        message = ChunkArrived(tuple(self._texts), "".join(self._thinking), self._at)
        self._texts.clear()
        self._thinking.clear()
        with contextlib.suppress(pykka.ActorDeadError):  # a crashed thunk: reported elsewhere
            self._thunk.tell(message)


class GenerationSupervisor(LoopActor):
    """Runs generators against Ollama; see the module docstring."""

    kind = "generation_supervisor"

    def __init__(
        self,
        actor_loop: ActorLoop,
        *,
        transport_for: Callable[[str], OllamaTransport],
        log: SupervisionLog,
        policy: RestartPolicy | None = None,
        breaker_policy: BreakerPolicy | None = None,
        actor_id: str = "generation-supervisor",
        parent_id: str | None = None,
        parent: pykka.ActorRef[Any] | None = None,
    ) -> None:
        super().__init__(actor_loop)
        self.transport_for = transport_for
        self.log = log
        self.policy = policy or RestartPolicy()
        self.breaker_policy = breaker_policy or BreakerPolicy()
        self.actor_id = actor_id
        self.parent_id = parent_id
        self.parent = parent
        self._intensity = RestartIntensity(self.policy)
        self._generations: dict[str, _Generation] = {}
        self._breakers: dict[str, CircuitBreaker] = {}
        self._probes: dict[str, asyncio.Task[None]] = {}

    def __str__(self) -> str:
        return self.actor_id

    # lifecycle -------------------------------------------------------------------------------
    def on_start(self) -> None:
        self._emit("actor_started")

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
        if self.parent is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                self.parent.tell(ChildCrashed(self.actor_id, self.kind, None, repr(exc_info[1])))

    def on_ask_failure(self, message: Any, exc: BaseException) -> None:
        """The asker got the error and the supervisor lives on; the log still says so."""
        self._emit("ask_failed", reason=f"{type(message).__name__}: {exc!r}")

    def _stop_probes(self) -> None:
        for task in self._probes.values():
            task.cancel()
        self._probes.clear()

    def _emit(self, event: str, gen: _Generation | None = None, **fields: Any) -> None:
        self.log.emit(
            event,
            actor=self.actor_id if gen is None else f"generator-{gen.request.request_id}",
            kind=self.kind if gen is None else "generator",
            parent=self.parent_id if gen is None else self.actor_id,
            thunk=None if gen is None else gen.request.request_id,
            **fields,
        )

    def active(self) -> list[str]:
        """Request ids of the generations under way (for introspection)."""
        return list(self._generations)

    def breakers(self) -> dict[str, str]:
        """The state of each host's circuit breaker (for introspection)."""
        return {host: b.state.value for host, b in self._breakers.items()}

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, StartGeneration):
            return self._on_start_generation(message)
        if isinstance(message, CancelGeneration):
            return self._on_cancel(message)
        if isinstance(message, GeneratorExited):
            return self._on_exited(message)
        if isinstance(message, RestartGenerator):
            return self._on_restart(message)
        if isinstance(message, ChildCrashed):
            return self._on_child_crashed(message)
        if isinstance(message, HostAnswered):
            return self._on_host_answered(message)
        raise TypeError(f"{self} does not understand {type(message).__name__}")

    # handlers --------------------------------------------------------------------------------
    def _on_start_generation(self, message: StartGeneration) -> None:
        request = message.request
        gen = _Generation(request=request, thunk=message.thunk)
        self._generations[request.request_id] = gen
        self._launch(gen)

    def _breaker(self, host: str) -> CircuitBreaker:
        breaker = self._breakers.get(host)
        if breaker is None:
            breaker = self._breakers[host] = CircuitBreaker(host, self.breaker_policy)
        return breaker

    def _launch(self, gen: _Generation) -> None:
        gen.restart_timer = None
        breaker = self._breaker(gen.request.host)
        if breaker.is_open:  # fail fast instead of waiting for a connect timeout
            self._fail(gen, breaker.open_error(gen.request.model))
            return
        self._emit(
            "generation_started",
            gen,
            attempt=gen.attempt,
            model=gen.request.model,
            host=gen.request.host,
        )
        gen.task = self.actor_loop.loop.create_task(
            self._generate(gen, gen.attempt), name=f"generator-{gen.request.request_id}"
        )

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
        # between attempts (waiting for a restart): nothing runs; end it here
        if gen.restart_timer is not None:
            gen.restart_timer.cancel()
        self._generations.pop(gen.request.request_id, None)
        self._end_cancelled(gen)

    def _end_cancelled(self, gen: _Generation) -> None:
        """Tell the thunk its generation was cancelled (or failed, after a crash)."""
        reason = gen.cancel_reason or "cancelled"
        if gen.fail_with is not None:
            self._emit(
                "generation_failed",
                gen,
                reason=reason,
                chunks=gen.chunks,
                error_type=type(gen.fail_with).__name__,
            )
            self._tell_thunk(gen, GenerationFailed(gen.fail_with, self._meta(gen)))
            return
        self._emit("generation_cancelled", gen, reason=reason, chunks=gen.chunks)
        self._tell_thunk(gen, GenerationCancelled(reason, self._meta(gen)))

    def _fail(self, gen: _Generation, error: BaseException, why: str = "") -> None:
        self._generations.pop(gen.request.request_id, None)
        self._emit(
            "generation_failed",
            gen,
            reason=f"{error} {why}".strip(),
            error_type=type(error).__name__,
            attempts=gen.attempt,
            chunks=gen.chunks,
        )
        self._tell_thunk(gen, GenerationFailed(error, self._meta(gen)))

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
        breaker = self._breaker(gen.request.host)
        if error is None:
            if breaker.record_success():
                self._emit_breaker("breaker_closed", breaker, "a generation got through")
            return
        connection_failure = isinstance(error, BackendUnavailableError) and not isinstance(
            error, CircuitOpenError
        )
        if connection_failure and breaker.record_failure(error):
            self._emit_breaker("breaker_opened", breaker, str(error))
            self._start_probe(breaker)

    def _emit_breaker(self, event: str, breaker: CircuitBreaker, reason: str) -> None:
        self.log.emit(
            event,
            actor=f"breaker-{breaker.host}",
            kind="circuit_breaker",
            parent=self.actor_id,
            reason=reason,
            host=breaker.host,
            failures=breaker.consecutive_failures,
        )

    def _start_probe(self, breaker: CircuitBreaker) -> None:
        if breaker.host in self._probes:
            return
        self._probes[breaker.host] = self.actor_loop.loop.create_task(
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
            with contextlib.suppress(pykka.ActorDeadError):
                self.actor_ref.tell(HostAnswered(host))
            return

    def _on_host_answered(self, message: HostAnswered) -> None:
        self._probes.pop(message.host, None)
        breaker = self._breaker(message.host)
        if breaker.record_success():
            self._emit_breaker("breaker_closed", breaker, "/api/version answered")

    def _on_exited(self, message: GeneratorExited) -> None:
        gen = self._generations.get(message.request_id)
        if gen is None or message.attempt != gen.attempt:
            return
        gen.task = None
        error = message.error
        if not message.cancelled:
            self._count_transport_result(gen, error)
        if error is None:  # completed or cancelled: the generator told the thunk already
            self._generations.pop(message.request_id, None)
            return
        restarts = gen.attempt - 1
        if gen.cancel_reason is None and self.policy.should_restart(error, restarts, gen.chunks):
            if self._intensity.record():
                delay = self.policy.backoff(restarts + 1)
                self._emit(
                    "generator_restarting",
                    gen,
                    reason=str(error),
                    attempt=gen.attempt,
                    backoff=delay,
                )
                gen.attempt += 1
                gen.restart_timer = self.actor_loop.loop.call_later(
                    delay,
                    self.actor_ref.tell,
                    RestartGenerator(gen.request.request_id, gen.attempt),
                )
                return
            self._emit("escalated", gen, reason=f"restart intensity exceeded: {error}")
            if self.parent is not None:
                with contextlib.suppress(pykka.ActorDeadError):
                    self.parent.tell(Escalated(self.actor_id, gen.request.request_id, str(error)))
        why = "after text was delivered (not retried)" if gen.chunks else ""
        self._fail(gen, error, why)

    def _on_restart(self, message: RestartGenerator) -> None:
        gen = self._generations.get(message.request_id)
        if gen is None or gen.attempt != message.attempt or gen.cancel_reason is not None:
            return
        self._emit("generator_restarted", gen, attempt=gen.attempt)
        self._launch(gen)

    # the generator ---------------------------------------------------------------------------
    def _tell_thunk(self, gen: _Generation, message: Any) -> None:
        with contextlib.suppress(pykka.ActorDeadError):
            gen.thunk.tell(message)

    def _meta(self, gen: _Generation, final: Any = None) -> GenerationMeta:
        ttfc = None if gen.first_chunk_at is None else gen.first_chunk_at - gen.started_at
        if final is None:  # cancelled or failed: count what we received
            return GenerationMeta(
                model=gen.request.model,
                done_reason=None,
                completion_tokens=gen.chunks,
                time_to_first_chunk=ttfc,
                streaming=gen.request.stream,
                attempts=gen.attempt,
            )
        return GenerationMeta(
            model=gen.request.model,
            done_reason=final.done_reason,
            prompt_tokens=final.prompt_eval_count,
            completion_tokens=final.eval_count if final.eval_count is not None else gen.chunks,
            total_duration_ns=final.total_duration,
            time_to_first_chunk=ttfc,
            streaming=gen.request.stream,
            attempts=gen.attempt,
        )

    async def _generate(self, gen: _Generation, attempt: int) -> None:
        """Stream one attempt into the thunk; always ends with a GeneratorExited report.

        Runs as a task on the actor loop. The body between pieces never awaits anything but the
        stream, so a stall is always seen by the transport's stream timeout.
        """
        request = gen.request
        batch = _ChunkBatch(self.actor_loop.loop, gen.thunk)

        def on_piece(content: str, thinking: str) -> None:
            if gen.chunks == 0:
                gen.first_chunk_at = time.monotonic()
                self._emit("first_chunk", gen, latency=gen.first_chunk_at - gen.started_at)
            gen.chunks += 1
            batch.add(content, thinking)

        try:
            transport = self.transport_for(request.host)
            final = await transport.stream_chat(request, on_piece)
        except asyncio.CancelledError:
            batch.flush()
            # Tell the thunk here, not via the supervisor: the supervisor may be stopping.
            self._end_cancelled(gen)
            self._report(GeneratorExited(request.request_id, attempt, gen.chunks, cancelled=True))
            return
        except BaseException as exc:
            batch.flush()
            error: BaseException = exc
            if not isinstance(exc, BackendError):
                error = BackendError(
                    f"generation {request.request_id} failed unexpectedly: {exc!r}",
                    host=request.host,
                    model=request.model,
                )
                error.__cause__ = exc
            self._report(GeneratorExited(request.request_id, attempt, gen.chunks, error=error))
            return
        batch.flush()
        meta = self._meta(gen, final)
        self._emit(
            "generation_completed",
            gen,
            chunks=gen.chunks,
            done_reason=meta.done_reason,
            completion_tokens=meta.completion_tokens,
        )
        self._tell_thunk(gen, GenerationFinished(meta))
        self._report(GeneratorExited(request.request_id, attempt, gen.chunks))

    def _report(self, message: GeneratorExited) -> None:
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(message)
