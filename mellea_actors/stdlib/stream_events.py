"""The events of :meth:`StreamChunkingResult.events` (``stream_with_chunking``), and their factory.

Facade types: they are re-exported by :mod:`mellea_actors.stdlib.streaming`, whose docstring
states when each is emitted and in which order. The engine never names them: its journal
(:mod:`mellea_actors.runtime.stream_journal`) builds them through :data:`EVENTS`, an
:class:`~mellea_actors.runtime.stream_contract.EventFactory`, when each is published — so an
event's ``timestamp`` is its publication time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from mellea_actors.core.requirement import PartialValidationResult, ValidationResult

__all__ = [
    "EVENTS",
    "ChunkEvent",
    "CompletedEvent",
    "ErrorEvent",
    "FullValidationEvent",
    "QuickCheckEvent",
    "RetryEvent",
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


#: The one event factory (stateless).
EVENTS = _Events()
