"""Requirements and validation results.

A :class:`Requirement` is a constraint on a model output: a natural-language ``description``
(rendered into ``Instruction`` prompts unless ``check_only``) and either a ``validation_fn``
(plain Python, sync or async) or, without one, an LLM-as-a-judge check. After the output is
complete, :meth:`Requirement.validate` gives the final :class:`ValidationResult`; during
streaming, a tri-state :class:`PartialValidationResult` per chunk.

Two ways to write a streaming requirement, both served by both streaming APIs
(``stream_with_chunking``, Mellea 0.7.0, and ``stream``, Mellea 0.8.0):

* **Mellea 0.7.0** — override ``stream_validate(chunk, *, backend, ctx)`` and return one
  ``PartialValidationResult`` per chunk;
* **Mellea 0.8.0** — override ``_stream_validate(chunk, *, backend, ctx)`` (same job, same
  result) and let the base class's ``stream_validate(delta, *, backend, ctx, flush=False)``
  drive it: with ``Requirement(chunking=…)`` the requirement re-chunks what it is given at its
  own granularity, judges each of its chunks, and returns their results as a list; at the end of
  the stream ``flush=True`` (or :meth:`Requirement.stream_flush`) judges the fragment its chunker
  held back. Per stream the results become one :class:`PartialValidationSummary`.

The engines tell them apart with :func:`stream_validation_style`, so an override written for
one version never gets the other version's call (a 0.7-style override is never passed
``flush``). Called directly, the base ``stream_validate`` answers as Mellea 0.7.0 did (one
result) without ``flush``, and as Mellea 0.8.0 does (a list) with it.

Requirements are plain objects: the streaming engine gives every validator its own shallow
``copy.copy`` of the requirement, as Mellea does: rebinding an attribute on ``self`` stays
private to that stream, while what the attributes refer to (a lock, a client, a list) is shared
with the caller — mutating a shared container in place is seen by every stream. A copy starts
with no chunker state of its own (``__copy__``; a subclass defining ``__copy__`` should call
``super().__copy__()``, as in Mellea 0.8.0).
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args, overload

from mellea_actors.core.cblock import CBlock, Component, render_plain
from mellea_actors.core.chunking import Chunker, ChunkingStrategy, resolve_chunking_strategy
from mellea_actors.core.context_chain import SimpleContext
from mellea_actors.core.message import Message
from mellea_actors.errors import InvalidInputError, InvalidVerdictError

if TYPE_CHECKING:
    import pydantic

    from mellea_actors.core.backend import Backend
    from mellea_actors.core.context_chain import Context
    from mellea_actors.core.model_output import ModelOutputThunk

__all__ = [
    "PartialValidationResult",
    "PartialValidationSummary",
    "Requirement",
    "ValidationResult",
    "check",
    "default_output_to_bool",
    "req",
    "reqify",
    "simple_validate",
]

PartialVerdict = Literal["pass", "fail", "unknown"]
_PARTIAL_VERDICTS: tuple[str, ...] = get_args(PartialVerdict)


class ValidationResult:
    """The outcome of validating one requirement.

    Args:
        result: whether the requirement passed.
        reason: a human-readable explanation.
        score: an optional numeric score.
        thunk: the judge's ``ModelOutputThunk`` when an LLM judged.
        context: the context of the judge's generation, if any.
    """

    def __init__(
        self,
        result: bool,
        *,
        reason: str | None = None,
        score: float | None = None,
        thunk: ModelOutputThunk | None = None,
        context: Context | None = None,
    ) -> None:
        self._result = result
        self._reason = reason
        self._score = score
        self._thunk = thunk
        self._context = context

    @property
    def reason(self) -> str | None:
        """Why the requirement passed or failed."""
        return self._reason

    @property
    def score(self) -> float | None:
        """An optional score."""
        return self._score

    @property
    def thunk(self) -> ModelOutputThunk | None:
        """The judge's output, when an LLM judged."""
        return self._thunk

    @property
    def context(self) -> Context | None:
        """The judge's context, when a backend was used."""
        return self._context

    def as_bool(self) -> bool:
        """True if the requirement passed."""
        return bool(self._result)

    def __bool__(self) -> bool:
        return self.as_bool()

    def __repr__(self) -> str:
        return f"ValidationResult({self._result!r}, reason={self._reason!r}, score={self._score!r})"


