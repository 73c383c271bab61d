"""The stream actor: the engine of one ``stream_with_chunking`` run.

What a run guarantees to its user — gated delivery, what a "fail", an error, a cancel and a retry
do — is the public contract, stated once by the facade (:mod:`mellea_actors.stdlib.streaming`).
This module states the mechanism: the actors and tasks, their messages, who owns which state,
and the order in which things happen. The types it meets the facade with are in
:mod:`mellea_actors.runtime.stream_contract`.

::

    ActorSystem
    └── stream-<first request id>        StreamActor (this module)
        ├── reader task                  reads the attempt's deltas, finds its chunks
        ├── validator-<first id>-0       ValidatorActor (runtime.validator_actor), one per check
        └── validator-<first id>-1       …

Protocol (messages of :mod:`mellea_actors.runtime.messages`). The reader task reads the
attempt's :class:`TextSource` (``astream``: the deltas the thunk buffered — the generation runs
in the generation supervisor and never waits for the stream), feeds the accumulated text to the
:class:`Segmenter` and tells the actor ``ChunksFound`` for every batch of new chunks, then
``SourceEnded`` (after ``segmenter.finish``) or ``SourceFailed``. For every chunk the actor asks
every validator ``ValidateChunk``; a validator answers in chunk order, at its own pace, and its
reply comes back as ``VerdictArrived``. After a natural end every validator is asked
``ValidateFinal`` concurrently (``FinalVerdictArrived``). ``CancelStream`` ends the run; it is
answered once the outcome was published.

Ordering, as the sink sees it:

* Chunk *i* is delivered (``sink.quick_check`` — only with checks — then ``sink.chunk``) once
  every validator answered non-"fail" for it and chunks ``0 … i-1`` were delivered.
* A "fail" — or a fault under the fail-closed policy — on chunk *k* stops the generation in the
  handler that receives it (``system.cancel``, the reader task cancelled); chunks found later
  are never judged. Delivery stops right before the *earliest* chunk that got one, once every
  chunk before it was cleared (validators work in chunk order: this waits at most for the
  slower ones). Then ``sink.failure`` per failing validator (in validator order), the outcome is
  decided, and for a "fail" ``sink.quick_check(k, False, …)`` (validators that had not answered
  reported ``check.unknown``).
* A source failure (backend, segmenter, external cancel) stops the generation if it still runs;
  the chunks found before it are judged and delivered first, then the run ends with the error —
  or, with a retry left and a :func:`retryable` error, the attempt is replaced (below).
* Natural end, once every chunk was delivered: ``sink.streaming_done``, the final validations,
  ``sink.full_validation`` (only with checks), the outcome.
* Winding down (every ending, ``CancelStream`` included): cancel the generation and wait until
  its thunk ended, stop every validator and wait until each stopped (each wait bounded by
  ``stop_timeout``), unlist the actor, then ``sink.finish`` exactly once, answer the
  ``CancelStream`` asks, stop. So when the sink sees the end, no validation code runs and no
  task of this stream is left.

Attempts. Everything that belongs to one attempt — its source, segmenter, checks, validators,
reader task, pending chunks, counters, source state and stop decision — is one :class:`_Attempt`,
created whole when the attempt is installed and never reset. A retry (``RUNNING → RETRYING``)
closes the attempt as a wind-down would (reader, generation, validators), awaits the
``new_attempt`` factory, then — synchronously, so nothing interleaves — installs the new
attempt (chunk indices from 0), logs ``stream_retry`` (``thunk``: the new request id), calls
``sink.retry`` and starts the new validators and reader. Replies and reports of an abandoned
attempt are dropped: a callback forwards a reply only while its attempt is the installed one,
and a handler applies a verdict only if it is the reply the installed attempt waits for. The
actor keeps its id (``stream-<first request id>``) and so do its validators
(``validator-<first request id>-<n>``: a restarted child keeps its name, as in OTP); log
records carry the current attempt's request id as ``thunk``.

Never hang: if the actor is stopped or crashes before it published, or the loop shuts down
under it, the outcome is published at once as an error (``RuntimeClosedError``), the generation
cancelled and the validators told to stop.

Ownership (trio-style): the actor, its attempts, its tasks and every sink call live on the
system's ActorLoop thread; nothing else reads or writes them. The sink is the only way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
from collections.abc import Awaitable, Callable
from typing import Any, cast

import pykka

from mellea_actors.errors import GenerationCancelledError, MelleaActorsError, RuntimeClosedError
from mellea_actors.runtime.actor_base import RuntimeActor, handles
from mellea_actors.runtime.loop import ActorLoop, LoopFuture, ask_async
from mellea_actors.runtime.messages import (
    CancelStream,
    ChunksFound,
    FinalVerdictArrived,
    SourceEnded,
    SourceFailed,
    StopValidation,
    ValidateChunk,
    ValidateFinal,
    VerdictArrived,
)
from mellea_actors.runtime.stream_contract import (
    FaultPolicy,
    OutcomeKind,
    Segmenter,
    StreamAttempt,
    StreamOutcome,
    StreamRuntime,
    StreamSink,
    TextSource,
    ValidationCheck,
    retryable,
)
from mellea_actors.runtime.validator_actor import ValidatorActor, ValidatorError

__all__ = ["StreamActor", "live_stream_actors"]


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def live_stream_actors(system: StreamRuntime) -> dict[str, str]:
    """The stream and validator actors of ``system`` that have not stopped: ``{id: kind}``."""
    return dict(system.stream_actors)


class _Phase(enum.Enum):
    """The phase of a run (``StreamActor._phase``; loop thread only). The only transitions:

    * ``RUNNING → RETRYING`` (:meth:`StreamActor._retry`): the attempt failed transiently and a
      retry is left; every message but ``CancelStream`` is ignored until the next attempt is
      installed;
    * ``RETRYING → RUNNING`` (:meth:`StreamActor._replace_attempt`): the next one is installed;
    * ``RUNNING | RETRYING → ENDING`` (:meth:`StreamActor._end`): the outcome is decided (once);
      winding down;
    * ``ENDING → PUBLISHED`` (:meth:`StreamActor._publish`): ``sink.finish`` was called; the
      actor stops. :meth:`StreamActor._abort` goes there from any phase.
    """

    RUNNING = "running"
    RETRYING = "retrying"
    ENDING = "ending"
    PUBLISHED = "published"


_OVER = (_Phase.ENDING, _Phase.PUBLISHED)


class _Source(enum.Enum):
    """What the reader task reported about an attempt's source (``_Attempt.source_state``)."""

    READING = "reading"  # no SourceEnded / SourceFailed handled yet
    ENDED = "ended"  # SourceEnded: every chunk was found; ``source_text`` is the whole text
    FAILED = "failed"  # SourceFailed: ``source_error`` is set


