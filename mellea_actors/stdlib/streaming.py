"""Streaming generation with per-chunk validation (Mellea 0.7.0's ``mellea.stdlib.streaming``).

:func:`stream_with_chunking` starts a streamed generation and returns a
:class:`StreamChunkingResult` at once. The work runs on the session's actor runtime: a stream
actor (:mod:`mellea_actors.runtime.stream_actor`) reads the generation, splits it into chunks with
a :class:`ChunkingStrategy`, and has one validator actor per requirement (in
:mod:`mellea_actors.runtime.validator_actor`) judge every chunk with ``stream_validate``. This
module is the thin public face: arguments, the requirement adapter, the result and its events.

Semantics, precisely
--------------------
* **Isolation.** Every validator works on its own ``copy.deepcopy`` of its requirement, made
  before any request is sent (a requirement that cannot be deep-copied raises
  ``InvalidInputError`` and nothing starts). The caller's objects are never touched; two streams
  never share validator state. ``streaming_failures`` holds the failing validator's copy (its
  state at the failure), as Mellea does.
* **Parallelism.** Validators run concurrently with each other and with the generation; each
  sees its chunks in order, one at a time. The generation never waits for them: a slow
  validator delays *delivery*, not generation.
* **Gated delivery.** A chunk reaches :meth:`StreamChunkingResult.astream` (and a
  :class:`ChunkEvent`) only after every validator answered non-"fail" for it, in chunk order.
* **A "fail"** on chunk ``k`` (0-based) cancels the generation at once (the HTTP stream to
  Ollama is closed; no later chunk is judged) and nothing from chunk ``k`` on is ever delivered,
  even text already generated. Chunks ``0 … k-1`` are delivered as soon as every validator
  cleared them (a slower validator may still be catching up; it is bounded by its deadline), so
  exactly ``k`` chunks are delivered whichever validator answered first. Then the validators are
  stopped (their pending work is cancelled), and the failure is recorded. If several chunks got a
  "fail", the earliest one counts.
* **Natural end.** The chunker's trailing fragment (``flush``) is validated and gated like any
  chunk; then ``validate()`` is called once on every requirement's copy (also those that said
  "pass"), concurrently; results in ``final_validations`` (requirement order).
* **Faults** (policy ``validator_failure``). A validator that raises, answers with something
  that is not a ``PartialValidationResult`` (``InvalidVerdictError``, a ``ValueError``), or misses
  its deadline (``validator_timeout`` seconds per call; ``ValidatorTimeoutError``) is logged as
  ``validator_failed`` in the supervision log, and then

  - ``"fail"`` (default, fail-closed): the fault counts as a "fail" of that requirement (an entry
    in ``streaming_failures``) *and* is an error of the run: generation cancelled,
    :class:`ErrorEvent`, ``CompletedEvent(success=False)``, ``acomplete()`` raises the
    ``ValidatorError``;
  - ``"unknown"``: the verdict is replaced by ``PartialValidationResult("unknown")`` (reason
    names the fault) and the stream goes on; a final ``validate()`` that faults gives a failed
    ``ValidationResult`` (a final result has no "unknown").

  A backend error mid-stream, a chunker that returns a chunk that is not the next verbatim piece
  of the text, or the session closing under the stream are errors too (``ErrorEvent``); chunks
  found before the error are still validated and delivered, and ``full_text`` keeps them.
* **Events**, in order: per delivered chunk ``QuickCheckEvent`` (only with requirements) then
  ``ChunkEvent``; natural end: ``StreamingDoneEvent``, ``FullValidationEvent`` (only with
  requirements), ``CompletedEvent(success=…)``; a fail: ``QuickCheckEvent(passed=False)``,
  ``CompletedEvent(success=False)``; an error: ``ErrorEvent``, ``CompletedEvent(success=False)``;
  a cancel by the consumer: ``CompletedEvent(success=False)``; a retry (opt-in, below): the
  abandoned attempt's events, ``RetryEvent``, then the new attempt's events from chunk 0.
  ``CompletedEvent`` is always last.
* **Consumer cancel.** :meth:`StreamChunkingResult.cancel` and leaving ``async with result:``
  before the end cancel the generation and the validators and wait (bounded) until both stopped.
  Leaving ``astream()``/``events()`` early does *not* cancel (they are independent views).
* **Retry from scratch** (opt-in: ``max_retries=n``; default 0, a single attempt as in Mellea).
  Before any text arrives, the generation supervisor already restarts transient transport
  failures, transparently. After text was delivered, a failure is never retried silently; with
  ``max_retries=n > 0``, an attempt ``k`` whose generation fails with a *transient* backend error
  (``isinstance(e, BackendError) and e.transient``: refused or dropped connection, HTTP 5xx),
  whether or not text was delivered, while fewer than ``n`` retries were used, is retried exactly
  where it would otherwise have ended with that error — after the chunks found before the error
  were judged and delivered as above:

  - the attempt is wound down: its generation is over, its validators are stopped (pending work
    cancelled);
  - ``RetryEvent(attempt=k+1, reason=<the error's type and message, one line>)`` is emitted: the
    signal that every chunk delivered so far belongs to an abandoned attempt;
  - attempt ``k+1`` starts from scratch: a new generation of the same action, context and model
    options; new validators on fresh deep copies of the requirements *as they were when
    ``stream_with_chunking`` was called* (copies taken then, before any request); a fresh chunker
    (a new instance for an alias, a ``copy.deepcopy`` — also taken at the call — of a
    :class:`ChunkingStrategy` instance); ``chunk_index`` from 0; every later event carries
    ``attempt=k+1``; ``stream_retry`` is logged (the stream actor, ``thunk`` = the new request
    id, the reason, the attempt). The new attempt starts at once (no backoff of its own; its
    generation gets the supervisor's pre-chunk restarts and the host's circuit breaker like any
    other). If it cannot be started (e.g. the session was closed), that error ends the run.

  Never retried: a non-transient error (an ``{"error": …}`` line, HTTP 4xx, a stream timeout, an
  open circuit breaker, a validator fault, a chunker error, the session closing) and a "fail"
  verdict (a verdict, not an error). When the retries are exhausted, the last error ends the run
  (``ErrorEvent``, ``CompletedEvent(success=False)``). ``full_text``, ``as_thunk``,
  ``streaming_failures`` and ``final_validations`` describe the current (in the end: the final)
  attempt only; ``CompletedEvent.attempts_used`` counts the attempts made; ``request_id`` stays
  the first attempt's id and ``request_ids`` lists every attempt's. ``astream()`` is unchanged but
  cannot tell attempts apart: with retries enabled, its consumer may get the text of an abandoned
  attempt, then the new attempt's chunks; ``events()`` is the view that tells (``RetryEvent``).

Threads and loops: the result may be consumed from any event loop on any thread (typically the
caller's ``asyncio.run`` loop, while the runtime runs on its own loop thread). The runtime is the
only writer of the result's state; the consumer's waits are woken with ``call_soon_threadsafe``
and are all cancellable; ``acomplete``/``cancel`` accept timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

import pykka

from mellea_actors.backends.model_options import ModelOption
from mellea_actors.core.cblock import CBlock
from mellea_actors.core.model_output import ModelOutputThunk
from mellea_actors.core.requirement import (
    PartialValidationResult,
    Requirement,
    ValidationResult,
    reqify,
)
from mellea_actors.errors import (
    AskTimeoutError,
    InvalidInputError,
    RuntimeClosedError,
    SingleReaderError,
)
from mellea_actors.runtime.loop import ask_async
from mellea_actors.runtime.messages import CancelStream
from mellea_actors.runtime.stream_actor import (
    StreamActor,
    StreamAttempt,
    StreamOutcome,
    live_stream_actors,
)
from mellea_actors.runtime.system import ActorSystem
from mellea_actors.runtime.validator_actor import (
    FAULT_POLICIES,
    InvalidVerdictError,
    ValidatorError,
    ValidatorTimeoutError,
)
from mellea_actors.stdlib.chunking import (
    ChunkingStrategy,
    ChunkTracker,
    ParagraphChunker,
    SentenceChunker,
    WordChunker,
    resolve_chunking,
    validate_chunks,
)

if TYPE_CHECKING:
    from mellea_actors.core.backend import Backend
    from mellea_actors.core.context_chain import Context

__all__ = [
    "DEFAULT_VALIDATOR_TIMEOUT",
    "ChunkEvent",
    "ChunkingStrategy",
    "CompletedEvent",
    "ErrorEvent",
    "FullValidationEvent",
    "InvalidVerdictError",
    "ParagraphChunker",
    "QuickCheckEvent",
    "RetryEvent",
    "SentenceChunker",
    "StreamChunkingResult",
    "StreamEvent",
    "StreamingDoneEvent",
    "ValidatorError",
    "ValidatorTimeoutError",
    "WordChunker",
    "live_stream_actors",
    "stream_with_chunking",
]

#: Default deadline of one ``stream_validate``/``validate`` call, in seconds.
DEFAULT_VALIDATOR_TIMEOUT = 30.0

T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StreamEvent:
    """Base class of the events of :meth:`StreamChunkingResult.events`.

    ``timestamp`` (Unix time, seconds) is set automatically when the event is created; it is not
    an ``__init__`` argument.
    """

    timestamp: float = field(default_factory=time.time, init=False)


@dataclass(frozen=True, slots=True)
class ChunkEvent(StreamEvent):
    """A chunk was delivered (every requirement answered non-"fail" for it).

    Args:
        text: the chunk.
        chunk_index: its 0-based position in the attempt's output.
        attempt: the attempt number (1; 2, 3, … after retries, see :class:`RetryEvent`).
    """

    text: str
    chunk_index: int
    attempt: int


@dataclass(frozen=True, slots=True)
class QuickCheckEvent(StreamEvent):
    """The per-chunk verdicts of every requirement (only emitted with requirements).

    Args:
        chunk_index: the chunk judged.
        attempt: the attempt number.
        passed: True if no requirement answered "fail".
        results: one ``PartialValidationResult`` per requirement, in requirement order (on a
            fail, requirements that had not answered yet are reported "unknown").
    """

    chunk_index: int
    attempt: int
    passed: bool
    results: list[PartialValidationResult]


@dataclass(frozen=True, slots=True)
class StreamingDoneEvent(StreamEvent):
    """The stream ended naturally and every chunk (flushed ones too) was delivered.

    Args:
        attempt: the attempt number.
        full_text: the whole generated text (of this attempt).
    """

    attempt: int
    full_text: str


@dataclass(frozen=True, slots=True)
class FullValidationEvent(StreamEvent):
    """The final ``validate()`` calls finished (only emitted with requirements).

    Args:
        attempt: the attempt number.
        passed: True if every final validation passed.
        results: one ``ValidationResult`` per requirement, in requirement order.
    """

    attempt: int
    passed: bool
    results: list[ValidationResult]


@dataclass(frozen=True, slots=True)
class RetryEvent(StreamEvent):
    """The previous attempt was abandoned and attempt ``attempt`` starts from scratch.

    Only with ``stream_with_chunking(..., max_retries=n)``, ``n > 0``, after a transient backend
    error (see the module docstring). Every chunk delivered before it belongs to the abandoned
    attempt; every later event carries ``attempt`` and chunk indices restart at 0.

    Args:
        attempt: the attempt about to start (2, 3, …).
        reason: the error that ended the previous attempt, on one line (its type and message).
    """

    attempt: int
    reason: str


@dataclass(frozen=True, slots=True)
class CompletedEvent(StreamEvent):
    """The run is over; always the last event.

    Args:
        success: ``result.completed``: natural end, no "fail", no error, every final
            validation passed.
        full_text: ``result.full_text`` (of the final attempt).
        attempts_used: the attempts made (1 + the retries).
    """

    success: bool
    full_text: str
    attempts_used: int


@dataclass(frozen=True, slots=True)
class ErrorEvent(StreamEvent):
    """The run failed with an exception (backend, chunker, validator, runtime).

    Args:
        exception_type: the exception's class name (e.g. ``"ValidatorTimeoutError"``).
        detail: ``str()`` of the exception.
    """

    exception_type: str
    detail: str


# --------------------------------------------------------------------------------------------
# Cross-thread plumbing (producer: the runtime's loop thread; consumer: any loop)
# --------------------------------------------------------------------------------------------
def _wake(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[None]) -> None:
    def resolve() -> None:
        if not fut.done():
            fut.set_result(None)

    with contextlib.suppress(RuntimeError):  # the consumer's loop is closed: nobody to wake
        loop.call_soon_threadsafe(resolve)


class _Channel(Generic[T]):
    """An unbounded FIFO: one producer thread, one consumer coroutine on any loop.

    ``put``/``close`` never block. ``get`` waits (cancellably; nothing is lost by a cancel) and
    raises ``StopAsyncIteration`` once the channel is closed and drained; a second coroutine
    calling ``get`` while one waits gets ``SingleReaderError`` at once (never a lost wake-up).
    """

    __slots__ = ("_closed", "_items", "_lock", "_waiter")

    def __init__(self) -> None:
        self._items: deque[T] = deque()
        self._closed = False
        self._lock = threading.Lock()
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None

    def put(self, item: T) -> None:
        with self._lock:
            self._items.append(item)
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            _wake(*waiter)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            _wake(*waiter)

    async def get(self) -> T:
        while True:
            with self._lock:
                if self._items:
                    return self._items.popleft()
                if self._closed:
                    raise StopAsyncIteration
                if self._waiter is not None and not self._waiter[1].done():
                    raise SingleReaderError(
                        "two coroutines are iterating the same events()/astream() iterator at "
                        "once; each has a single consumer"
                    )
                loop = asyncio.get_running_loop()
                fut: asyncio.Future[None] = loop.create_future()
                self._waiter = (loop, fut)
            try:
                await fut
            finally:
                with self._lock:
                    if self._waiter is not None and self._waiter[1] is fut:
                        self._waiter = None


class _Signal:
    """A one-shot flag settable from one thread and awaitable from any loop (or thread)."""

    __slots__ = ("_event", "_lock", "_waiters")

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def set(self) -> None:
        with self._lock:
            self._event.set()
            waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            _wake(*waiter)

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        if self._event.is_set():
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._event.is_set():
                return
            entry = (loop, fut)
            self._waiters.append(entry)
        try:
            await fut
        finally:
            with self._lock:
                if entry in self._waiters:
                    self._waiters.remove(entry)

    def wait_sync(self, timeout: float | None) -> bool:
        return self._event.wait(timeout)


class _ChannelIterator(Generic[T]):
    """The async iterator returned by ``events()``/``astream()`` (single consumer)."""

    __slots__ = ("_channel", "_on_end")

    def __init__(self, channel: _Channel[T], on_end: Callable[[], None] | None = None) -> None:
        self._channel = channel
        self._on_end = on_end

    def __aiter__(self) -> _ChannelIterator[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self._channel.get()
        except StopAsyncIteration:
            on_end, self._on_end = self._on_end, None
            if on_end is not None:
                on_end()
            raise


# --------------------------------------------------------------------------------------------
# Adapters handed to the runtime
# --------------------------------------------------------------------------------------------
def _label(requirement: Requirement) -> str:
    name = type(requirement).__name__
    description = getattr(requirement, "description", None)
    if isinstance(description, str) and description:
        short = description if len(description) <= 60 else description[:59] + "…"
        return f"{name}({short!r})"
    return name


class _RequirementCheck:
    """A requirement copy as a runtime ``ValidationCheck`` (used on the actor loop only)."""

    __slots__ = ("backend", "ctx", "label", "requirement")

    def __init__(self, requirement: Requirement, backend: Backend, ctx: Context) -> None:
        self.requirement = requirement
        self.backend = backend
        self.ctx = ctx
        self.label = _label(requirement)

    async def check_chunk(self, index: int, text: str) -> PartialValidationResult:
        result: Any = self.requirement.stream_validate(text, backend=self.backend, ctx=self.ctx)
        if inspect.isawaitable(result):
            result = await result
        if not isinstance(result, PartialValidationResult):
            raise InvalidVerdictError(
                f"{self.label}.stream_validate() returned {type(result).__name__} {result!r} for "
                f"chunk {index}; expected a PartialValidationResult('pass' | 'fail' | 'unknown')"
            )
        return result

    async def check_final(self) -> ValidationResult:
        result: Any = self.requirement.validate(self.backend, self.ctx)
        if inspect.isawaitable(result):
            result = await result
        if not isinstance(result, ValidationResult):
            raise InvalidVerdictError(
                f"{self.label}.validate() returned {type(result).__name__} {result!r}; "
                "expected a ValidationResult"
            )
        return result

    def is_fail(self, verdict: PartialValidationResult) -> bool:
        return verdict.success == "fail"

    def final_passed(self, result: ValidationResult) -> bool:
        return result.as_bool()

    def unknown(self, reason: str) -> PartialValidationResult:
        return PartialValidationResult("unknown", reason=reason)

    def fail(self, reason: str) -> PartialValidationResult:
        return PartialValidationResult("fail", reason=reason)

    def final_failed(self, reason: str) -> ValidationResult:
        return ValidationResult(False, reason=reason)


class _Segmenter:
    """A ChunkingStrategy as a runtime ``Segmenter``: new chunks with their source segments.

    Used by the stream's reader task only. Raises ``InvalidInputError`` (naming the strategy) for
    a chunk that is not the next verbatim piece of the text.
    """

    __slots__ = ("_end", "_strategy", "_tracker")

    def __init__(self, strategy: ChunkingStrategy) -> None:
        self._strategy = strategy
        self._tracker = ChunkTracker(strategy)
        self._end = 0

    def feed(self, text: str) -> list[tuple[str, str]]:
        chunks = self._tracker.feed(text)
        return self._spans(text, chunks, "split") if chunks else []

    def finish(self, text: str) -> list[tuple[str, str]]:
        chunks = self._tracker.finish(text)
        return self._spans(text, chunks, "flush") if chunks else []

    def _spans(self, text: str, chunks: Sequence[str], method: str) -> list[tuple[str, str]]:
        spans: list[tuple[str, str]] = []
        pos = self._end
        for chunk in chunks:
            end = validate_chunks(text, pos, (chunk,), strategy=self._strategy, method=method)
            spans.append((chunk, text[pos:end]))
            pos = end
        self._end = pos
        return spans


# --------------------------------------------------------------------------------------------
# The result
# --------------------------------------------------------------------------------------------
class _ResultSink:
    """The runtime's ``StreamSink`` for one result; every call comes from the actor loop."""

    __slots__ = ("_result",)

    def __init__(self, result: StreamChunkingResult) -> None:
        self._result = result

    def quick_check(self, index: int, passed: bool, verdicts: list[Any]) -> None:
        r = self._result
        r._events.put(QuickCheckEvent(index, r._attempt, passed, verdicts))

    def chunk(self, index: int, text: str, segment: str) -> None:
        r = self._result
        r._segments.append(segment)
        r._chunks.put(text)
        r._events.put(ChunkEvent(text, index, r._attempt))

    def failure(self, validator: int, verdict: Any) -> None:
        r = self._result
        r._failures.append((r._requirements[validator], verdict))

    def streaming_done(self, text: str) -> None:
        r = self._result
        r._natural_text = text
        r._events.put(StreamingDoneEvent(r._attempt, text))

    def full_validation(self, passed: bool, results: list[Any]) -> None:
        r = self._result
        r._final = list(results)
        r._events.put(FullValidationEvent(r._attempt, passed, list(results)))

    def retry(self, attempt: int, reason: str) -> None:
        r = self._result
        staged, r._staged = r._staged, None
        assert staged is not None and staged[0] == attempt
        _, mot, ctx, copies = staged
        r._mot = mot
        r._ctx = ctx
        r._requirements = copies
        r._attempt = attempt
        r._segments = []  # a new list: full_text's cache is keyed by the list
        r._natural_text = None
        r._failures = []
        r._final = []
        with r._lock:
            r._request_ids.append(mot.request_id)
        r._events.put(RetryEvent(attempt, reason))

    def finish(self, outcome: StreamOutcome) -> None:
        r = self._result
        r._outcome = outcome
        r._error = outcome.error
        r._completed = outcome.kind == "completed" and outcome.success
        if outcome.error is not None:
            r._events.put(ErrorEvent(type(outcome.error).__name__, str(outcome.error)))
        r._events.put(CompletedEvent(r._completed, r.full_text, r._attempt))
        r._events.close()
        r._chunks.close()
        r._done.set()