class PartialValidationResult:
    """A tri-state verdict on one streamed chunk.

    Args:
        success: ``"pass"`` (fine so far), ``"fail"`` (violated: stop the stream) or
            ``"unknown"`` (cannot tell yet). Anything else raises ``InvalidInputError``
            (a ``ValueError``).
        reason, score, thunk, context: as in :class:`ValidationResult`.
    """

    def __init__(
        self,
        success: PartialVerdict,
        *,
        reason: str | None = None,
        score: float | None = None,
        thunk: ModelOutputThunk | None = None,
        context: Context | None = None,
    ) -> None:
        if not isinstance(success, str) or success not in _PARTIAL_VERDICTS:
            raise InvalidInputError(
                f"success must be 'pass', 'fail', or 'unknown', got {success!r}"
            )
        self._success: PartialVerdict = success
        self._reason = reason
        self._score = score
        self._thunk = thunk
        self._context = context

    @property
    def success(self) -> PartialVerdict:
        """The verdict: ``"pass"``, ``"fail"`` or ``"unknown"``."""
        return self._success

    @property
    def reason(self) -> str | None:
        """Why."""
        return self._reason

    @property
    def score(self) -> float | None:
        """An optional score."""
        return self._score

    @property
    def thunk(self) -> ModelOutputThunk | None:
        """The output of a model call made to decide, if any."""
        return self._thunk

    @property
    def context(self) -> Context | None:
        """The context of that model call, if any."""
        return self._context

    def as_bool(self) -> bool:
        """True only for ``"pass"`` (``"unknown"`` is not a failure; check ``success``)."""
        return self._success == "pass"

    def __bool__(self) -> bool:
        return self.as_bool()

    def __repr__(self) -> str:
        return (
            f"PartialValidationResult({self._success!r}, reason={self._reason!r}, "
            f"score={self._score!r})"
        )


@dataclass(frozen=True, slots=True)
class PartialValidationSummary:
    """One requirement's verdict on one piece of a stream (Mellea 0.8.0).

    A requirement with its own ``chunking`` re-chunks what it is given, so one piece can give it
    several chunks to judge, or none yet; :meth:`from_results` sums their results up. This is
    what ``stream()``'s :class:`~mellea_actors.stdlib.streaming.QuickCheckEvent` carries per
    requirement (``stream_with_chunking``'s carries a ``PartialValidationResult``, as in 0.7).

    Args:
        results: the per-chunk results, in order (never empty when made by the engine).
        success: ``"fail"`` if a chunk failed, ``"pass"`` if every chunk passed, else
            ``"unknown"`` (an undecided chunk, or no result).
        failure: the failing chunk's result (judging stops at the first one), else ``None``.
        reason: the failing chunk's reason, else ``None``.
    """

    results: list[PartialValidationResult]
    success: PartialVerdict
    failure: PartialValidationResult | None
    reason: str | None

    @classmethod
    def from_results(cls, results: Sequence[PartialValidationResult]) -> PartialValidationSummary:
        """Sum ``results`` up (see the class docstring); no results sum up to "unknown"."""
        items = list(results)
        failure = next((r for r in items if r.success == "fail"), None)
        success: PartialVerdict
        if failure is not None:
            success = "fail"
        elif items and all(r.success == "pass" for r in items):
            success = "pass"
        else:
            success = "unknown"
        return cls(items, success, failure, None if failure is None else failure.reason)


def combine_verdicts(results: Sequence[PartialValidationResult]) -> PartialValidationResult:
    """One ``PartialValidationResult`` for several (a Mellea 0.7.0 caller expects one): the
    only one, else the failing one, else the last one with the summed-up verdict."""
    if len(results) == 1:
        return results[0]
    summary = PartialValidationSummary.from_results(results)
    if summary.failure is not None:
        return summary.failure
    last = next((r for r in reversed(results) if r.success == summary.success), None)
    return last if last is not None else PartialValidationResult(summary.success)


StreamStyle = Literal["mellea08", "mellea07", "driver"]
"""How a requirement class does streaming validation (:func:`stream_validation_style`)."""