class _Pending:
    """A found chunk waiting for its verdicts (one ``_Attempt``'s; loop thread only).

    ``replies[v]`` is the future of the ask to validator ``v``: a ``VerdictArrived`` is applied
    only if it carries that very future. ``verdicts[v]`` is set once, ``remaining`` counts the
    validators that have not answered non-"fail" yet.
    """

    __slots__ = ("chunk", "remaining", "replies", "segment", "verdicts")

    def __init__(self, chunk: str, segment: str, validators: int) -> None:
        self.chunk = chunk
        self.segment = segment
        self.verdicts: list[Any] = [None] * validators
        self.replies: list[LoopFuture[Any] | None] = [None] * validators
        self.remaining = validators


class _Attempt:
    """Everything that belongs to one attempt; replaced whole by a retry, never reset.

    Owned by the StreamActor, touched on the loop thread only, by its handlers and tasks. The
    reader task only reads ``source``/``segmenter`` and tells messages; every other field is
    written by handlers (and ``validators``/``reader`` when the attempt is started).
    """

    __slots__ = (
        "checks",
        "delivered",
        "final_replies",
        "finals",
        "finals_left",
        "found",
        "generation_stopped",
        "number",
        "pending",
        "reader",
        "request_id",
        "segmenter",
        "source",
        "source_error",
        "source_state",
        "source_text",
        "stop_at",
        "stop_error",
        "stop_failures",
        "stop_reason",
        "validators",
    )

    def __init__(self, number: int, spec: StreamAttempt) -> None:
        self.number = number  # 1, then 2, 3, … after retries
        self.source: TextSource = spec.source
        self.segmenter: Segmenter = spec.segmenter
        self.checks: tuple[ValidationCheck, ...] = tuple(spec.checks)
        self.request_id: str = spec.source.request_id  # ``thunk`` of the log records
        self.validators: list[pykka.ActorRef[Any]] = []  # one per check, set when started
        self.reader: asyncio.Task[None] | None = None
        self.pending: dict[int, _Pending] = {}  # found, not delivered, by chunk index
        self.found = 0  # chunks found (the next one's index)
        self.delivered = 0  # chunks delivered (the next one to deliver)
        self.source_state = _Source.READING
        self.source_text = ""
        self.source_error: BaseException | None = None
        self.generation_stopped = False  # system.cancel requested / reader cancelled
        # the stop decision: the earliest chunk with a "fail" verdict or a fault
        self.stop_at: int | None = None
        self.stop_reason = ""
        self.stop_error: BaseException | None = None  # the fault, if one counts
        self.stop_failures: list[tuple[int, Any]] = []  # (validator, verdict) on ``stop_at``
        # the final validations (natural end only)
        self.finals: list[Any] = []
        self.final_replies: list[LoopFuture[Any] | None] = []
        self.finals_left = 0