class StreamChunkingResult:
    """The handle on one :func:`stream_with_chunking` run (see the module docstring).

    Created by :func:`stream_with_chunking` only. The runtime writes its state on its loop
    thread; every accessor is safe from any thread, and the async methods may be awaited from
    any event loop.
    """

    def __init__(
        self,
        mot: ModelOutputThunk[Any],
        ctx: Context,
        requirements: list[Requirement],
    ) -> None:
        self._mot = mot  # the current attempt's generation
        self._ctx = ctx  # the current attempt's context (after the generation)
        self._requirements = requirements  # the current validators' copies
        self._request_id = mot.request_id  # the first attempt's
        self._request_ids: list[str | None] = [mot.request_id]
        self._attempt = 1
        # the next attempt's (attempt, mot, ctx, copies), staged by its factory until installed:
        self._staged: tuple[int, ModelOutputThunk[Any], Context, list[Requirement]] | None = None
        self._events: _Channel[StreamEvent] = _Channel()
        self._chunks: _Channel[str] = _Channel()
        self._done = _Signal()
        self._lock = threading.Lock()
        self._events_taken = False
        self._chunks_taken = False
        self._segments: list[str] = []  # the attempt's delivered segments, append-only
        self._natural_text: str | None = None
        self._full_cache: tuple[list[str], int, str] | None = None
        self._failures: list[tuple[Requirement, PartialValidationResult]] = []
        self._final: list[ValidationResult] = []
        self._completed = False
        self._outcome: StreamOutcome | None = None
        self._error: BaseException | None = None
        self._surfaced = False
        self._thunk: ModelOutputThunk[str] | None = None
        self._actor: pykka.ActorRef[Any] | None = None
        self._sink = _ResultSink(self)

    # -- consuming ---------------------------------------------------------------------------
    def events(self) -> _ChannelIterator[StreamEvent]:
        """Async iterator over the typed events, ending after :class:`CompletedEvent`.

        Single consumer: a second call raises :class:`SingleReaderError` at once. Independent of
        :meth:`astream` (both may be consumed concurrently, or only one of them). Leaving the
        iteration early does not cancel the stream.
        """
        with self._lock:
            if self._events_taken:
                raise SingleReaderError(
                    f"events() of stream {self.request_id} was already called; it has a single "
                    "consumer (use astream() for a second view of the chunks)"
                )
            self._events_taken = True
        return _ChannelIterator(self._events)

    def astream(self) -> _ChannelIterator[str]:
        """Async iterator over the validated chunk texts, in order.

        Ends when the run ends; if the run failed with an error (backend, chunker, validator
        fault), the error is raised after the last delivered chunk — and then counts as surfaced,
        so :meth:`acomplete` does not raise it again. A "fail" verdict or a cancel is no error:
        the iteration just ends. Single consumer: a second call raises
        :class:`SingleReaderError` at once.

        With ``max_retries > 0`` the chunks of every attempt come through here, in order, with
        nothing in between: the text of an abandoned attempt may be followed by the chunks of
        the next one. Use :meth:`events` (its :class:`RetryEvent`) to tell them apart.
        """
        with self._lock:
            if self._chunks_taken:
                raise SingleReaderError(
                    f"astream() of stream {self.request_id} was already called; it has a single "
                    "consumer (use events() for a second view of the chunks)"
                )
            self._chunks_taken = True
        return _ChannelIterator(self._chunks, self._surface)

    async def acomplete(self, timeout: float | None = None) -> None:
        """Wait until the run is over (final validations included).

        Raises the run's error (``ValidatorError``, a ``BackendError``, ``InvalidInputError`` for
        a misbehaving chunker, ``RuntimeClosedError``) once: later calls (and ``astream()``
        after it) return normally. Raises ``AskTimeoutError`` after ``timeout`` seconds (the run
        goes on). Cancelling the awaiting task does not cancel the run.
        """
        if timeout is None:
            await self._done.wait()
        else:
            try:
                async with asyncio.timeout(timeout):
                    await self._done.wait()
            except TimeoutError as exc:
                raise AskTimeoutError(
                    f"stream {self.request_id} did not complete within {timeout} s"
                ) from exc
        self._surface()

    def _surface(self) -> None:
        with self._lock:
            error = self._error
            if error is None or self._surfaced:
                return
            self._surfaced = True
        raise error

    # -- cancel --------------------------------------------------------------------------------
    async def cancel(
        self, reason: str = "cancelled by the consumer", timeout: float = 10.0
    ) -> None:
        """Stop the run: cancel the generation (closing the Ollama stream) and the validators.

        Returns once the run is over (its ``CompletedEvent(success=False)`` published, the
        generation ended, every validator stopped); no-op if it already is. Not an error:
        ``acomplete()`` does not raise because of a cancel. Raises ``AskTimeoutError`` if the
        run has not ended within ``timeout`` seconds.
        """
        if self._done.is_set():
            return
        actor = self._actor
        if actor is not None:
            # ActorDeadError: it ended meanwhile (or aborted): its outcome is published
            with contextlib.suppress(pykka.ActorDeadError, RuntimeClosedError):
                await ask_async(actor, CancelStream(reason), timeout=timeout)
        try:
            async with asyncio.timeout(timeout):
                await self._done.wait()
        except TimeoutError as exc:
            raise AskTimeoutError(
                f"stream {self.request_id} did not end within {timeout} s of its cancel"
            ) from exc

    async def __aenter__(self) -> StreamChunkingResult:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Leaving the block before the run is over cancels it (and waits, bounded)."""
        if not self._done.is_set():
            await self.cancel("the consumer left the `async with` block")

    # -- state ---------------------------------------------------------------------------------
    @property
    def request_id(self) -> str | None:
        """The (first) generation's id in the supervision log; the stream actor is
        ``stream-<request_id>``. See :attr:`request_ids` for every attempt's."""
        return self._request_id

    @property
    def request_ids(self) -> list[str | None]:
        """The generation id of every attempt started so far, in order (one without retries)."""
        with self._lock:
            return list(self._request_ids)

    @property
    def attempt(self) -> int:
        """The current attempt's number (the final one's once the run is over)."""
        return self._attempt

    def done(self) -> bool:
        """True once the run is over (``CompletedEvent`` published)."""
        return self._done.is_set()

    @property
    def completed(self) -> bool:
        """True only once the run is over and it ended naturally with no "fail", no error, no
        cancel, and every final validation passed. Never True before the end."""
        return self._completed and self._done.is_set()

    @property
    def cancelled(self) -> bool:
        """True if the run was stopped by :meth:`cancel` / leaving ``async with``."""
        outcome = self._outcome
        return outcome is not None and outcome.kind == "cancelled"

    @property
    def error(self) -> BaseException | None:
        """The run's error once it ended with one (whether surfaced or not), else None."""
        return self._error

    @property
    def full_text(self) -> str:
        """The delivered text, with its original spacing.

        After a natural end (every chunk delivered): the whole generated text, including any
        whitespace after the last chunk. Otherwise (fail, error, cancel, or still running): the
        generated text from its start up to the end of the last delivered chunk — never a join
        of the chunks, so the separators the chunker dropped are kept. With retries, this is the
        current attempt's text only (empty right after a :class:`RetryEvent`).
        """
        natural = self._natural_text
        if natural is not None:
            return natural
        segments = self._segments
        n = len(segments)
        cache = self._full_cache
        if cache is not None and cache[0] is segments and cache[1] == n:
            return cache[2]
        text = "".join(segments[:n])
        self._full_cache = (segments, n, text)
        return text

    @property
    def streaming_failures(self) -> list[tuple[Requirement, PartialValidationResult]]:
        """``(requirement, verdict)`` for the "fail" that stopped the stream (the validator's
        copy of the requirement), or for a validator fault under the fail-closed policy. With
        retries: of the final attempt only."""
        return list(self._failures)

    @property
    def final_validations(self) -> list[ValidationResult]:
        """The final ``validate()`` results, in requirement order (empty unless the stream
        ended naturally and every final validation returned). With retries: of the final
        attempt's copies."""
        return list(self._final)

    @property
    def as_thunk(self) -> ModelOutputThunk[str]:
        """A computed :class:`ModelOutputThunk` whose value is :attr:`full_text` (the final
        attempt's), with the action and the final attempt's context.

        Raises RuntimeError before the run is over (await :meth:`acomplete` first).
        """
        if not self._done.is_set():
            raise RuntimeError(
                f"as_thunk of stream {self.request_id} accessed before the run ended; "
                "await result.acomplete() first"
            )
        if self._thunk is None:
            thunk: ModelOutputThunk[str] = ModelOutputThunk(value=self.full_text)
            thunk.action = self._mot.action
            thunk.context = self._ctx
            self._thunk = thunk
        return self._thunk

    def __repr__(self) -> str:
        outcome = self._outcome
        state = "running" if outcome is None else outcome.kind
        return f"StreamChunkingResult(request_id={self.request_id!r}, state={state!r})"


