"""The adapters the streaming functions hand to their engine, one attempt at a time.

A requirement copy becomes a :class:`RequirementCheck` (a
:class:`~mellea_actors.runtime.stream_contract.ValidationCheck`), the chunking a
:class:`StrategySegmenter` or, for ``stream()``'s default ``chunking=None``, a
:class:`DeltaSegmenter` (both :class:`~mellea_actors.runtime.stream_contract.Segmenter`), and
:func:`make_attempt` bundles them with the generation's handle into a
:class:`~mellea_actors.runtime.stream_contract.StreamAttempt` whose payload is the facade's
:class:`AttemptData`. One engine serves both APIs; the adapters are where they differ:

* **the verdict** a check answers: ``stream_with_chunking`` (Mellea 0.7.0) gets one
  ``PartialValidationResult`` per requirement and chunk, ``stream`` (Mellea 0.8.0) a
  ``PartialValidationSummary`` (a requirement with its own ``chunking`` may judge several of
  its own chunks, or none, per stream chunk);
* **the requirement's style** (:func:`~mellea_actors.core.requirement.stream_validation_style`):
  a Mellea 0.7.0 ``stream_validate(chunk)`` override and a Mellea 0.8.0 ``_stream_validate``
  are both per-chunk judges, run through the same driver under both APIs; a requirement that
  overrides the 0.8 driver itself (``stream_validate(delta, flush=…)``) is called as one.

When some requirement needs more than the chunk text, the segmenter hands out :class:`Piece`
objects (a ``str`` the engine passes on untouched) that also carry the chunk's source segment
(what a requirement with its own ``chunking`` is fed, so its chunks are verbatim pieces of the
text even when the stream's chunker drops separators), whether it is the last chunk of a
natural end (``flush=True`` for the requirements' own chunkers), and the *residual round*: after
a natural end that flushed nothing, one empty piece gives every requirement with its own
``chunking`` the chance to judge the fragment its chunker held back (as Mellea 0.8.0 does). The
facade never shows that piece to a consumer (no ``ChunkEvent``, nothing in the chunk views).
What the segmenter found is recorded in the attempt's :class:`StreamPlan`.

What isolation and freshness mean for the user (copies taken before any request, fresh ones per
retry) is stated by :mod:`mellea_actors.stdlib.streaming`.

Threads: the checks and segmenters are used on the actor loop thread only (the check by its
validator, the segmenter by the stream's reader task), and the plan is written there; the rest
runs where the streaming functions and their attempt factory run.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mellea_actors.core.chunking import (
    ChunkingStrategy,
    ChunkTracker,
    resolve_chunking,
    validate_chunks,
)
from mellea_actors.core.requirement import (
    PartialValidationResult,
    PartialValidationSummary,
    Requirement,
    ValidationResult,
    checked_verdict,
    combine_verdicts,
    drive_stream_validation,
    stream_validation_style,
)
from mellea_actors.errors import InvalidInputError, InvalidVerdictError
from mellea_actors.runtime.crossing import in_thread
from mellea_actors.runtime.stream_contract import StreamAttempt

if TYPE_CHECKING:
    from mellea_actors.core.backend import Backend
    from mellea_actors.core.context_chain import Context
    from mellea_actors.core.model_output import ModelOutputThunk

__all__ = [
    "AttemptData",
    "DeltaSegmenter",
    "FaultVerdict",
    "Piece",
    "RequirementCheck",
    "StrategySegmenter",
    "StreamPlan",
    "chunker_factory",
    "copy_requirement",
    "make_attempt",
    "requirement_label",
    "verdict_failure",
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


class FaultVerdict(PartialValidationResult):
    """The "fail" that stands for a validator fault under the fail-closed policy (no verdict was
    given: the check raised, answered a non-verdict or missed its deadline)."""


def verdict_failure(verdict: object) -> PartialValidationResult | None:
    """The failing ``PartialValidationResult`` of a verdict of either API (None if it did not
    fail)."""
    if isinstance(verdict, PartialValidationSummary):
        return verdict.failure
    if isinstance(verdict, PartialValidationResult) and verdict.success == "fail":
        return verdict
    return None


class RequirementCheck:
    """A requirement copy as a runtime ``ValidationCheck`` (used on the actor loop only).

    ``summaries``: answer ``PartialValidationSummary`` verdicts (``stream()``, Mellea 0.8.0);
    otherwise one ``PartialValidationResult`` per chunk (``stream_with_chunking``, 0.7.0).
    """

    __slots__ = ("backend", "ctx", "label", "own", "requirement", "style", "summaries")

    def __init__(
        self, requirement: Requirement, backend: Backend, ctx: Context, *, summaries: bool = False
    ) -> None:
        self.requirement = requirement
        self.backend = backend
        self.ctx = ctx
        self.label = requirement_label(requirement)
        self.style = stream_validation_style(requirement)
        self.summaries = summaries
        self.own = getattr(requirement, "chunking", None) is not None  # its own chunking

    async def check_chunk(self, index: int, text: str) -> Any:
        results = await self._judge(index, text)
        if self.summaries:
            return PartialValidationSummary.from_results(results)
        return combine_verdicts(results)

    async def _judge(self, index: int, text: str) -> list[PartialValidationResult]:
        """The requirement's results for one piece of the stream, never empty."""
        requirement = self.requirement
        where = f" for chunk {index}"
        own = self.own
        final = isinstance(text, Piece) and text.final
        fed = str(text.segment if own and isinstance(text, Piece) else text)
        if self.style == "driver":  # its own 0.8-style driver: called as one
            result: Any = await _call_user_code(
                requirement.stream_validate, fed, backend=self.backend, ctx=self.ctx, flush=final
            )
            return self._as_results(result, where)
        judge: Callable[..., Any]
        if self.style == "mellea07":
            judge, method = requirement.stream_validate, "stream_validate"
        else:
            judge, method = requirement._stream_validate, "_stream_validate"
        if not own:
            if isinstance(text, Piece) and text.residual:
                return [PartialValidationResult("unknown")]  # nothing held back to judge
            result = await _call_user_code(judge, fed, backend=self.backend, ctx=self.ctx)
            return [checked_verdict(result, self.label, method, where)]
        return await drive_stream_validation(
            requirement,
            fed,
            backend=self.backend,
            ctx=self.ctx,
            flush=final,
            judge=judge,
            call=_call_user_code,
            owner=self.label,
        )

    def _as_results(self, result: Any, where: str) -> list[PartialValidationResult]:
        if isinstance(result, PartialValidationResult):
            return [result]
        if isinstance(result, list | tuple) and all(
            isinstance(r, PartialValidationResult) for r in result
        ):
            return list(result) or [PartialValidationResult("unknown")]
        raise InvalidVerdictError(
            f"{self.label}.stream_validate() returned {type(result).__name__} {result!r}{where}; "
            "expected a list of PartialValidationResult('pass' | 'fail' | 'unknown')"
        )

    async def check_final(self) -> ValidationResult:
        result: Any = await _call_user_code(self.requirement.validate, self.backend, self.ctx)
        if not isinstance(result, ValidationResult):
            raise InvalidVerdictError(
                f"{self.label}.validate() returned {type(result).__name__} {result!r}; "
                "expected a ValidationResult"
            )
        return result

    def is_fail(self, verdict: Any) -> bool:
        return bool(verdict.success == "fail")

    def final_passed(self, result: ValidationResult) -> bool:
        return result.as_bool()

    def _verdict(self, result: PartialValidationResult) -> Any:
        return PartialValidationSummary.from_results([result]) if self.summaries else result

    def unknown(self, reason: str) -> Any:
        return self._verdict(PartialValidationResult("unknown", reason=reason))

    def fail(self, reason: str) -> Any:
        return self._verdict(FaultVerdict("fail", reason=reason))

    def final_failed(self, reason: str) -> ValidationResult:
        return ValidationResult(False, reason=reason)