class StreamActor(RuntimeActor):
    """Orchestrates one stream with per-chunk validation; see the module docstring.

    Args:
        actor_loop: ``system.loop``.
        system: what the actor needs from the actor system (cancel, log, id, the registry).
        attempt: the first attempt (its source becomes this actor's to read).
        sink: where results are published.
        validator_timeout: deadline of each check call (None: none).
        on_fault: the validators' fault policy.
        stop_timeout: bound of each wait while winding down.
        max_retries: how many times an attempt that failed with a :func:`retryable` error is
            replaced by a fresh one (0: never).
        new_attempt: the factory of a fresh attempt, ``await new_attempt(n)`` for attempt
            ``n`` (2, 3, …); awaited on the actor loop. Required when ``max_retries > 0``.
    """

    kind = "stream"

    def __init__(
        self,
        actor_loop: ActorLoop,
        *,
        system: StreamRuntime,
        attempt: StreamAttempt,
        sink: StreamSink,
        validator_timeout: float | None,
        on_fault: FaultPolicy = "fail",
        stop_timeout: float = 5.0,
        max_retries: int = 0,
        new_attempt: Callable[[int], Awaitable[StreamAttempt]] | None = None,
    ) -> None:
        if max_retries and new_attempt is None:
            raise ValueError("max_retries > 0 needs a new_attempt factory")
        self.stream_id = attempt.source.request_id
        """The first attempt's request id: names this actor and its validators for good."""
        super().__init__(
            actor_loop, log=system.log, actor_id=f"stream-{self.stream_id}", parent_id=system.id
        )
        self.system = system
        self.sink = sink
        self.validator_timeout = validator_timeout
        self.on_fault: FaultPolicy = on_fault
        self.stop_timeout = stop_timeout
        self.max_retries = max_retries
        self.new_attempt = new_attempt
        # Loop thread only, from on_start on (the constructor runs before the actor is started):
        self._attempt = _Attempt(1, attempt)  # the installed attempt
        self._phase = _Phase.RUNNING
        self._retries_left = max_retries
        self._retrying: asyncio.Task[None] | None = None  # while RETRYING (and winding down)
        self._cancel_waiters: list[asyncio.Future[None]] = []  # answered when PUBLISHED
        self._wind: asyncio.Task[None] | None = None  # the wind-down, once ENDING
        self._guard: asyncio.Task[None] | None = None
        self._life: asyncio.Future[None] | None = None  # resolved when PUBLISHED

    @property
    def thunk_id(self) -> str:
        """The current attempt's request id (``thunk`` of the log records)."""
        return self._attempt.request_id

    @property
    def delivered(self) -> int:
        """Chunks delivered so far (by the current attempt)."""
        return self._attempt.delivered

    @property
    def attempt(self) -> int:
        """The current attempt's number (1, then 2, … after retries)."""
        return self._attempt.number

    # lifecycle -------------------------------------------------------------------------------
    def on_start(self) -> None:
        loop = self.actor_loop.loop
        self.system.stream_actors[self.actor_id] = self.kind
        self.emit(
            "actor_started",
            validators=len(self._attempt.checks),
            policy=self.on_fault,
            max_retries=self.max_retries,
        )
        self._life = loop.create_future()
        self._guard = self.actor_loop.spawn(self._guard_life(), name=f"{self.actor_id}-guard")
        self._start(self._attempt)

    def _start(self, attempt: _Attempt) -> None:
        """Start the attempt's validators and reader."""
        attempt.validators = [
            ValidatorActor.start(
                self.actor_loop,
                check,
                timeout=self.validator_timeout,
                on_fault=self.on_fault,
                log=self.log,
                actor_id=f"validator-{self.stream_id}-{i}",
                parent_id=self.actor_id,
                thunk_id=attempt.request_id,
                registry=self.system.stream_actors,
                stop_timeout=self.stop_timeout,
            )
            for i, check in enumerate(attempt.checks)
        ]
        attempt.reader = self.actor_loop.spawn(self._read(attempt), name=f"{self.actor_id}-reader")

    def on_stop(self) -> None:
        self.system.stream_actors.pop(self.actor_id, None)
        if self._phase is not _Phase.PUBLISHED:
            self._abort(RuntimeClosedError(f"{self} was stopped before the stream ended"))
        self.emit("actor_stopped", delivered=self._attempt.delivered)

    def on_crash(self, exc_info: Any) -> None:
        self.system.stream_actors.pop(self.actor_id, None)
        exc = exc_info[1]
        self.emit("actor_crashed", reason=repr(exc))
        if not isinstance(exc, Exception):  # e.g. a stray CancelledError: not the user's to get
            err = RuntimeClosedError(f"{self} crashed: {exc!r}")
            err.__cause__ = exc
            exc = err
        self._abort(exc)

    # the reader task -------------------------------------------------------------------------
    async def _read(self, attempt: _Attempt) -> None:
        """Read the attempt's deltas, find its chunks, report to the actor. Owns ``text``."""
        source = attempt.source
        segmenter = attempt.segmenter
        tell = self.tell_self
        who = f"stream {self.stream_id}"
        text = ""
        try:
            while True:
                new = await source.astream(who=who)  # the deltas since the last read, joined
                if new:
                    text += new
                    spans = segmenter.feed(text)
                    if spans:
                        tell(ChunksFound(tuple(spans)))
                if source.is_computed():
                    break
            if source.cancelled:
                raise GenerationCancelledError(
                    f"generation {attempt.request_id} was cancelled by someone else before the "
                    "stream ended (was the session closed?)"
                )
            spans = segmenter.finish(text)
            if spans:
                tell(ChunksFound(tuple(spans)))
            tell(SourceEnded(text))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            tell(SourceFailed(exc))
        except BaseException as exc:  # the chunker is user code: contained, whatever it raised
            error = MelleaActorsError(
                f"stream {self.stream_id}: the chunking strategy raised {exc!r}"
            )
            error.__cause__ = exc
            tell(SourceFailed(error))

    # handlers --------------------------------------------------------------------------------
    @handles(ChunksFound)
    def _on_chunks(self, message: ChunksFound) -> None:
        attempt = self._attempt
        if self._phase is not _Phase.RUNNING or attempt.stop_at is not None:
            return  # the generation is being stopped: later chunks are never judged
        validators = attempt.validators
        n = len(validators)
        for chunk, segment in message.spans:
            index = attempt.found
            attempt.found = index + 1
            pending = attempt.pending[index] = _Pending(chunk, segment, n)
            request = ValidateChunk(index, chunk)
            for v, ref in enumerate(validators):
                reply = cast(LoopFuture[Any], ref.ask(request, block=False))
                pending.replies[v] = reply
                reply.add_done_callback(functools.partial(self._verdict_reply, attempt, v, index))
        if n == 0:
            self._advance()

    def _verdict_reply(
        self, attempt: _Attempt, validator: int, index: int, reply: LoopFuture[Any]
    ) -> None:
        # Runs where the reply is set: on the loop thread. Hand it to the mailbox, unless its
        # attempt was abandoned or the run is over.
        if attempt is self._attempt and self._phase is _Phase.RUNNING:
            self.tell_self(VerdictArrived(validator, index, reply))

    @handles(VerdictArrived)
    def _on_verdict(self, message: VerdictArrived) -> None:
        if self._phase is not _Phase.RUNNING:
            return
        attempt = self._attempt
        v = message.validator
        pending = attempt.pending.get(message.index)
        if pending is None or pending.replies[v] is not message.reply:
            return  # delivered already, or the reply of an abandoned attempt
        try:
            verdict = message.reply.get(timeout=0)
        except Exception as exc:
            self._on_stop_verdict(v, message.index, None, self._as_fault(v, exc))
            return
        if attempt.checks[v].is_fail(verdict):
            self._on_stop_verdict(v, message.index, verdict, None)
            return
        pending.verdicts[v] = verdict
        pending.remaining -= 1
        if pending.remaining == 0 and message.index == attempt.delivered:
            self._advance()

    def _as_fault(self, validator: int, exc: BaseException, what: str = "") -> BaseException:
        if isinstance(exc, ValidatorError):
            return exc
        attempt = self._attempt
        err = ValidatorError(
            f"validator {attempt.request_id}-{validator} ({attempt.checks[validator].label}) gave "
            f"no {what or 'verdict'}: {exc!r}"
        )
        err.__cause__ = exc
        return err

    def _on_stop_verdict(
        self, validator: int, index: int, verdict: Any, fault: BaseException | None
    ) -> None:
        """A "fail" verdict, or a fault (fail-closed policy), on chunk ``index``.

        The generation is stopped at once (the latency that matters). Delivery stops right
        before the earliest chunk that got such a verdict: chunks before it are still delivered
        once every validator cleared them, so the outcome does not depend on which validator
        happened to answer first.
        """
        attempt = self._attempt
        check = attempt.checks[validator]
        if fault is None:
            why = getattr(verdict, "reason", None) or "no reason given"
            reason = f"requirement {check.label} failed chunk {index}: {why}"
        else:
            reason = str(fault)
            verdict = check.fail(f"validator fault: {fault}")
        if not attempt.generation_stopped:
            self._stop_generation(attempt, reason)
        stop_at = attempt.stop_at
        if stop_at is not None and index > stop_at:
            return  # judged a chunk that will never be delivered anyway
        if stop_at is None or index < stop_at:
            attempt.stop_at = index
            attempt.stop_reason = reason
            attempt.stop_error = None
            attempt.stop_failures = []
        if fault is not None and attempt.stop_error is None:
            attempt.stop_error = fault
        attempt.stop_failures.append((validator, verdict))
        attempt.pending[index].verdicts[validator] = verdict
        self._advance()

    def _stop_generation(self, attempt: _Attempt, reason: str) -> None:
        attempt.generation_stopped = True
        if attempt.source_state is not _Source.ENDED:
            self.system.cancel(attempt.request_id, reason)
        reader = attempt.reader
        if reader is not None and not reader.done():
            reader.cancel()

    def _advance(self) -> None:
        """Deliver every chunk at the head whose verdicts are all in, in order; then see
        whether the attempt is over."""
        if self._phase in _OVER:
            return
        attempt = self._attempt
        pending = attempt.pending
        sink = self.sink
        judged = bool(attempt.validators)
        stop_at = attempt.stop_at
        while True:
            index = attempt.delivered
            if index == stop_at:
                break
            p = pending.get(index)
            if p is None or p.remaining:
                break
            del pending[index]
            if judged:
                sink.quick_check(index, True, p.verdicts)
            sink.chunk(index, p.chunk, p.segment)
            attempt.delivered = index + 1
        if stop_at is not None:
            if attempt.delivered == stop_at:
                self._finish_stop(attempt, stop_at)
            return
        if attempt.delivered != attempt.found:
            return
        if attempt.source_state is _Source.ENDED:
            self._streaming_done(attempt)
        elif attempt.source_state is _Source.FAILED:
            error = attempt.source_error
            assert error is not None
            if self._retries_left > 0 and retryable(error):
                self._retry(attempt)
                return
            self._end("error", reason=f"the stream failed: {error}", error=error)

    def _finish_stop(self, attempt: _Attempt, index: int) -> None:
        """Every chunk before the failing one was delivered: report the failure and end."""
        for validator, verdict in sorted(attempt.stop_failures, key=lambda item: item[0]):
            self.sink.failure(validator, verdict)
        error = attempt.stop_error
        if error is not None:
            self._end("error", reason=attempt.stop_reason, error=error)
            return
        self._end("failed", reason=attempt.stop_reason)
        results = [
            r
            if r is not None
            else attempt.checks[i].unknown(
                "not judged: the stream stopped when another requirement failed this chunk"
            )
            for i, r in enumerate(attempt.pending[index].verdicts)
        ]
        self.sink.quick_check(index, False, results)

    @handles(SourceEnded)
    def _on_source_ended(self, message: SourceEnded) -> None:
        if self._phase is not _Phase.RUNNING:
            return
        attempt = self._attempt
        attempt.source_state = _Source.ENDED
        attempt.source_text = message.text
        self._advance()

    @handles(SourceFailed)
    def _on_source_failed(self, message: SourceFailed) -> None:
        if self._phase is not _Phase.RUNNING:
            return
        attempt = self._attempt
        attempt.source_state = _Source.FAILED
        attempt.source_error = message.error
        # A segmenter error leaves the generation running: stop it now.
        if not attempt.generation_stopped:
            self._stop_generation(attempt, f"stream failed: {message.error}")
        self._advance()

    def _streaming_done(self, attempt: _Attempt) -> None:
        self.sink.streaming_done(attempt.source_text)
        validators = attempt.validators
        if not validators:
            self._end("completed", reason="the stream ended naturally", success=True)
            return
        attempt.finals = [None] * len(validators)
        attempt.final_replies = [None] * len(validators)
        attempt.finals_left = len(validators)
        request = ValidateFinal()
        for v, ref in enumerate(validators):
            reply = cast(LoopFuture[Any], ref.ask(request, block=False))
            attempt.final_replies[v] = reply
            reply.add_done_callback(functools.partial(self._final_reply, attempt, v))

    def _final_reply(self, attempt: _Attempt, validator: int, reply: LoopFuture[Any]) -> None:
        if attempt is self._attempt and self._phase is _Phase.RUNNING:
            self.tell_self(FinalVerdictArrived(validator, reply))

    @handles(FinalVerdictArrived)
    def _on_final(self, message: FinalVerdictArrived) -> None:
        if self._phase is not _Phase.RUNNING:
            return
        attempt = self._attempt
        v = message.validator
        if v >= len(attempt.final_replies) or attempt.final_replies[v] is not message.reply:
            return  # the reply of an abandoned attempt
        try:
            result = message.reply.get(timeout=0)
        except Exception as exc:
            error = self._as_fault(v, exc, "final validation")
            self._end("error", reason=str(error), error=error)
            return
        attempt.finals[v] = result
        attempt.finals_left -= 1
        if attempt.finals_left:
            return
        checks = attempt.checks
        passed = all(checks[i].final_passed(r) for i, r in enumerate(attempt.finals))
        self.sink.full_validation(passed, attempt.finals)
        self._end(
            "completed",
            reason="the stream ended naturally" + ("" if passed else "; a final validation failed"),
            success=passed,
        )

    @handles(CancelStream)
    def _on_cancel(self, message: CancelStream) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = self.actor_loop.loop.create_future()
        if self._phase is _Phase.PUBLISHED:
            fut.set_result(None)
            return fut
        self._cancel_waiters.append(fut)
        self._end("cancelled", reason=message.reason)
        return fut

    # retry from scratch ----------------------------------------------------------------------
    def _retry(self, attempt: _Attempt) -> None:
        """RUNNING → RETRYING: abandon the attempt (its generation failed transiently) and make
        the next one in a task. Every message but ``CancelStream`` is ignored until then."""
        self._phase = _Phase.RETRYING
        self._retries_left -= 1
        attempt.generation_stopped = True  # its generation is over: it failed
        self._retrying = self.actor_loop.spawn(
            self._replace_attempt(attempt), name=f"{self.actor_id}-retry"
        )

    async def _replace_attempt(self, old: _Attempt) -> None:
        number = old.number + 1
        error = old.source_error
        assert error is not None
        reason = _one_line(error)
        await self._close(old, f"attempt {old.number} abandoned (retrying): {reason}")
        factory = self.new_attempt
        assert factory is not None
        try:
            spec = await factory(number)
        except Exception as exc:
            self._end(
                "error",
                reason=f"could not start attempt {number} after {reason}: {exc!r}",
                error=exc,
            )
            return
        # From here on, synchronous: nothing can interleave before the attempt runs.
        if self._phase is not _Phase.RETRYING:  # defensive: any ending cancels this task
            with contextlib.suppress(Exception):
                self.system.cancel(spec.source.request_id, "the stream ended meanwhile")
            return
        self._attempt = _Attempt(number, spec)
        self.emit(
            "stream_retry",
            reason=reason,
            attempt=number,
            previous=old.request_id,
            retries_left=self._retries_left,
        )
        self.sink.retry(number, reason, spec)
        self._phase = _Phase.RUNNING
        self._start(self._attempt)

    async def _close(self, attempt: _Attempt, reason: str) -> None:
        """Wait for the attempt's reader, cancel its generation and wait until it ended, stop
        its validators and wait until each stopped; each wait bounded by ``stop_timeout``."""
        reader = attempt.reader
        if reader is not None and not reader.done():
            await asyncio.wait({reader}, timeout=self.stop_timeout)
        with contextlib.suppress(Exception):
            await attempt.source.cancel(reason, timeout=self.stop_timeout)
        if attempt.validators:
            stop = StopValidation(reason)
            await asyncio.gather(*(self._stop_validator(r, stop) for r in attempt.validators))

    async def _stop_validator(self, ref: pykka.ActorRef[Any], message: StopValidation) -> None:
        with contextlib.suppress(Exception):
            await ask_async(ref, message, timeout=self.stop_timeout)

    # ending ----------------------------------------------------------------------------------
    def _end(
        self,
        kind: OutcomeKind,
        *,
        reason: str,
        success: bool = False,
        error: BaseException | None = None,
    ) -> None:
        """→ ENDING: decide the outcome (once), stop the generation now, wind down in a task."""
        if self._phase in _OVER:
            return
        self._phase = _Phase.ENDING
        attempt = self._attempt
        if not attempt.generation_stopped:
            self._stop_generation(attempt, reason)
        retrying = self._retrying
        if retrying is not None and retrying is not asyncio.current_task():
            retrying.cancel()
        outcome = StreamOutcome(kind, success and kind == "completed", reason, error)
        if kind != "completed":
            self.emit("stream_stopping", reason=reason, outcome=kind)
        self._wind = self.actor_loop.spawn(
            self._wind_down(outcome), name=f"{self.actor_id}-wind-down"
        )

    async def _wind_down(self, outcome: StreamOutcome) -> None:
        try:
            retrying = self._retrying  # cancelled by _end; let it unwind first
            if retrying is not None and not retrying.done():
                await asyncio.wait({retrying}, timeout=self.stop_timeout)
            await self._close(self._attempt, outcome.reason)
        finally:
            # Unlisted before the consumer can observe the end: "ended" implies "no actor left".
            self.system.stream_actors.pop(self.actor_id, None)
            self._publish(outcome)
            self.stop_now()

    def _publish(self, outcome: StreamOutcome) -> None:
        """→ PUBLISHED (once): ``sink.finish``, then answer the ``CancelStream`` asks."""
        if self._phase is _Phase.PUBLISHED:
            return
        self._phase = _Phase.PUBLISHED
        if self._life is not None and not self._life.done():
            self._life.set_result(None)
        attempt = self._attempt
        self.emit(
            "stream_ended",
            outcome=outcome.kind,
            success=outcome.success,
            reason=outcome.reason,
            delivered=attempt.delivered,
            found=attempt.found,
            attempts=attempt.number,
            error_type=None if outcome.error is None else type(outcome.error).__name__,
        )
        try:
            self.sink.finish(outcome)
        except Exception as exc:  # never lose the cancel waiters because of the sink
            self.emit("stream_sink_failed", reason=repr(exc))
        waiters, self._cancel_waiters = self._cancel_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _abort(self, error: BaseException) -> None:
        """Emergency end, synchronous (stopped, crashed, or the loop is shutting down)."""
        if self._phase is not _Phase.PUBLISHED:
            self._phase = _Phase.ENDING
        attempt = self._attempt
        if attempt.source_state is not _Source.ENDED:
            with contextlib.suppress(Exception):
                self.system.cancel(attempt.request_id, f"stream aborted: {error}")
        for task in (attempt.reader, self._wind, self._retrying):
            if task is not None and not task.done():
                task.cancel()
        for ref in attempt.validators:
            with contextlib.suppress(Exception):
                ref.stop(block=False)
        self._publish(StreamOutcome("error", False, f"stream aborted: {error}", error))
        self.stop_now()

    async def _guard_life(self) -> None:
        """Lives as long as the stream; if the loop cancels it (shutdown), publish an error."""
        life = self._life
        assert life is not None
        try:
            await life
        except asyncio.CancelledError:
            if self._phase is not _Phase.PUBLISHED:
                self._abort(
                    RuntimeClosedError(
                        f"{self}: the runtime stopped (session closed?) before the stream ended"
                    )
                )
            raise
