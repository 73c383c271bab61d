"""The stream actor: one ``stream_with_chunking`` run — chunking, gated delivery, cancellation.

::

    ActorSystem
    └── stream-<request id>            StreamActor (this module)
        ├── reader task                reads the generation's thunk, splits it into chunks
        ├── validator-<request id>-0   ValidatorActor (runtime.validation), one per requirement
        └── validator-<request id>-1   …

Protocol. The reader task (owned by the StreamActor) reads the thunk of the generation
(``source.astream()``), feeds the growing text to the segmenter and tells the actor
``ChunksFound`` for every batch of new complete chunks, then ``SourceEnded`` (after the
segmenter's flush) or ``SourceFailed``. The generation itself runs in the generation supervisor
and never waits for anyone: the thunk buffers what was generated. For every chunk the actor asks
every validator ``ValidateChunk``; each validator answers in chunk order, at its own pace, and
its reply comes back as ``VerdictArrived``.

Gated delivery. Chunk *i* is delivered (``sink.quick_check`` then ``sink.chunk``) once every
validator answered non-"fail" for it and chunks ``0 … i-1`` were delivered. Without validators a
chunk is delivered as soon as it is found (and no quick check is reported).

A "fail" verdict on chunk *k* stops the generation at once, in the handler that receives
it: ``system.cancel`` (the HTTP stream closes within a millisecond) and the reader is cancelled;
no chunk found later is judged. Delivery stops right before the *earliest* chunk that got a
"fail" (or a fault under the fail-closed policy): chunks ``0 … k-1`` are still delivered once
every validator cleared them (each validator works in chunk order, so this waits at most for
the slower validators to catch up, bounded by their deadline), chunk *k* and everything after it
never are. So the delivered prefix does not depend on which validator answered first. Then the
failing chunk's quick check is reported (``passed=False``; validators that had not answered it
are reported "unknown"), the failure(s) on that chunk are recorded, and the stream winds down;
winding down stops the validators, which cancels whatever they were still judging.

Errors end the run with an error (``sink.finish`` with ``error`` set): a validator fault under
the fail-closed policy (handled like a "fail" on its chunk — same ordering, recorded as a "fail"
of that requirement — but no quick check is reported for it), a validator that stopped, a final
validation that raised, a backend error, a segmenter error (a chunker returning a non-verbatim
chunk), an external cancel of the generation. A backend or segmenter error lets the chunks found
before it finish their validation (bounded by the validators' deadline) and be delivered; the
generation is cancelled at once if it still runs.

After a natural end (every chunk, flushed ones included, delivered): ``sink.streaming_done``,
then every validator is asked ``ValidateFinal`` concurrently, then ``sink.full_validation`` and
the end (success iff every final validation passed).

Winding down (every ending, including ``CancelStream`` from the consumer): cancel the generation
and wait until its thunk has ended, stop every validator and wait until each has stopped (each
wait bounded by ``stop_timeout``), then publish the outcome exactly once (``sink.finish``), answer
the ``CancelStream`` asks, and stop. So when the consumer sees the end, no validation code runs,
the HTTP stream is closed and no task of this stream is left.

Retry from scratch (opt-in, ``max_retries > 0`` with a ``new_attempt`` factory). An attempt
whose generation failed with a *transient* backend error (:func:`retryable`: a ``BackendError``
whose ``transient`` is true — refused or dropped connection, HTTP 5xx), whether or not text was
delivered, is retried while retries are left, exactly where it would otherwise have ended with
that error: after every chunk found before the error was judged and, unless one got a "fail",
delivered (so what attempt *k* delivers does not depend on timing, and a "fail" verdict, which is
a verdict and not an error, always wins and is never retried). Retrying, in a task of this actor
while it ignores every message but ``CancelStream``: wait for the reader, cancel the attempt's
thunk (its generation is already over), stop its validators (their pending work is cancelled;
each wait bounded by ``stop_timeout``), await ``new_attempt(k + 1)`` — a fresh
:class:`StreamAttempt`: a new generation, new checks, a new segmenter — then, synchronously,
install it (chunk indices restart at 0), log ``stream_retry`` (``thunk``: the new request id),
call ``sink.retry(k + 1, reason)``, and start its validators and reader. If the factory raises,
the run ends with that error. Replies of an abandoned attempt's validators are dropped (each
ask is stamped with the attempt's epoch). The stream actor keeps its id (``stream-<first request
id>``) and its validators keep theirs (``validator-<first request id>-<n>``; a restarted child
keeps its name, as in OTP); log records carry the current attempt's request id as ``thunk``.
Any other error — non-transient backend errors (an ``{"error": …}`` line, HTTP 4xx, a stream
timeout, an open circuit breaker), chunker and validator errors, cancels — and the transient
error that finds no retry left end the run as described above.

Never hang: if the actor is stopped or crashes before it published, or the runtime loop shuts
down under it (session closed), the outcome is published at once as an error
(``RuntimeClosedError``), the generation cancelled and the validators told to stop.

Ownership (trio-style): everything here — the actor's state, its tasks, the sink calls — runs on
the system's ActorLoop thread. The sink is the only way out; it must not block.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

import pykka

from mellea_actors.errors import BackendError, GenerationCancelledError, RuntimeClosedError
from mellea_actors.runtime.loop import ActorLoop, LoopActor, LoopFuture, ask_async
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
from mellea_actors.runtime.validator_actor import (
    FaultPolicy,
    ValidationCheck,
    ValidatorActor,
    ValidatorError,
)

if TYPE_CHECKING:
    from mellea_actors.runtime.system import ActorSystem

__all__ = [
    "Segmenter",
    "StreamActor",
    "StreamAttempt",
    "StreamOutcome",
    "StreamSink",
    "TextSource",
    "live_stream_actors",
    "retryable",
]

OutcomeKind = Literal["completed", "failed", "error", "cancelled"]


class TextSource(Protocol):
    """The generation being streamed (a ``ModelOutputThunk``); the stream actor is its reader."""

    @property
    def request_id(self) -> str | None: ...

    @property
    def cancelled(self) -> bool: ...

    def is_computed(self) -> bool: ...

    async def astream(self) -> str: ...

    async def cancel(self, reason: str = ..., timeout: float = ...) -> None: ...


class Segmenter(Protocol):
    """Turns the growing text into new complete chunks (the facade wraps a ChunkingStrategy).

    Both methods return ``(chunk, segment)`` pairs, where ``segment`` is the source text from the
    end of the previous chunk to the end of this one. They raise (``InvalidInputError``) when the
    strategy misbehaves.
    """

    def feed(self, text: str) -> list[tuple[str, str]]: ...

    def finish(self, text: str) -> list[tuple[str, str]]: ...


@dataclass(frozen=True, slots=True)
class StreamOutcome:
    """How a stream ended.

    ``kind``: ``"completed"`` (natural end; ``success`` iff every final validation passed),
    ``"failed"`` (a requirement said "fail"), ``"error"`` (``error`` is set) or ``"cancelled"``
    (by the consumer).
    """

    kind: OutcomeKind
    success: bool
    reason: str
    error: BaseException | None = None


class StreamSink(Protocol):
    """Where the stream actor publishes; every call is made on the actor loop thread, in order.

    ``finish`` is called exactly once, last.
    """

    def quick_check(self, index: int, passed: bool, verdicts: list[Any]) -> None: ...

    def chunk(self, index: int, text: str, segment: str) -> None: ...

    def failure(self, validator: int, verdict: Any) -> None: ...

    def streaming_done(self, text: str) -> None: ...

    def full_validation(self, passed: bool, results: list[Any]) -> None: ...

    def retry(self, attempt: int, reason: str) -> None:
        """Attempt ``attempt`` (2, 3, …) starts from scratch; what was published before belongs
        to an abandoned attempt. Called only with retries enabled, never after ``finish``."""
        ...

    def finish(self, outcome: StreamOutcome) -> None: ...


@dataclass(frozen=True, slots=True)
class StreamAttempt:
    """What one attempt reads and judges with; a retry gets a fresh one from its factory.

    ``source``: the attempt's generation (its thunk); ``segmenter``: a fresh chunker;
    ``checks``: one fresh check per requirement, in requirement order.
    """

    source: TextSource
    segmenter: Segmenter
    checks: Sequence[ValidationCheck]


def retryable(error: BaseException) -> bool:
    """True if a stream that failed with ``error`` may be retried from scratch (opt-in): a
    transient backend error (refused or dropped connection, HTTP 5xx)."""
    return isinstance(error, BackendError) and bool(error.transient)


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


# -- the registry of live stream and validator actors (introspection, tests) -------------------
def _registry_for(system: ActorSystem) -> dict[str, str]:
    return system.stream_actors


def live_stream_actors(system: ActorSystem) -> dict[str, str]:
    """The stream and validator actors of ``system`` that have not stopped: ``{id: kind}``."""
    return dict(system.stream_actors)


class _Pending:
    """A found chunk waiting for its verdicts (loop thread only)."""

    __slots__ = ("chunk", "remaining", "segment", "verdicts")

    def __init__(self, chunk: str, segment: str, validators: int) -> None:
        self.chunk = chunk
        self.segment = segment
        self.verdicts: list[Any] = [None] * validators
        self.remaining = validators


_READING, _ENDED, _FAILED = "reading", "ended", "failed"


class StreamActor(LoopActor):
    """Orchestrates one stream with per-chunk validation; see the module docstring.

    Args:
        actor_loop: ``system.loop``.
        system: the actor system running the generation (cancel, log, id).
        source: the generation's thunk; this actor becomes its (single) reader.
        segmenter: the chunker.
        checks: one check per requirement; each gets its own ValidatorActor.
        sink: where results are published.
        validator_timeout: deadline of each check call (None: none).
        on_fault: the validators' fault policy.
        stop_timeout: bound of each wait while winding down.
        max_retries: how many times a transient backend error may start the stream again from
            scratch (0: never; see the module docstring).
        new_attempt: the factory of a fresh attempt, ``await new_attempt(n)`` for attempt
            ``n`` (2, 3, …); awaited on the actor loop. Required when ``max_retries > 0``.
    """

    kind = "stream"

    def __init__(
        self,
        actor_loop: ActorLoop,
        *,
        system: ActorSystem,
        source: TextSource,
        segmenter: Segmenter,
        checks: list[ValidationCheck],
        sink: StreamSink,
        validator_timeout: float | None,
        on_fault: FaultPolicy = "fail",
        stop_timeout: float = 5.0,
        max_retries: int = 0,
        new_attempt: Callable[[int], Awaitable[StreamAttempt]] | None = None,
    ) -> None:
        super().__init__(actor_loop)
        if max_retries and new_attempt is None:
            raise ValueError("max_retries > 0 needs a new_attempt factory")
        self.system = system
        self.source = source
        self.segmenter = segmenter
        self.checks = list(checks)
        self.sink = sink
        self.validator_timeout = validator_timeout
        self.on_fault: FaultPolicy = on_fault
        self.stop_timeout = stop_timeout
        self.max_retries = max_retries
        self.new_attempt = new_attempt
        self.stream_id = source.request_id
        """The first attempt's request id: names this actor and its validators for good."""
        self.request_id = source.request_id
        """The current attempt's request id (``thunk`` of the log records)."""
        self.actor_id = f"stream-{self.stream_id}"
        self.parent_id = system.id
        self._registry = _registry_for(system)
        # loop thread only, from on_start on:
        self._attempt = 1
        self._epoch = 0  # bumped when an attempt is abandoned: stale validator replies drop
        self._retries_left = max_retries
        self._between = False  # an attempt was abandoned, the next one is not installed yet
        self._retrying: asyncio.Task[None] | None = None
        self._validators: list[pykka.ActorRef[Any]] = []
        self._pending: dict[int, _Pending] = {}
        self._found = 0
        self._next = 0
        self._source_state = _READING
        self._source_text = ""
        self._source_error: BaseException | None = None
        self._generation_stopped = False
        self._stop_at: int | None = None  # the earliest chunk with a fail verdict or a fault
        self._stop_reason = ""
        self._stop_error: BaseException | None = None
        self._stop_failures: list[tuple[int, Any]] = []
        self._finals: list[Any] = []
        self._finals_left = 0
        self._ending = False
        self._outcome: StreamOutcome | None = None
        self._published = False
        self._cancel_waiters: list[asyncio.Future[None]] = []
        self._reader: asyncio.Task[None] | None = None
        self._wind: asyncio.Task[None] | None = None
        self._guard: asyncio.Task[None] | None = None
        self._life: asyncio.Future[None] | None = None
        self._handlers: dict[type, Any] = {
            VerdictArrived: self._on_verdict,
            ChunksFound: self._on_chunks,
            SourceEnded: self._on_source_ended,
            SourceFailed: self._on_source_failed,
            FinalVerdictArrived: self._on_final,
            CancelStream: self._on_cancel,
        }

    def __str__(self) -> str:
        return self.actor_id

    @property
    def delivered(self) -> int:
        """Chunks delivered so far (by the current attempt)."""
        return self._next

    @property
    def attempt(self) -> int:
        """The current attempt's number (1, then 2, … after retries)."""
        return self._attempt

    # lifecycle -------------------------------------------------------------------------------
    def on_start(self) -> None:
        loop = self.actor_loop.loop
        self._registry[self.actor_id] = self.kind
        self._emit(
            "actor_started",
            validators=len(self.checks),
            policy=self.on_fault,
            max_retries=self.max_retries,
        )
        self._life = loop.create_future()
        self._guard = loop.create_task(self._guard_life(), name=f"{self.actor_id}-guard")
        self._start_attempt()

    def _start_attempt(self) -> None:
        """Start the current attempt's validators and reader."""
        self._validators = [
            ValidatorActor.start(
                self.actor_loop,
                check,
                timeout=self.validator_timeout,
                on_fault=self.on_fault,
                log=self.system.log,
                actor_id=f"validator-{self.stream_id}-{i}",
                parent_id=self.actor_id,
                thunk_id=self.request_id,
                registry=self._registry,
                stop_timeout=self.stop_timeout,
            )
            for i, check in enumerate(self.checks)
        ]
        self._reader = self.actor_loop.loop.create_task(
            self._read(), name=f"{self.actor_id}-reader"
        )

    def on_stop(self) -> None:
        self._registry.pop(self.actor_id, None)
        if not self._published:
            self._abort(RuntimeClosedError(f"{self} was stopped before the stream ended"))
        self._emit("actor_stopped", delivered=self._next)

    def on_crash(self, exc_info: Any) -> None:
        self._registry.pop(self.actor_id, None)
        exc = exc_info[1]
        self._emit("actor_crashed", reason=repr(exc))
        if not isinstance(exc, Exception):  # e.g. a stray CancelledError: not the user's to get
            err = RuntimeClosedError(f"{self} crashed: {exc!r}")
            err.__cause__ = exc
            exc = err
        self._abort(exc)

    def _emit(self, event: str, **fields: Any) -> None:
        self.system.log.emit(
            event,
            actor=self.actor_id,
            kind=self.kind,
            parent=self.parent_id,
            thunk=self.request_id,
            **fields,
        )

    def _tell_self(self, message: object) -> None:
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(message)

    def on_receive(self, message: Any) -> Any:
        handler = self._handlers.get(type(message))
        if handler is None:
            raise TypeError(f"{self} does not understand {type(message).__name__}")
        return handler(message)

    # the reader task -------------------------------------------------------------------------
    async def _read(self) -> None:
        """Read the generation, chunk it, report to the actor. Owns ``text`` (local)."""
        source = self.source
        segmenter = self.segmenter
        tell = self._tell_self
        text = ""
        try:
            while True:
                piece = await source.astream()
                if piece:
                    text += piece
                    spans = segmenter.feed(text)
                    if spans:
                        tell(ChunksFound(tuple(spans)))
                if source.is_computed():
                    break
            if source.cancelled:
                raise GenerationCancelledError(
                    f"generation {self.request_id} was cancelled by someone else before the "
                    "stream ended (was the session closed?)"
                )
            spans = segmenter.finish(text)
            if spans:
                tell(ChunksFound(tuple(spans)))
            tell(SourceEnded(text))
        except Exception as exc:
            tell(SourceFailed(exc))

    # handlers --------------------------------------------------------------------------------
    def _on_chunks(self, message: ChunksFound) -> None:
        if self._ending or self._between or self._stop_at is not None:
            return  # the generation is being stopped: later chunks are never judged
        validators = self._validators
        n = len(validators)
        epoch = self._epoch
        for chunk, segment in message.spans:
            index = self._found
            self._found = index + 1
            self._pending[index] = _Pending(chunk, segment, n)
            request = ValidateChunk(index, chunk)
            for v, ref in enumerate(validators):
                reply = cast(LoopFuture[Any], ref.ask(request, block=False))
                reply.add_done_callback(functools.partial(self._verdict_reply, epoch, v, index))
        if n == 0:
            self._advance()

    def _verdict_reply(
        self, epoch: int, validator: int, index: int, reply: LoopFuture[Any]
    ) -> None:
        # Runs where the reply is set: on the loop thread. Hand it to the mailbox, unless it
        # belongs to an abandoned attempt.
        if epoch == self._epoch:
            self._tell_self(VerdictArrived(validator, index, reply))

    def _on_verdict(self, message: VerdictArrived) -> None:
        if self._ending or self._between:
            return
        pending = self._pending.get(message.index)
        if pending is None:
            return
        v = message.validator
        try:
            verdict = message.reply.get(timeout=0)
        except Exception as exc:
            self._on_stop_verdict(v, message.index, None, self._as_fault(v, exc))
            return
        if self.checks[v].is_fail(verdict):
            self._on_stop_verdict(v, message.index, verdict, None)
            return
        pending.verdicts[v] = verdict
        pending.remaining -= 1
        if pending.remaining == 0 and message.index == self._next:
            self._advance()

    def _as_fault(self, validator: int, exc: BaseException) -> BaseException:
        if isinstance(exc, ValidatorError):
            return exc
        err = ValidatorError(
            f"validator {self.request_id}-{validator} ({self.checks[validator].label}) gave no "
            f"verdict: {exc!r}"
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
        check = self.checks[validator]
        if fault is None:
            why = getattr(verdict, "reason", None) or "no reason given"
            reason = f"requirement {check.label} failed chunk {index}: {why}"
        else:
            reason = str(fault)
            verdict = check.fail(f"validator fault: {fault}")
        if not self._generation_stopped:
            self._stop_generation(reason)
        stop_at = self._stop_at
        if stop_at is not None and index > stop_at:
            return  # judged a chunk that will never be delivered anyway
        if stop_at is None or index < stop_at:
            self._stop_at = index
            self._stop_reason = reason
            self._stop_error = None
            self._stop_failures = []
        if fault is not None and self._stop_error is None:
            self._stop_error = fault
        self._stop_failures.append((validator, verdict))
        self._pending[index].verdicts[validator] = verdict
        self._advance()

    def _stop_generation(self, reason: str) -> None:
        self._generation_stopped = True
        if self._source_state != _ENDED and self.request_id is not None:
            self.system.cancel(self.request_id, reason)
        reader = self._reader
        if reader is not None and not reader.done():
            reader.cancel()

    def _advance(self) -> None:
        """Deliver every chunk at the head whose verdicts are all in, in order; then see
        whether the stream is over."""
        if self._ending:
            return
        pending = self._pending
        sink = self.sink
        judged = bool(self._validators)
        stop_at = self._stop_at
        while True:
            index = self._next
            if index == stop_at:
                break
            p = pending.get(index)
            if p is None or p.remaining:
                break
            del pending[index]
            if judged:
                sink.quick_check(index, True, p.verdicts)
            sink.chunk(index, p.chunk, p.segment)
            self._next = index + 1
        if self._ending:
            return
        if stop_at is not None:
            if self._next == stop_at:
                self._finish_stop(stop_at)
            return
        if self._next != self._found:
            return
        if self._source_state == _ENDED:
            self._streaming_done()
        elif self._source_state == _FAILED:
            error = self._source_error
            assert error is not None
            if self._retries_left > 0 and retryable(error):
                self._retry(error)
                return
            self._end("error", reason=f"the stream failed: {error}", error=error)

    def _finish_stop(self, index: int) -> None:
        """Every chunk before the failing one was delivered: report the failure and end."""
        failures = sorted(self._stop_failures, key=lambda item: item[0])
        for validator, verdict in failures:
            self.sink.failure(validator, verdict)
        error = self._stop_error
        if error is not None:
            self._end("error", reason=self._stop_reason, error=error)
            return
        self._end("failed", reason=self._stop_reason)
        results = [
            r
            if r is not None
            else self.checks[i].unknown(
                "not judged: the stream stopped when another requirement failed this chunk"
            )
            for i, r in enumerate(self._pending[index].verdicts)
        ]
        self.sink.quick_check(index, False, results)

    def _on_source_ended(self, message: SourceEnded) -> None:
        if self._ending or self._between:
            return
        self._source_state = _ENDED
        self._source_text = message.text
        self._advance()

    def _on_source_failed(self, message: SourceFailed) -> None:
        if self._ending or self._between:
            return
        self._source_state = _FAILED
        self._source_error = message.error
        # A chunker error leaves the generation running: stop it now.
        if not self._generation_stopped:
            self._stop_generation(f"stream failed: {message.error}")
        self._advance()

    def _streaming_done(self) -> None:
        self.sink.streaming_done(self._source_text)
        validators = self._validators
        if not validators:
            self._end("completed", reason="the stream ended naturally", success=True)
            return
        self._finals = [None] * len(validators)
        self._finals_left = len(validators)
        request = ValidateFinal()
        epoch = self._epoch
        for v, ref in enumerate(validators):
            reply = cast(LoopFuture[Any], ref.ask(request, block=False))
            reply.add_done_callback(functools.partial(self._final_reply, epoch, v))

    def _final_reply(self, epoch: int, validator: int, reply: LoopFuture[Any]) -> None:
        if epoch == self._epoch:
            self._tell_self(FinalVerdictArrived(validator, reply))

    def _on_final(self, message: FinalVerdictArrived) -> None:
        if self._ending or self._between:
            return
        v = message.validator
        try:
            result = message.reply.get(timeout=0)
        except Exception as exc:
            if not isinstance(exc, ValidatorError):
                err = ValidatorError(
                    f"validator {self.request_id}-{v} ({self.checks[v].label}) gave no final "
                    f"validation: {exc!r}"
                )
                err.__cause__ = exc
                exc = err
            self._end("error", reason=str(exc), error=exc)
            return
        self._finals[v] = result
        self._finals_left -= 1
        if self._finals_left:
            return
        passed = all(self.checks[i].final_passed(r) for i, r in enumerate(self._finals))
        self.sink.full_validation(passed, self._finals)
        self._end(
            "completed",
            reason="the stream ended naturally" + ("" if passed else "; a final validation failed"),
            success=passed,
        )

    def _on_cancel(self, message: CancelStream) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = self.actor_loop.loop.create_future()
        if self._published:
            fut.set_result(None)
            return fut
        self._cancel_waiters.append(fut)
        self._end("cancelled", reason=message.reason)
        return fut

    # retry from scratch ----------------------------------------------------------------------
    def _retry(self, error: BaseException) -> None:
        """Abandon the current attempt (its generation failed transiently); start the next one
        in a task. Every message but ``CancelStream`` is ignored until it is installed."""
        self._between = True
        self._epoch += 1
        self._retries_left -= 1
        self._generation_stopped = True
        self._retrying = self.actor_loop.loop.create_task(
            self._next_attempt(error), name=f"{self.actor_id}-retry"
        )

    async def _next_attempt(self, error: BaseException) -> None:
        attempt = self._attempt + 1
        reason = _one_line(error)
        abandoned = f"attempt {self._attempt} abandoned (retrying): {reason}"
        reader = self._reader
        if reader is not None and not reader.done():
            await asyncio.wait({reader}, timeout=self.stop_timeout)
        with contextlib.suppress(Exception):
            await self.source.cancel(abandoned, timeout=self.stop_timeout)
        if self._validators:
            stop = StopValidation(abandoned)
            await asyncio.gather(*(self._stop_validator(ref, stop) for ref in self._validators))
        factory = self.new_attempt
        assert factory is not None
        try:
            new = await factory(attempt)
        except Exception as exc:
            self._between = False
            self._end(
                "error",
                reason=f"could not start attempt {attempt} after {reason}: {exc!r}",
                error=exc,
            )
            return
        # From here on, synchronous: nothing can interleave before the attempt runs.
        if self._ending:  # defensive: the task is cancelled by any ending
            with contextlib.suppress(Exception):
                if new.source.request_id is not None:
                    self.system.cancel(new.source.request_id, "the stream ended meanwhile")
            return
        previous = self.request_id
        self.source = new.source
        self.segmenter = new.segmenter
        self.checks = list(new.checks)
        self.request_id = new.source.request_id
        self._attempt = attempt
        self._pending = {}
        self._found = 0
        self._next = 0
        self._source_state = _READING
        self._source_text = ""
        self._source_error = None
        self._generation_stopped = False
        self._emit(
            "stream_retry",
            reason=reason,
            attempt=attempt,
            previous=previous,
            retries_left=self._retries_left,
        )
        self.sink.retry(attempt, reason)
        self._between = False
        self._start_attempt()

    # ending ----------------------------------------------------------------------------------
    def _end(
        self,
        kind: OutcomeKind,
        *,
        reason: str,
        success: bool = False,
        error: BaseException | None = None,
    ) -> None:
        """Decide the outcome (once), stop the generation now, wind down in a task."""
        if self._ending:
            return
        self._ending = True
        if not self._generation_stopped:
            self._stop_generation(reason)
        retrying = self._retrying
        if retrying is not None and retrying is not asyncio.current_task():
            retrying.cancel()
        self._outcome = StreamOutcome(kind, success and kind == "completed", reason, error)
        if kind != "completed":
            self._emit("stream_stopping", reason=reason, outcome=kind)
        self._wind = self.actor_loop.loop.create_task(
            self._wind_down(), name=f"{self.actor_id}-wind-down"
        )

    async def _wind_down(self) -> None:
        outcome = self._outcome
        assert outcome is not None
        try:
            retrying = self._retrying  # cancelled by _end; let it unwind first
            if retrying is not None and not retrying.done():
                await asyncio.wait({retrying}, timeout=self.stop_timeout)
            reader = self._reader
            if reader is not None and not reader.done():
                await asyncio.wait({reader}, timeout=self.stop_timeout)
            with contextlib.suppress(Exception):
                await self.source.cancel(outcome.reason, timeout=self.stop_timeout)
            if self._validators:
                stop = StopValidation(outcome.reason)
                await asyncio.gather(*(self._stop_validator(ref, stop) for ref in self._validators))
        finally:
            # Unlisted before the consumer can observe the end: "ended" implies "no actor left".
            self._registry.pop(self.actor_id, None)
            self._publish(outcome)
            self.stop_now()

    async def _stop_validator(self, ref: pykka.ActorRef[Any], message: StopValidation) -> None:
        with contextlib.suppress(Exception):
            await ask_async(ref, message, timeout=self.stop_timeout)

    def _publish(self, outcome: StreamOutcome) -> None:
        if self._published:
            return
        self._published = True
        if self._life is not None and not self._life.done():
            self._life.set_result(None)
        self._emit(
            "stream_ended",
            outcome=outcome.kind,
            success=outcome.success,
            reason=outcome.reason,
            delivered=self._next,
            found=self._found,
            attempts=self._attempt,
            error_type=None if outcome.error is None else type(outcome.error).__name__,
        )
        try:
            self.sink.finish(outcome)
        except Exception as exc:  # never lose the cancel waiters because of the sink
            self._emit("stream_sink_failed", reason=repr(exc))
        waiters, self._cancel_waiters = self._cancel_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _abort(self, error: BaseException) -> None:
        """Emergency end, synchronous (stopped, crashed, or the loop is shutting down)."""
        self._ending = True
        if self._source_state != _ENDED and self.request_id is not None:
            with contextlib.suppress(Exception):
                self.system.cancel(self.request_id, f"stream aborted: {error}")
        for task in (self._reader, self._wind, self._retrying):
            if task is not None and not task.done():
                task.cancel()
        for ref in self._validators:
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
            if not self._published:
                self._abort(
                    RuntimeClosedError(
                        f"{self}: the runtime stopped (session closed?) before the stream ended"
                    )
                )
            raise