class Piece(str):
    """A chunk handed to the engine when a requirement needs more than its text (see the
    module docstring): the chunk's text, plus ``segment`` (its source text, the gap before it
    included), ``final`` (the last chunk of a natural end) and ``residual`` (the empty piece of
    the residual round). The engine only passes it on; the facade shows consumers a plain str.
    """

    segment: str
    final: bool
    residual: bool

    def __new__(
        cls, text: str, segment: str, *, final: bool = False, residual: bool = False
    ) -> Piece:
        piece = super().__new__(cls, text)
        piece.segment = segment
        piece.final = final
        piece.residual = residual
        return piece


@dataclass(slots=True)
class StreamPlan:
    """What one attempt's segmenter hands out and found (written on the loop thread when the
    natural end is segmented; read by the facade after the fact).

    ``pieces``: chunks are :class:`Piece` objects; ``residual``: a natural end that flushed
    nothing ends with a residual round; ``flush_from``: the index of the first chunk found at
    the natural end (by the strategy's ``flush``, or the residual round), None before it;
    ``residual_at``: the index of the residual round's piece, if there was one.
    """

    pieces: bool = False
    residual: bool = False
    flush_from: int | None = None
    residual_at: int | None = None


class _Segmenter:
    """What both segmenters share: counting chunks, making pieces, the natural end."""

    __slots__ = ("_found", "_plan")

    def __init__(self, plan: StreamPlan | None = None) -> None:
        self._plan = plan if plan is not None else StreamPlan()
        self._found = 0

    def _hand_out(self, spans: list[tuple[str, str]], *, end: bool) -> list[tuple[str, str]]:
        plan = self._plan
        if end:
            plan.flush_from = self._found
            if plan.residual and not spans:
                plan.residual_at = self._found
                spans = [(Piece("", "", final=True, residual=True), "")]
            elif plan.pieces and spans:
                chunk, segment = spans[-1]
                spans[-1] = (Piece(chunk, segment, final=True), segment)
        if plan.pieces:
            spans = [(c if isinstance(c, Piece) else Piece(c, s), s) for c, s in spans]
        self._found += len(spans)
        return spans