# --------------------------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------------------------
def _copy_requirement(requirement: Requirement) -> Requirement:
    try:
        return copy.deepcopy(requirement)
    except Exception as exc:
        raise InvalidInputError(
            f"requirement {requirement!r} cannot be copied for its validator "
            f"(copy.deepcopy raised {exc!r}); give it a __deepcopy__ that returns an "
            "independent copy"
        ) from exc


def _chunker_factory(chunking: str | ChunkingStrategy) -> Callable[[], ChunkingStrategy]:
    """Fresh chunkers for retries: a new instance per alias, or deep copies of a copy of the
    user's instance taken now (before the first attempt can change it)."""
    if not isinstance(chunking, ChunkingStrategy):
        return lambda: resolve_chunking(chunking)
    try:
        template = copy.deepcopy(chunking)
    except Exception as exc:
        raise InvalidInputError(
            f"chunking strategy {chunking!r} cannot be copied for retries (copy.deepcopy raised "
            f"{exc!r}); give it a __deepcopy__, or use max_retries=0"
        ) from exc
    return lambda: copy.deepcopy(template)


async def stream_with_chunking(
    action: Any,
    backend: Backend,
    ctx: Context,
    *,
    requirements: Sequence[Requirement | str] | None = None,
    chunking: str | ChunkingStrategy = "sentence",
    validation_backend: Backend | None = None,
    validator_timeout: float | None = DEFAULT_VALIDATOR_TIMEOUT,
    validator_failure: Literal["fail", "unknown"] = "fail",
    model_options: dict[str, Any] | None = None,
    max_retries: int = 0,
) -> StreamChunkingResult:
    """Start a streamed generation with per-chunk validation; return its result at once.

    Args:
        action: what to generate from (an ``Instruction``, ``Message``, ``CBlock``; a str is
            wrapped in a ``CBlock``).
        backend: the generating backend (a mellea_actors backend: it runs on an actor system).
        ctx: the context; the generation sees it as ``generate_from_context`` does.
        requirements: requirements (or strings, made ``Requirement``) judged per chunk with
            ``stream_validate`` and at the end with ``validate``; None: no validation.
        chunking: ``"sentence"`` (default), ``"word"``, ``"paragraph"`` or a
            :class:`ChunkingStrategy` instance.
        validation_backend: the backend handed to ``stream_validate``/``validate`` (default:
            ``backend``).
        validator_timeout: deadline of each ``stream_validate``/``validate`` call in seconds
            (None: no deadline).
        validator_failure: fault policy, ``"fail"`` (fail-closed, default) or ``"unknown"``
            (see the module docstring).
        model_options: extra model options for the generation (``ModelOption.STREAM`` is always
            True).
        max_retries: opt-in "retry from scratch": how many times a generation that fails with
            a transient backend error (refused or dropped connection, HTTP 5xx), even after
            text was delivered, is started again from scratch, announced by a
            :class:`RetryEvent` (see the module docstring). Default 0: never (a single attempt;
            the error ends the run).

    Raises (before any request is sent):
        InvalidInputError: (a ``ValueError``) unknown chunking alias (named in the message), bad
            policy, timeout or ``max_retries`` (an int >= 0), a requirement that is not a
            Requirement/str or cannot be deep-copied (with retries: a chunking strategy
            instance that cannot be deep-copied), a backend without an actor system, bad model
            options.
    """
    strategy = resolve_chunking(chunking)
    if validator_failure not in FAULT_POLICIES:
        raise InvalidInputError(
            f"validator_failure must be one of {FAULT_POLICIES}, got {validator_failure!r}"
        )
    if validator_timeout is not None and (
        isinstance(validator_timeout, bool)
        or not isinstance(validator_timeout, int | float)
        or not validator_timeout > 0
        or math.isinf(validator_timeout)
    ):
        raise InvalidInputError(
            f"validator_timeout must be a positive number of seconds or None, "
            f"got {validator_timeout!r}"
        )
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise InvalidInputError(f"max_retries must be an int >= 0, got {max_retries!r}")
    system = getattr(backend, "system", None)
    if not isinstance(system, ActorSystem):
        raise InvalidInputError(
            f"stream_with_chunking needs a mellea_actors backend (one that runs on an actor "
            f"system), got {type(backend).__name__}"
        )
    if isinstance(requirements, str | Requirement):
        raise InvalidInputError("requirements must be a list of requirements, not a single one")
    wanted = [reqify(r) for r in (requirements or ())]
    copies = [_copy_requirement(r) for r in wanted]
    # With retries: the requirements and chunker as they are now, copied for later attempts.
    templates = [_copy_requirement(r) for r in wanted] if max_retries else []
    new_chunker = _chunker_factory(chunking) if max_retries else None
    if isinstance(action, str):
        action = CBlock(action)
    options = dict(model_options or {})
    options[ModelOption.STREAM] = True
    judge = validation_backend if validation_backend is not None else backend

    mot, gen_ctx = await backend.generate_from_context(action, ctx, model_options=options)
    result = StreamChunkingResult(mot, gen_ctx, copies)

    async def new_attempt(attempt: int) -> StreamAttempt:
        """A fresh attempt (runs on the actor loop; the new generation is submitted last)."""
        assert new_chunker is not None
        fresh = [copy.deepcopy(t) for t in templates]
        segmenter = _Segmenter(new_chunker())
        new_mot, new_ctx = await backend.generate_from_context(
            action, ctx, model_options=dict(options)
        )
        result._staged = (attempt, new_mot, new_ctx, fresh)
        return StreamAttempt(
            source=new_mot,
            segmenter=segmenter,
            checks=[_RequirementCheck(c, judge, new_ctx) for c in fresh],
        )

    try:
        result._actor = StreamActor.start(
            system.loop,
            system=system,
            source=mot,
            segmenter=_Segmenter(strategy),
            checks=[_RequirementCheck(c, judge, gen_ctx) for c in copies],
            sink=result._sink,
            validator_timeout=validator_timeout,
            on_fault=validator_failure,
            max_retries=max_retries,
            new_attempt=new_attempt if max_retries else None,
        )
    except BaseException:
        await mot.cancel("stream_with_chunking could not start its stream actor")
        raise
    return result
