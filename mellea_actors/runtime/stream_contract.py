"""The contract between the facade of ``stream_with_chunking`` and its engine.

The facade (:mod:`mellea_actors.stdlib.streaming`) states what a run guarantees to its user; the
engine (:mod:`mellea_actors.runtime.stream_actor`, :mod:`mellea_actors.runtime.validator_actor`,
:mod:`mellea_actors.runtime.stream_journal`) implements it. They meet only through the types of
this module, so each side can be tested against fakes of the other:

* the facade gives the engine, per attempt, a :class:`StreamAttempt` — a :class:`TextSource`
  (the generation's handle), a :class:`Segmenter` (the chunking strategy) and one
  :class:`ValidationCheck` per requirement, plus an opaque ``payload`` the engine only carries;
* the engine publishes through a :class:`StreamSink` (the journal) and ends with one
  :class:`StreamOutcome`; the journal builds the facade's event objects through an
  :class:`EventFactory` the facade implements;
* the stream actor needs from the actor system only a :class:`StreamRuntime`.

Words: a *delta* is what the model server sends per streamed object (the unit the thunk
buffers); a *chunk* is a piece of the text cut by the chunking strategy — what is validated and
delivered.

Threads: every method of every Protocol here is called on the runtime's actor loop thread
(:class:`~mellea_actors.runtime.loop.ActorLoop`), one call at a time, unless stated otherwise.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from mellea_actors.errors import BackendError

if TYPE_CHECKING:
    from mellea_actors.runtime.log import SupervisionLog

__all__ = [
    "FAULT_POLICIES",
    "EventFactory",
    "FaultPolicy",
    "OutcomeKind",
    "Segmenter",
    "StreamAttempt",
    "StreamOutcome",
    "StreamRuntime",
    "StreamSink",
    "TextSource",
    "ValidationCheck",
    "retryable",
]

E_co = TypeVar("E_co", covariant=True)

#: What a validator does with a fault (see :mod:`mellea_actors.runtime.validator_actor`).
FaultPolicy = Literal["fail", "unknown"]
FAULT_POLICIES: tuple[FaultPolicy, ...] = ("fail", "unknown")

OutcomeKind = Literal["completed", "failed", "error", "cancelled"]


# -- what the facade hands to the engine ---------------------------------------------------------
class TextSource(Protocol):
    """One attempt's generation, as the stream actor reads it (a
    :class:`~mellea_actors.runtime.thunk_handle.ThunkHandle`); the stream actor is its reader."""

    @property
    def request_id(self) -> str:
        """The generation's id: the ``thunk`` of log records, what ``StreamRuntime.cancel``
        takes."""
        ...

    @property
    def cancelled(self) -> bool:
        """True once the generation ended cancelled (by anyone)."""
        ...

    def is_computed(self) -> bool:
        """True once the generation ended with a value and its reader has read every delta."""
        ...

    async def astream(self, who: str) -> str:
        """The text of the deltas after the reader's cursor, waiting until there is some or the
        generation ended (then ``""`` once everything was read); raises the generation's error
        after its text was read. ``who`` names the reader in a ``SingleReaderError``."""
        ...

    async def cancel(self, reason: str, timeout: float) -> None:
        """Cancel the generation and wait (bounded by ``timeout``) until it ended."""
        ...


class Segmenter(Protocol):
    """Turns the growing text into new complete chunks (the facade wraps a ChunkingStrategy).

    Both methods take the whole text so far and return the new ``(chunk, segment)`` pairs, where
    ``segment`` is the source text from the end of the previous chunk to the end of this one.
    They raise (``InvalidInputError``) when the strategy misbehaves. Called by the stream's
    reader task only.
    """

    def feed(self, text: str) -> list[tuple[str, str]]: ...

    def finish(self, text: str) -> list[tuple[str, str]]: ...


class ValidationCheck(Protocol):
    """What a validator runs; the facade adapts a requirement copy to this.

    Every method is called on the actor loop thread. ``check_chunk``/``check_final`` are called
    by one validator only, one call at a time; the other methods are pure and may also be called
    by the stream actor.
    """

    @property
    def label(self) -> str:
        """A short human-readable name (for logs and error messages)."""
        ...

    async def check_chunk(self, index: int, text: str) -> Any:
        """The verdict on one chunk; raise :class:`InvalidVerdictError` for a non-verdict."""
        ...

    async def check_final(self) -> Any:
        """The final validation result of the complete output."""
        ...

    def is_fail(self, verdict: Any) -> bool:
        """True for a "fail" verdict."""
        ...

    def final_passed(self, result: Any) -> bool:
        """True for a passed final validation."""
        ...

    def unknown(self, reason: str) -> Any:
        """An "unknown" verdict with this reason."""
        ...

    def fail(self, reason: str) -> Any:
        """A "fail" verdict with this reason."""
        ...

    def final_failed(self, reason: str) -> Any:
        """A failed final validation result with this reason."""
        ...


@dataclass(frozen=True, slots=True)
class StreamAttempt:
    """What one attempt reads and judges with; a retry gets a fresh one from its factory.

    ``source``: the attempt's generation; ``segmenter``: a fresh chunker; ``checks``: one fresh
    check per requirement, in requirement order; ``payload``: the facade's own data of this
    attempt (opaque to the engine), recorded by the sink when the attempt is installed.
    """

    source: TextSource
    segmenter: Segmenter
    checks: Sequence[ValidationCheck]
    payload: Any = None


# -- what the engine publishes -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StreamOutcome:
    """How a run ended.

    ``kind``: ``"completed"`` (natural end; ``success`` iff every final validation passed),
    ``"failed"`` (a requirement said "fail"), ``"error"`` (``error`` is set) or ``"cancelled"``
    (by the consumer). ``success`` is never true for another kind.
    """

    kind: OutcomeKind
    success: bool
    reason: str
    error: BaseException | None = None


class StreamSink(Protocol):
    """Where the stream actor publishes one run; every call is made by the stream actor on the
    actor loop thread, in order, and must not block.

    Per delivered chunk: ``quick_check`` (only with checks) then ``chunk``. A retry: ``retry``,
    then the new attempt's calls from chunk 0. ``finish`` is called exactly once, last.
    """

    def quick_check(self, index: int, passed: bool, verdicts: list[Any]) -> None:
        """The verdicts on chunk ``index`` (one per check, in check order)."""
        ...

    def chunk(self, index: int, text: str, segment: str) -> None:
        """Chunk ``index`` is delivered; ``segment`` is its source text (gap included)."""
        ...

    def failure(self, validator: int, verdict: Any) -> None:
        """Validator ``validator``'s "fail" (or fault, as a "fail") stopped the run."""
        ...

    def streaming_done(self, text: str) -> None:
        """Every chunk of a natural end was delivered; ``text`` is the whole generated text."""
        ...

    def full_validation(self, passed: bool, results: list[Any]) -> None:
        """Every final validation returned (only with checks)."""
        ...

    def retry(self, number: int, reason: str, attempt: StreamAttempt) -> None:
        """Attempt ``number`` (2, 3, …) was installed and starts from scratch; what was
        published before belongs to an abandoned attempt. Called only with retries enabled,
        never after ``finish``."""
        ...

    def finish(self, outcome: StreamOutcome) -> None:
        """The run is over (validators stopped, generation ended); the last call."""
        ...


