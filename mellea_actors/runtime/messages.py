"""Every message exchanged between the runtime's actors, in one place.

All messages are immutable: the request that comes from users is a frozen pydantic model
(validated once, at the edge; it lives in :mod:`mellea_actors.transport.chat_request` and is
re-exported here); hot-path messages (one per batch of deltas) are frozen, slotted dataclasses,
which cost a fraction of a pydantic model. pykka shares messages between threads without copying
them, so nothing here may be mutated after it is built.

Who sends what::

    system ──StartGeneration──▶ GenerationSupervisor ──(spawns a generator task)
    generator ──DeltasArrived / GenerationFinished / …Failed / …Cancelled──▶ ThunkActor
    generator ──GeneratorExited──▶ GenerationSupervisor      (decides: done, restart, or fail)
    anyone with the ref ──ReadNew / ReaderGone / AwaitOutcome──▶ ThunkActor
                                                  (replies: StreamRead, ThunkOutcome)
    system ──CancelGeneration──▶ GenerationSupervisor
    system ──AddHost / RemoveHost──▶ GenerationSupervisor       (a pooled session, asks)
    tags watcher ──TagsRefreshed──▶ GenerationSupervisor
    ThunkActor / GenerationSupervisor ──ChildCrashed / Escalated──▶ their supervisor
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import pykka

from mellea_actors.transport.chat_request import ChatMessage, GenerationRequest

__all__ = [
    "AddHost",
    "AwaitOutcome",
    "CancelGeneration",
    "CancelStream",
    "ChatMessage",
    "ChildCrashed",
    "ChunksFound",
    "DeltasArrived",
    "Escalated",
    "FinalVerdictArrived",
    "GenerationCancelled",
    "GenerationFailed",
    "GenerationFinished",
    "GenerationRequest",
    "GenerationStats",
    "GeneratorExited",
    "HostAnswered",
    "ReadNew",
    "ReaderGone",
    "RemoveHost",
    "RestartGenerator",
    "SourceEnded",
    "SourceFailed",
    "StartGeneration",
    "StopValidation",
    "StreamRead",
    "TagsRefreshed",
    "ThunkOutcome",
    "ThunkStatus",
    "ValidateChunk",
    "ValidateFinal",
    "VerdictArrived",
]


# -- generator → supervisor -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StartGeneration:
    request: GenerationRequest
    thunk: pykka.ActorRef[Any]


@dataclass(frozen=True, slots=True)
class CancelGeneration:
    request_id: str
    reason: str = "cancelled by the user"


@dataclass(frozen=True, slots=True)
class GeneratorExited:
    """A generator task ended; ``error`` is None on success or cancel."""

    request_id: str
    attempt: int
    deltas_delivered: int
    error: BaseException | None = None
    cancelled: bool = False


@dataclass(frozen=True, slots=True)
class RestartGenerator:
    request_id: str
    attempt: int


@dataclass(frozen=True, slots=True)
class HostAnswered:
    """The breaker's probe reached the host (``/api/version`` answered)."""

    host: str


@dataclass(frozen=True, slots=True)
class AddHost:
    """Add a host to a pooled supervisor's pool (an ask: answered with its ``HostView``)."""

    url: str
    capacity: int | None = None
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class RemoveHost:
    """Remove a host from the pool: ``drain`` lets its running attempts finish; without it they
    are stopped (moved to another host if no text was delivered yet, else failed)."""

    url: str
    drain: bool = True


@dataclass(frozen=True, slots=True)
class TagsRefreshed:
    """A host's ``/api/tags`` answered (``models``), or failed (``error``)."""

    host: str
    models: tuple[str, ...] | None
    error: str | None = None


# -- children → their supervisor ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ChildCrashed:
    """A child actor crashed (it is already stopped); ``reason`` is the exception's repr."""

    child_id: str
    kind: str
    request_id: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class Escalated:
    """A supervisor gave up restarting (intensity exceeded) and failed the request instead."""

    supervisor_id: str
    request_id: str
    reason: str


# -- generator → thunk ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class GenerationStats:
    """What Ollama (or, for a cancel, our own count) says about a finished generation."""

    model: str
    done_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_duration_ns: int | None = None
    time_to_first_chunk: float | None = None
    streaming: bool = True
    attempts: int = 1

    @property
    def total_tokens(self) -> int | None:
        if self.prompt_tokens is None and self.completion_tokens is None:
            return None
        return (self.prompt_tokens or 0) + (self.completion_tokens or 0)

    @property
    def usage(self) -> dict[str, int | None]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(frozen=True, slots=True)
