"""The streaming events, and their factories.

One set of classes serves both APIs — :meth:`StreamChunkingResult.events`
(``stream_with_chunking``, Mellea 0.7.0) and ``stream(..., as_events=True)`` (Mellea 0.8.0) —
so ``match``/``isinstance`` code written for either version matches the events of both. Where
the versions differ, each API keeps its own: ``QuickCheckEvent.results`` holds one
``PartialValidationResult`` per requirement under 0.7 and one ``PartialValidationSummary``
under 0.8; ``CompletedEvent.success`` is False after a failed final validation under 0.7
(``result.completed``) and True under 0.8 (it means "ended normally": no "fail", no error, not
closed early); only 0.8's stream emits a ``QuickCheckEvent`` without a ``ChunkEvent`` (the
residual round of requirements with their own ``chunking``, see
:mod:`mellea_actors.stdlib.stream_checks`). The events are frozen (Mellea's are not).

Facade types: they are re-exported by :mod:`mellea_actors.stdlib.streaming`, whose docstring
states when each is emitted and in which order. The engine never names them: its journal
(:mod:`mellea_actors.runtime.stream_journal`) builds them through an
:class:`~mellea_actors.runtime.stream_contract.EventFactory` — :data:`EVENTS`, or a
:class:`RunEvents` per run — when each is published, so an event's ``timestamp`` is its
publication time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from mellea_actors.core.requirement import (
    PartialValidationResult,
    PartialValidationSummary,
    ValidationResult,
)
from mellea_actors.stdlib.stream_checks import AttemptData, Piece

if TYPE_CHECKING:
    from mellea_actors.runtime.stream_journal import StreamJournal

__all__ = [
    "EVENTS",
    "ChunkEvent",
    "CompletedEvent",
    "ErrorEvent",
    "FullValidationEvent",
    "NoEvents",
    "QuickCheckEvent",
    "RetryEvent",
    "RunEvents",
    "StreamEvent",
    "StreamingDoneEvent",
]


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
        chunk_index: the chunk judged (under ``stream()``, the index after the last chunk for
            the residual round, which has no ``ChunkEvent``).
        attempt: the attempt number.
        passed: True if no requirement answered "fail".
        results: one verdict per requirement, in requirement order (on a fail, requirements
            that had not answered yet are reported "unknown"): a ``PartialValidationResult``
            under ``stream_with_chunking``, a ``PartialValidationSummary`` under ``stream()``.
    """

    chunk_index: int
    attempt: int
    passed: bool
    results: list[PartialValidationResult] | list[PartialValidationSummary]


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
    error (see :mod:`mellea_actors.stdlib.streaming`). Every chunk delivered before it belongs
    to the abandoned attempt; every later event carries ``attempt`` and chunk indices restart
    at 0.

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
        success: under ``stream_with_chunking``, ``result.completed``: natural end, no "fail",
            no error, every final validation passed; under ``stream()``, as in Mellea 0.8.0:
            natural end, no "fail", no error (a failed final validation does not count).
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


class _Events:
    """The :class:`~mellea_actors.runtime.stream_contract.EventFactory` of the facade: it only
    constructs events (stateless, so one instance serves every run)."""

    __slots__ = ()

    def quick_check(
        self, index: int, attempt: int, passed: bool, results: list[Any]
    ) -> QuickCheckEvent:
        return QuickCheckEvent(index, attempt, passed, results)

    def chunk(self, text: str, index: int, attempt: int) -> ChunkEvent:
        return ChunkEvent(text, index, attempt)

    def streaming_done(self, attempt: int, full_text: str) -> StreamingDoneEvent:
        return StreamingDoneEvent(attempt, full_text)

    def full_validation(
        self, attempt: int, passed: bool, results: list[Any]
    ) -> FullValidationEvent:
        return FullValidationEvent(attempt, passed, results)

    def retry(self, attempt: int, reason: str) -> RetryEvent:
        return RetryEvent(attempt, reason)

    def error(self, exception_type: str, detail: str) -> ErrorEvent:
        return ErrorEvent(exception_type, detail)

    def completed(self, success: bool, full_text: str, attempts_used: int) -> CompletedEvent:
        return CompletedEvent(success, full_text, attempts_used)


#: The event factory of ``stream_with_chunking`` runs that need no :class:`RunEvents` (stateless).
EVENTS = _Events()


class RunEvents(_Events):
    """The event factory of one run that needs to know more than the event's arguments: a run of
    ``stream()`` (``mellea08``), or one whose chunks are pieces (see
    :mod:`mellea_actors.stdlib.stream_checks`). Bound to the run's journal once it exists; it
    returns None for an event the consumer must not see (the residual round's ``ChunkEvent``,
    and under 0.7 its passing ``QuickCheckEvent``), which the facade's views skip.
    """

    __slots__ = ("_journal", "mellea08")

    def __init__(self, *, mellea08: bool) -> None:
        self.mellea08 = mellea08
        self._journal: StreamJournal[StreamEvent | None] | None = None

    def bind(self, journal: StreamJournal[StreamEvent | None]) -> None:
        self._journal = journal

    def chunk(self, text: str, index: int, attempt: int) -> ChunkEvent | None:  # type: ignore[override]
        if isinstance(text, Piece):
            if text.residual:
                return None
            text = str(text)
        return ChunkEvent(text, index, attempt)

    def quick_check(  # type: ignore[override]
        self, index: int, attempt: int, passed: bool, results: list[Any]
    ) -> QuickCheckEvent | None:
        if passed and not self.mellea08 and self._journal is not None:
            plan = cast(AttemptData, self._journal.current.payload).plan
            if plan.residual_at == index:
                return None
        return QuickCheckEvent(index, attempt, passed, results)

    def completed(self, success: bool, full_text: str, attempts_used: int) -> CompletedEvent:
        if self.mellea08 and self._journal is not None:
            outcome = self._journal.outcome
            success = outcome is not None and outcome.kind == "completed"
        return CompletedEvent(success, full_text, attempts_used)


class NoEvents:
    """The event factory of a run whose events nobody can read (``stream()``'s chunk face, a
    :class:`~mellea_actors.stdlib.streaming.Streamer`): it builds none (every call is None)."""

    __slots__ = ()

    def _none(self, *args: Any) -> None:
        del args

    quick_check = chunk = streaming_done = full_validation = retry = error = completed = _none