def stream_validation_style(requirement: object) -> StreamStyle:
    """Which way ``requirement``'s class writes streaming validation.

    * ``"mellea08"``: it keeps the base ``stream_validate`` (the 0.8 driver); its per-chunk
      judge is ``_stream_validate`` (the base one says "unknown");
    * ``"mellea07"``: it overrides ``stream_validate`` with Mellea 0.7.0's signature (no
      ``flush``): that override *is* its per-chunk judge, one result per chunk;
    * ``"driver"``: it overrides ``stream_validate`` with a ``flush`` parameter (or
      ``**kwargs``): its own 0.8-style driver, called with ``flush`` and answering a list (a
      single result is accepted too).
    """
    method = getattr(type(requirement), "stream_validate", None)
    if method is None or method is Requirement.stream_validate:
        return "mellea08"
    try:
        return _override_style(method)
    except TypeError:  # an unhashable callable
        return _override_style.__wrapped__(method)


@functools.lru_cache(maxsize=512)
def _override_style(method: Callable[..., Any]) -> StreamStyle:
    """The style of a ``stream_validate`` override: has it a ``flush`` parameter?"""
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):  # a callable without a signature: judged as 0.7 did
        return "mellea07"
    if any(p.name == "flush" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return "driver"
    return "mellea07"


UserCall = Callable[..., Awaitable[Any]]
"""How the engine calls user code: ``await call(fn, *args, **kwargs)``."""


async def call_directly(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, awaited if it returned an awaitable (sync or async user code)."""
    result = fn(*args, **kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result


def checked_verdict(
    result: object, owner: object, method: str, where: str = ""
) -> PartialValidationResult:
    """``result`` if it is a ``PartialValidationResult``; else ``InvalidVerdictError`` naming
    ``owner``'s ``method`` (and ``where``, e.g. "for chunk 3")."""
    if isinstance(result, PartialValidationResult):
        return result
    name = owner if isinstance(owner, str) else type(owner).__name__
    raise InvalidVerdictError(
        f"{name}.{method}() returned {type(result).__name__} {result!r}{where}; expected a "
        "PartialValidationResult('pass' | 'fail' | 'unknown')"
    )


async def drive_stream_validation(
    requirement: Requirement,
    delta: str,
    *,
    backend: Backend,
    ctx: Context,
    flush: bool,
    judge: Callable[..., Any] | None = None,
    call: UserCall = call_directly,
    owner: object = None,
) -> list[PartialValidationResult]:
    """Mellea 0.8.0's streaming driver, for any per-chunk ``judge`` (default: the requirement's
    ``_stream_validate``; the engines pass a 0.7-style ``stream_validate`` override).

    Without ``requirement.chunking``: ``[judge(delta)]`` (``[unknown]`` for an empty delta,
    without calling it). With it: ``delta`` is fed to the requirement's own :class:`Chunker`
    and each chunk it completes is judged, stopping after the first "fail"; with ``flush`` and
    no fail, the chunker's trailing fragment is judged too (:meth:`Requirement.stream_flush`).
    Never empty: ``[unknown]`` when nothing was judged. ``call`` runs the user's code (the
    engines run a plain ``def`` in a worker thread); a result that is not a
    ``PartialValidationResult`` raises ``InvalidVerdictError``.
    """
    fn = judge if judge is not None else requirement._stream_validate
    method = getattr(fn, "__name__", "_stream_validate")
    who = requirement if owner is None else owner

    async def one(chunk: str) -> PartialValidationResult:
        result = await call(fn, chunk, backend=backend, ctx=ctx)
        return checked_verdict(result, who, method)

    if getattr(requirement, "chunking", None) is None:
        return [await one(delta)] if delta else [PartialValidationResult("unknown")]
    chunker = requirement._stream_chunker()
    results: list[PartialValidationResult] = []
    for chunk in chunker.feed(delta):
        results.append(await one(chunk))
        if results[-1].success == "fail":
            return results
    if flush:
        if judge is None and type(requirement).stream_flush is not Requirement.stream_flush:
            flushed = await call(requirement.stream_flush, backend=backend, ctx=ctx)
            results.extend(checked_verdict(r, who, "stream_flush") for r in flushed)
        else:
            for chunk in chunker.flush():
                results.append(await one(chunk))
                if results[-1].success == "fail":
                    break
    return results or [PartialValidationResult("unknown")]


def default_output_to_bool(x: CBlock | ModelOutputThunk | str) -> bool:
    """True when the judge's answer is "yes": exactly ``yes``/``y``, or any word ``yes``.

    Case-insensitive; ``x`` is converted with ``str()``.
    """
    output = str(x).strip()
    if output.upper() in ("YES", "Y"):
        return True
    return any(word.upper() == "YES" for word in re.split(r"\W+", output))


_JUDGE_PROMPT = (
    "Requirement: {description}\n"
    "\n"
    "Output:\n"
    "{output}\n"
    "\n"
    "Does the output satisfy the requirement? Answer with only 'yes' or 'no'."
)

ValidationFn = Callable[["Context"], Any]
"""``ctx -> bool | ValidationResult | (bool, reason)``, or an awaitable of one of those."""


def _normalise_validation(result: object, fn: object) -> ValidationResult:
    if isinstance(result, ValidationResult):
        return result
    if isinstance(result, bool):
        return ValidationResult(result)
    if (
        isinstance(result, tuple)
        and len(result) == 2
        and isinstance(result[0], bool)
        and isinstance(result[1], str)
    ):
        return ValidationResult(result[0], reason=result[1])
    name = getattr(fn, "__qualname__", repr(fn))
    raise InvalidInputError(
        f"validation function {name} returned {type(result).__name__} ({result!r}); "
        "expected a bool, a ValidationResult or a (bool, reason) tuple"
    )


async def _last_output_text(ctx: Context) -> str:
    """The text of the newest model output in ``ctx`` (awaited if still pending)."""
    thunk = ctx.last_output()
    if thunk is not None:
        return await thunk.avalue()
    for item in reversed(ctx.as_list(last_n_components=3)):
        if getattr(item, "role", None) == "assistant":
            return render_plain(item)
    raise InvalidInputError(
        "cannot validate: the context holds no model output (no ModelOutputThunk or "
        "assistant Message among its last items)"
    )


class Requirement(Component[str]):
    """A constraint on a model output.

    Args:
        description: what the output must satisfy; rendered into ``Instruction`` prompts
            (unless ``check_only``) and used by the LLM judge.
        validation_fn: ``ctx -> bool | ValidationResult | (bool, reason)`` (or an awaitable of
            one); when given, it replaces the LLM judge.
        output_to_bool: turns the judge's answer into pass/fail (default: "yes" detection).
        check_only: validate, but do not render the description into prompts.
        chunking: (Mellea 0.8.0) this requirement's own streaming granularity: ``"sentence"``,
            ``"word"``, ``"paragraph"`` or a ``ChunkingStrategy``; it re-chunks the stream and
            judges each of its own chunks (see :meth:`stream_validate`). ``None`` (default):
            it judges the stream's chunks as they come. An unknown alias raises
            ``InvalidInputError``.

    Subclasses may call ``super().__init__()`` with no arguments and override
    :meth:`format_for_llm`, :meth:`validate`, and for streaming either :meth:`stream_validate`
    (Mellea 0.7.0) or :meth:`_stream_validate` (Mellea 0.8.0; see the module docstring); state
    kept in plain attributes is isolated per stream when rebound (each validator works on a
    shallow copy).

    Attributes:
        chunking: the resolved strategy, or ``None``.
    """

    description: str | None = None
    validation_fn: ValidationFn | None = None
    check_only: bool = False
    chunking: ChunkingStrategy | None = None
    _chunker: Chunker | None = None  # this copy's chunker for ``chunking`` (made on first use)

    def __init__(
        self,
        description: str | None = None,
        validation_fn: ValidationFn | None = None,
        *,
        output_to_bool: Callable[[Any], bool] | None = default_output_to_bool,
        check_only: bool = False,
        chunking: str | ChunkingStrategy | None = None,
    ) -> None:
        if description is not None and not isinstance(description, str):
            raise InvalidInputError(
                f"requirement description must be a str or None, got "
                f"{type(description).__name__}: {description!r}"
            )
        if validation_fn is not None and not callable(validation_fn):
            raise InvalidInputError(f"validation_fn must be callable, got {validation_fn!r}")
        if output_to_bool is not None and not callable(output_to_bool):
            raise InvalidInputError(f"output_to_bool must be callable, got {output_to_bool!r}")
        self.description = description
        self.validation_fn = validation_fn
        self.output_to_bool = output_to_bool
        self.check_only = bool(check_only)
        self.chunking = resolve_chunking_strategy(chunking)

    def __copy__(self) -> Requirement:
        """A shallow copy (what ``copy.copy`` does by default) without this object's chunker:
        the copy starts its own stream. Subclasses defining ``__copy__`` should call this."""
        reduced: Any = self.__reduce_ex__(4)  # what copy.copy would use, without __copy__
        clone: Requirement = reduced[0](*reduced[1])
        state = reduced[2] if len(reduced) > 2 else None
        if state:
            if hasattr(clone, "__setstate__"):
                clone.__setstate__(state)
            else:
                attrs, slots = state if isinstance(state, tuple) else (state, None)
                if attrs:
                    clone.__dict__.update(attrs)
                for name, value in (slots or {}).items():
                    setattr(clone, name, value)
        if "_chunker" in getattr(clone, "__dict__", {}):
            del clone.__dict__["_chunker"]
        return clone

    def _stream_chunker(self) -> Chunker:
        """This object's :class:`Chunker` for :attr:`chunking` (made on first use)."""
        chunker = self.__dict__.get("_chunker")
        if chunker is None:
            assert self.chunking is not None
            chunker = self._chunker = Chunker(self.chunking)
        return chunker

    # -- validation -----------------------------------------------------------------------

    async def validate(
        self,
        backend: Backend,
        ctx: Context,
        *,
        format: type[pydantic.BaseModel] | None = None,
        model_options: dict[str, Any] | None = None,
    ) -> ValidationResult:
        """Validate the newest model output of ``ctx``.

        With a ``validation_fn``: its (awaited) result, normalised to a ``ValidationResult``.
        Otherwise LLM-as-a-judge: ``backend`` is asked, in a fresh ``SimpleContext``, whether
        the output satisfies the description; ``output_to_bool`` decides. The result's
        ``reason`` is the judge's answer, or the description when the answer is a bare
        yes/no; its ``thunk`` is the judge's output.

        Raises:
            InvalidInputError: the context has no model output, the requirement has nothing
                to judge by, or the validation function returned something unusable.
        """
        fn = self.validation_fn
        if fn is not None:
            result = fn(ctx)
            if inspect.isawaitable(result):
                result = await result
            return _normalise_validation(result, fn)

        to_bool = getattr(self, "output_to_bool", default_output_to_bool)
        if to_bool is None:
            raise InvalidInputError(
                f"{self!r} has neither a validation_fn nor an output_to_bool to judge with"
            )
        description = self.judge_description()
        if not description:
            raise InvalidInputError(
                f"{self!r} has no description for an LLM judge and no validation_fn"
            )
        output = await _last_output_text(ctx)

        prompt = _JUDGE_PROMPT.format(description=description, output=output)
        mot, judge_ctx = await backend.generate_from_context(
            Message("user", prompt), SimpleContext(), format=format, model_options=model_options
        )
        answer = await mot.avalue()
        bare = answer.strip().strip(".!").strip().lower()
        return ValidationResult(
            bool(to_bool(mot)),
            reason=description if bare in ("yes", "no") else answer,
            thunk=mot,
            context=judge_ctx,
        )

    @overload
    async def stream_validate(
        self, chunk: str, *, backend: Backend, ctx: Context, flush: None = None
    ) -> PartialValidationResult: ...

    @overload
    async def stream_validate(
        self, chunk: str, *, backend: Backend, ctx: Context, flush: bool
    ) -> list[PartialValidationResult]: ...

    async def stream_validate(
        self, chunk: str, *, backend: Backend, ctx: Context, flush: bool | None = None
    ) -> PartialValidationResult | list[PartialValidationResult]:
        """Judge one piece of a stream: a chunk (Mellea 0.7.0) or a delta (Mellea 0.8.0).

        Without ``flush`` (Mellea 0.7.0's call): one ``PartialValidationResult`` for ``chunk``,
        ``_stream_validate``'s (the default says ``"unknown"``; with ``chunking``, the chunks it
        completes are judged and their results combined into one: the failing one, else the
        last).

        With ``flush`` (Mellea 0.8.0's driver, ``flush=False`` included): the list of results
        of the chunks this piece completes for the requirement's own ``chunking`` (without it:
        of the piece itself), stopping after the first "fail"; with ``flush=True`` the
        fragment the chunker held back is judged too (end of stream). Never empty (a single
        ``"unknown"`` when nothing could be judged yet; an empty delta is not judged).

        Override this with the 0.7 signature (no ``flush``) to judge each chunk yourself, or
        :meth:`_stream_validate` (0.8); the engines call each the way it was written.
        Implementations may keep state on ``self`` (each stream's validator has its own shallow
        copy) and must not read the thunk's stream themselves.
        """
        if flush is None:
            if self.chunking is None:
                return checked_verdict(
                    await call_directly(self._stream_validate, chunk, backend=backend, ctx=ctx),
                    self,
                    "_stream_validate",
                )
            return combine_verdicts(
                await drive_stream_validation(self, chunk, backend=backend, ctx=ctx, flush=False)
            )
        return await drive_stream_validation(self, chunk, backend=backend, ctx=ctx, flush=flush)

    async def _stream_validate(
        self, chunk: str, *, backend: Backend, ctx: Context
    ) -> PartialValidationResult:
        """Judge one chunk of the stream (Mellea 0.8.0's override point): ``"pass"`` (fine so
        far), ``"fail"`` (stop the stream) or ``"unknown"`` (the default: cannot tell yet).

        ``chunk`` is one complete chunk: of this requirement's own ``chunking`` if it has one,
        else of the stream. State kept on ``self`` is per stream (a shallow copy per validator).
        """
        del chunk, backend, ctx
        return PartialValidationResult("unknown")

    async def stream_flush(
        self, *, backend: Backend, ctx: Context
    ) -> list[PartialValidationResult]:
        """Judge the fragment this requirement's chunker held back (Mellea 0.8.0; end of
        stream): its result(s) through ``_stream_validate``, or ``[]`` without ``chunking``
        or when nothing was held back."""
        if self.chunking is None or self.__dict__.get("_chunker") is None:
            return []
        return [
            checked_verdict(
                await call_directly(self._stream_validate, chunk, backend=backend, ctx=ctx),
                self,
                "_stream_validate",
            )
            for chunk in self._stream_chunker().flush()
        ]

    # -- Component ------------------------------------------------------------------------

    def judge_description(self) -> str | None:
        """What the LLM judge checks: the description, else a ``format_for_llm()`` string."""
        if self.description:
            return self.description
        rendered = self.format_for_llm()
        return rendered if isinstance(rendered, str) and rendered else None

    def parts(self) -> list[Component[Any] | CBlock | ModelOutputThunk]:
        """A requirement has no constituent parts."""
        return []

    def format_for_llm(self) -> str:
        """The description (``""`` if none)."""
        return self.description or ""

    def _parse(self, computed: ModelOutputThunk) -> str:
        value = computed.value
        return value if value is not None else ""

    def __repr__(self) -> str:
        extra = ", check_only=True" if self.check_only else ""
        return f"{type(self).__name__}({self.description!r}{extra})"


def reqify(r: str | Requirement) -> Requirement:
    """A ``str`` becomes ``Requirement(r)``; a ``Requirement`` is returned unchanged."""
    if isinstance(r, Requirement):
        return r
    if isinstance(r, str):
        return Requirement(r)
    raise InvalidInputError(
        f"a requirement must be a str or a Requirement, got {type(r).__name__}: {r!r}"
    )


def req(*args: Any, **kwargs: Any) -> Requirement:
    """Shorthand for ``Requirement(...)``."""
    return Requirement(*args, **kwargs)


def check(*args: Any, **kwargs: Any) -> Requirement:
    """Shorthand for ``Requirement(..., check_only=True)``: validated, never shown to the model."""
    return Requirement(*args, **kwargs, check_only=True)


def simple_validate(
    fn: Callable[[str], bool | tuple[bool, str]], reason: str | None = None
) -> Callable[[Context], ValidationResult]:
    """A ``validation_fn`` that applies ``fn`` to the text of the newest model output.

    ``fn`` returns a bool (``reason`` is then attached to the result) or ``(bool, reason)``.
    Without a computed model output in the context the result is a failure.
    """

    def validate(ctx: Context) -> ValidationResult:
        output = ctx.last_output()
        value = output.value if output is not None else None
        if value is None:
            return ValidationResult(False, reason="no computed model output to validate")
        result = fn(value)
        if isinstance(result, bool):
            return ValidationResult(result, reason=reason)
        return _normalise_validation(result, fn)

    return validate