class DeltasArrived:
    """The deltas the generator received in one loop tick (usually one), in order."""

    deltas: tuple[str, ...]
    thinking: str = ""
    at: float = 0.0
    """``time.monotonic()`` when the generator received the first of them."""


@dataclass(frozen=True, slots=True)
class GenerationFinished:
    meta: GenerationStats


@dataclass(frozen=True, slots=True)
class GenerationFailed:
    error: BaseException
    meta: GenerationStats


@dataclass(frozen=True, slots=True)
class GenerationCancelled:
    reason: str
    meta: GenerationStats


# -- readers → thunk ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ReadNew:
    """Ask for the text after delta ``cursor``; answered as soon as there is some, or at the end."""

    cursor: int
    reader: int = 0


@dataclass(frozen=True, slots=True)
class ReaderGone:
    """The reader that sent ``ReadNew`` stopped waiting (its task was cancelled)."""

    reader: int = 0


@dataclass(frozen=True, slots=True)
class AwaitOutcome:
    """Ask for the :class:`ThunkOutcome`; answered when the generation is over."""


class ThunkStatus(enum.Enum):
    PENDING = "pending"
    STREAMING = "streaming"
    COMPUTED = "computed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (ThunkStatus.COMPUTED, ThunkStatus.FAILED, ThunkStatus.CANCELLED)


@dataclass(frozen=True, slots=True)
class ThunkOutcome:
    """The final state of a thunk, published once and never changed."""

    status: ThunkStatus
    deltas: tuple[str, ...]
    thinking: str
    meta: GenerationStats
    error: BaseException | None = None
    cancel_reason: str | None = None
    text: str = field(default="")


@dataclass(frozen=True, slots=True)
class StreamRead:
    """Reply to :class:`ReadNew`: the new text, the reader's next cursor, the outcome if final."""

    text: str
    cursor: int
    outcome: ThunkOutcome | None = None


# -- streaming with per-chunk validation ---------------------------------------------------------
#   StreamActor ──ValidateChunk / ValidateFinal / StopValidation──▶ ValidatorActor   (asks)
#   stream reader task ──ChunksFound / SourceEnded / SourceFailed──▶ StreamActor
#   (reply of a validator) ──VerdictArrived / FinalVerdictArrived──▶ StreamActor
#   facade ──CancelStream──▶ StreamActor                (replied once the stream has ended)
@dataclass(frozen=True, slots=True)
class ValidateChunk:
    """Ask a validator for its verdict on chunk ``index`` (validators answer in chunk order)."""

    index: int
    text: str


@dataclass(frozen=True, slots=True)
class ValidateFinal:
    """Ask a validator for the final validation of the complete output (after every chunk)."""


@dataclass(frozen=True, slots=True)
class StopValidation:
    """Ask a validator to drop its pending work and stop; answered once it has stopped."""

    reason: str = "the stream ended"


@dataclass(frozen=True, slots=True)
class ChunksFound:
    """New complete chunks of the generated text, in order.

    Each span is ``(chunk, segment)``: ``segment`` is the source text from the end of the
    previous chunk to the end of this one (the whitespace gap, then the chunk), so that joining
    the segments of the delivered chunks gives the delivered text with its original spacing.
    """

    spans: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class SourceEnded:
    """The generation ended naturally; ``text`` is the whole generated text (flush included)."""

    text: str


@dataclass(frozen=True, slots=True)
class SourceFailed:
    """Reading the generation failed (backend error, chunker error, external cancel)."""

    error: BaseException


@dataclass(frozen=True, slots=True)
class VerdictArrived:
    """A validator's reply to :class:`ValidateChunk` (``reply`` is its completed future)."""

    validator: int
    index: int
    reply: pykka.Future[Any]


@dataclass(frozen=True, slots=True)
class FinalVerdictArrived:
    """A validator's reply to :class:`ValidateFinal` (``reply`` is its completed future)."""

    validator: int
    reply: pykka.Future[Any]


@dataclass(frozen=True, slots=True)
class CancelStream:
    """Stop a stream (generation and validators); answered once the stream has ended."""

    reason: str = "cancelled by the consumer"