class DeltaSegmenter(_Segmenter):
    """``chunking=None`` (``stream()``'s default): every read of the generation is one chunk,
    its text as it came (what Mellea 0.8.0 calls a raw delta: the text of the deltas that
    arrived since the previous read). Nothing to flush."""

    __slots__ = ("_end",)

    def __init__(self, plan: StreamPlan | None = None) -> None:
        super().__init__(plan)
        self._end = 0

    def feed(self, text: str) -> list[tuple[str, str]]:
        new = text[self._end :]
        if not new:
            return []
        self._end = len(text)
        return self._hand_out([(new, new)], end=False)

    def finish(self, text: str) -> list[tuple[str, str]]:
        spans = self.feed(text)
        return spans + self._hand_out([], end=True)


class StrategySegmenter(_Segmenter):
    """A ChunkingStrategy as a runtime ``Segmenter``: new chunks with their source segments.

    Used by the stream's reader task only. Raises ``InvalidInputError`` (naming the strategy) for
    a chunk that is not the next verbatim piece of the text.
    """

    __slots__ = ("_end", "_strategy", "_tracker")

    def __init__(self, strategy: ChunkingStrategy, plan: StreamPlan | None = None) -> None:
        super().__init__(plan)
        self._strategy = strategy
        self._tracker = ChunkTracker(strategy)
        self._end = 0

    def feed(self, text: str) -> list[tuple[str, str]]:
        chunks = self._tracker.feed(text)
        return self._hand_out(self._spans(text, chunks, "split"), end=False) if chunks else []

    def finish(self, text: str) -> list[tuple[str, str]]:
        chunks = self._tracker.finish(text)
        return self._hand_out(self._spans(text, chunks, "flush") if chunks else [], end=True)

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
    the context after it, its validators' requirement copies, in requirement order, and what
    its segmenter found."""

    mot: ModelOutputThunk[Any]
    ctx: Context
    requirements: list[Requirement]
    plan: StreamPlan


def make_attempt(
    mot: ModelOutputThunk[Any],
    ctx: Context,
    requirements: list[Requirement],
    strategy: ChunkingStrategy | None,
    judge: Backend,
    *,
    summaries: bool = False,
) -> StreamAttempt:
    """One attempt of a stream: read ``mot``'s generation through the engine's handle, chunk it
    with ``strategy`` (None: one chunk per read, ``stream()``'s raw deltas), judge it with one
    check per requirement copy (on ``judge``, in ``ctx``; ``summaries``: ``stream()``'s
    verdicts)."""
    handle = mot.handle
    if handle is None:
        raise InvalidInputError(
            "streaming validation needs a generation running on an actor system; the backend "
            "returned a thunk without one"
        )
    own = [getattr(r, "chunking", None) is not None for r in requirements]
    plan = StreamPlan(
        pieces=any(own) or any(stream_validation_style(r) == "driver" for r in requirements),
        residual=any(own),
    )
    segmenter = DeltaSegmenter(plan) if strategy is None else StrategySegmenter(strategy, plan)
    return StreamAttempt(
        source=handle,
        segmenter=segmenter,
        checks=[RequirementCheck(r, judge, ctx, summaries=summaries) for r in requirements],
        payload=AttemptData(mot, ctx, requirements, plan),
    )
