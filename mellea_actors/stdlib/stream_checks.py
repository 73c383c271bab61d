"""The adapters ``stream_with_chunking`` hands to its engine, one attempt at a time.

A requirement copy becomes a :class:`RequirementCheck` (a
:class:`~mellea_actors.runtime.stream_contract.ValidationCheck`), a :class:`ChunkingStrategy`
a :class:`StrategySegmenter` (a :class:`~mellea_actors.runtime.stream_contract.Segmenter`),
and :func:`make_attempt` bundles them with the generation's handle into a
:class:`~mellea_actors.runtime.stream_contract.StreamAttempt` whose payload is the facade's
:class:`AttemptData`. What isolation and freshness mean for the user (copies taken before any
request, fresh ones per retry) is stated by :mod:`mellea_actors.stdlib.streaming`.

Threads: the checks and segmenters are used on the actor loop thread only (the check by its
validator, the segmenter by the stream's reader task); the rest runs where
``stream_with_chunking`` and its attempt factory run.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mellea_actors.core.requirement import PartialValidationResult, Requirement, ValidationResult
from mellea_actors.errors import InvalidInputError, InvalidVerdictError
from mellea_actors.runtime.crossing import in_thread
from mellea_actors.runtime.stream_contract import StreamAttempt
from mellea_actors.stdlib.chunking import (
    ChunkingStrategy,
    ChunkTracker,
    resolve_chunking,
    validate_chunks,
)

if TYPE_CHECKING:
    from mellea_actors.core.backend import Backend
    from mellea_actors.core.context_chain import Context
    from mellea_actors.core.model_output import ModelOutputThunk

__all__ = [
    "AttemptData",
    "RequirementCheck",
    "StrategySegmenter",
    "chunker_factory",
    "copy_requirement",
    "make_attempt",
    "requirement_label",
]


def requirement_label(requirement: Requirement) -> str:
    name = type(requirement).__name__
    description = getattr(requirement, "description", None)
    if isinstance(description, str) and description:
        short = description if len(description) <= 60 else description[:59] + "…"
        return f"{name}({short!r})"
    return name


async def _call_user_code(method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a requirement's method from the actor loop without letting it block the loop.

    A coroutine function runs on the loop (it is expected to await; one that blocks anyway is
    caught by the validator's deadline once it returns). Anything else — a plain ``def`` that
    may sleep, call a model synchronously, or spin — runs in a worker thread, so it delays
    only its own verdict and the validator's deadline cancels the wait for it (the thread
    itself cannot be interrupted and finishes in the background).
    """
    if inspect.iscoroutinefunction(method):
        return await method(*args, **kwargs)
    result = await in_thread(functools.partial(method, *args, **kwargs))
    if inspect.isawaitable(result):  # a plain def that returned a coroutine
        result = await result
    return result


class RequirementCheck:
    """A requirement copy as a runtime ``ValidationCheck`` (used on the actor loop only)."""

    __slots__ = ("backend", "ctx", "label", "requirement")

    def __init__(self, requirement: Requirement, backend: Backend, ctx: Context) -> None:
        self.requirement = requirement
        self.backend = backend
        self.ctx = ctx
        self.label = requirement_label(requirement)

    async def check_chunk(self, index: int, text: str) -> PartialValidationResult:
        result: Any = await _call_user_code(
            self.requirement.stream_validate, text, backend=self.backend, ctx=self.ctx
        )
        if not isinstance(result, PartialValidationResult):
            raise InvalidVerdictError(
                f"{self.label}.stream_validate() returned {type(result).__name__} {result!r} for "
                f"chunk {index}; expected a PartialValidationResult('pass' | 'fail' | 'unknown')"
            )
        return result

    async def check_final(self) -> ValidationResult:
        result: Any = await _call_user_code(self.requirement.validate, self.backend, self.ctx)
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


class StrategySegmenter:
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


def copy_requirement(requirement: Requirement) -> Requirement:
    """The validator's own copy of ``requirement``: ``copy.copy``, a *shallow* copy, as Mellea.

    Rebinding an attribute on the copy (``self.count += 1``, ``self.seen = [*self.seen, c]``)
    never reaches the caller's object, or another stream's copy. What the attributes refer to is
    shared, on purpose: a ``threading.Lock``, a client, a logger, or a list or dict the
    requirement shares with its caller keep working (a deep copy would fail on the lock, open
    a second client, and record into a copy of the list nobody reads). The caveat: mutating a
    shared container in place (``self.seen.append(c)``) is seen by the caller and by every
    other stream's copy of the requirement. Per-stream state belongs in attributes that are
    rebound, or in new containers made by ``stream_validate`` itself; a requirement that needs
    more isolation defines ``__copy__``. Raises InvalidInputError if ``copy.copy`` fails.
    """
    try:
        return copy.copy(requirement)
    except Exception as exc:
        raise InvalidInputError(
            f"requirement {requirement!r} cannot be copied for its validator "
            f"(copy.copy raised {exc!r}); give it a __copy__ that returns an independent copy"
        ) from exc


def chunker_factory(chunking: str | ChunkingStrategy) -> Callable[[], ChunkingStrategy]:
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


@dataclass(frozen=True, slots=True)
class AttemptData:
    """The facade's data of one attempt (the payload of its StreamAttempt): its generation,
    the context after it, and its validators' requirement copies, in requirement order."""

    mot: ModelOutputThunk[Any]
    ctx: Context
    requirements: list[Requirement]


def make_attempt(
    mot: ModelOutputThunk[Any],
    ctx: Context,
    requirements: list[Requirement],
    strategy: ChunkingStrategy,
    judge: Backend,
) -> StreamAttempt:
    """One attempt of a stream: read ``mot``'s generation through the engine's handle, chunk it
    with ``strategy``, judge it with one check per requirement copy (on ``judge``, in ``ctx``)."""
    handle = mot.handle
    if handle is None:
        raise InvalidInputError(
            "stream_with_chunking needs a generation running on an actor system; the backend "
            "returned a thunk without one"
        )
    return StreamAttempt(
        source=handle,
        segmenter=StrategySegmenter(strategy),
        checks=[RequirementCheck(r, judge, ctx) for r in requirements],
        payload=AttemptData(mot, ctx, requirements),
    )