class EventFactory(Protocol[E_co]):
    """Builds the facade's event objects for the journal (stateless; called when each event is
    published, on the actor loop thread, so an event's creation time is its publication time)."""

    def quick_check(self, index: int, attempt: int, passed: bool, results: list[Any]) -> E_co: ...

    def chunk(self, text: str, index: int, attempt: int) -> E_co: ...

    def streaming_done(self, attempt: int, full_text: str) -> E_co: ...

    def full_validation(self, attempt: int, passed: bool, results: list[Any]) -> E_co: ...

    def retry(self, attempt: int, reason: str) -> E_co: ...

    def error(self, exception_type: str, detail: str) -> E_co: ...

    def completed(self, success: bool, full_text: str, attempts_used: int) -> E_co: ...


# -- what the stream actor needs from the system -------------------------------------------------
class StreamRuntime(Protocol):
    """The part of :class:`~mellea_actors.runtime.system.ActorSystem` a stream actor uses."""

    @property
    def id(self) -> str:
        """The system's id: the stream actor's parent in the log."""
        ...

    @property
    def log(self) -> SupervisionLog: ...

    @property
    def stream_actors(self) -> MutableMapping[str, str]:
        """The registry of live stream and validator actors (``id -> kind``); each actor lists
        itself while it lives (written on the loop thread only)."""
        ...

    def cancel(self, request_id: str, reason: str) -> None:
        """Request the cancel of one generation (returns at once; thread-safe)."""
        ...


def retryable(error: BaseException) -> bool:
    """True if an attempt that failed with ``error`` may be retried from scratch (opt-in): a
    transient backend error (refused or dropped connection, HTTP 5xx)."""
    return isinstance(error, BackendError) and bool(error.transient)
