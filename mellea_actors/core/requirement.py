"""Requirements and validation results.

A :class:`Requirement` is a constraint on a model output: a natural-language ``description``
(rendered into ``Instruction`` prompts unless ``check_only``) and either a ``validation_fn``
(plain Python, sync or async) or, without one, an LLM-as-a-judge check. During streaming,
:meth:`Requirement.stream_validate` gives a tri-state verdict per chunk
(:class:`PartialValidationResult`); after the output is complete, :meth:`Requirement.validate`
gives the final :class:`ValidationResult`.

Requirements are plain objects: the streaming engine gives every validator its own shallow
``copy.copy`` of the requirement, as Mellea does: rebinding an attribute on ``self`` stays
private to that stream, while what the attributes refer to (a lock, a client, a list) is shared
with the caller — mutating a shared container in place is seen by every stream.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, get_args

from mellea_actors.core.cblock import CBlock, Component, render_plain
from mellea_actors.core.context_chain import SimpleContext
from mellea_actors.core.message import Message
from mellea_actors.errors import InvalidInputError

if TYPE_CHECKING:
    import pydantic

    from mellea_actors.core.backend import Backend
    from mellea_actors.core.context_chain import Context
    from mellea_actors.core.model_output import ModelOutputThunk

__all__ = [
    "PartialValidationResult",
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

    Subclasses may call ``super().__init__()`` with no arguments and override
    :meth:`format_for_llm`, :meth:`validate` and :meth:`stream_validate`; state kept in plain
    attributes is isolated per stream when rebound (each validator works on a shallow copy).
    """

    description: str | None = None
    validation_fn: ValidationFn | None = None
    check_only: bool = False

    def __init__(
        self,
        description: str | None = None,
        validation_fn: ValidationFn | None = None,
        *,
        output_to_bool: Callable[[Any], bool] | None = default_output_to_bool,
        check_only: bool = False,
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

    async def stream_validate(
        self, chunk: str, *, backend: Backend, ctx: Context
    ) -> PartialValidationResult:
        """Judge one streamed chunk (the delta, not the accumulated text).

        The default says ``"unknown"``. Overrides may keep state on ``self`` (each stream's
        validator has its own shallow copy) and must not read the thunk's stream themselves.
        """
        return PartialValidationResult("unknown")

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
