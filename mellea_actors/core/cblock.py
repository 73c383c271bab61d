"""Content blocks and components: the pieces a prompt is made of.

- :class:`CBlock` wraps one string (or ``None``) plus free-form metadata.
- :class:`Component` is the protocol of composite, renderable things (``Message``,
  ``Instruction``, ``Requirement`` …): ``parts()``, ``format_for_llm()``, ``parse(thunk)``.
- :class:`TemplateRepresentation` is the structured rendering a component may return instead
  of a plain string.
- :func:`render_plain` turns any context item into the plain text a backend sends.

A ``ModelOutputThunk`` (``mellea_actors.core.model_output``) is deliberately *not* a
``CBlock``; this module recognises one by duck typing (:func:`is_model_output_thunk`) to avoid
an import cycle.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast, runtime_checkable

from mellea_actors.errors import InvalidInputError

if TYPE_CHECKING:
    from mellea_actors.core.model_output import ModelOutputThunk

__all__ = [
    "CBlock",
    "Component",
    "ComponentParseError",
    "S",
    "TemplateRepresentation",
    "blockify",
    "is_component",
    "is_model_output_thunk",
    "render_plain",
]

S = TypeVar("S", covariant=True)
"""The type a component parses a model output into (``str`` for most components)."""


class CBlock:
    """A block of content that can be input to or output from an LLM.

    Args:
        value: the text of the block (``None`` for "no text yet").
        meta: optional metadata (never sent to the model); defaults to an empty dict.
        cache: accepted for Mellea compatibility (a KV-cache hint); unused here.
    """

    def __init__(
        self, value: str | None, meta: dict[str, Any] | None = None, *, cache: bool = False
    ) -> None:
        if value is not None and not isinstance(value, str):
            raise InvalidInputError(
                f"CBlock value must be a str or None, got {type(value).__name__}: {value!r}"
            )
        self._underlying_value = value
        self._meta: dict[str, Any] = {} if meta is None else meta
        self.cache = cache

    @property
    def value(self) -> str | None:
        """The text of the block."""
        return self._underlying_value

    @value.setter
    def value(self, v: str) -> None:
        if v is not None and not isinstance(v, str):
            raise InvalidInputError(f"CBlock value must be a str, got {type(v).__name__}")
        self._underlying_value = v

    @property
    def meta(self) -> dict[str, Any]:
        """Metadata attached to the block."""
        return self._meta

    def __str__(self) -> str:
        """The value, or ``""`` when there is none."""
        return self._underlying_value if self._underlying_value else ""

    def __repr__(self) -> str:
        return f"CBlock({self._underlying_value!r}, {self._meta!r})"


class ComponentParseError(Exception):
    """Raised by :meth:`Component.parse` when the component's ``_parse`` fails."""


@runtime_checkable
class Component(Protocol[S]):
    """A composite data structure meant to be represented to an LLM.

    Subclass it (``class MyThing(Component[str])``) and implement :meth:`parts` and
    :meth:`format_for_llm`; override :meth:`_parse` to parse model output into ``S``
    (the default returns the output's text).
    """

    def parts(self) -> list[Component[Any] | CBlock | ModelOutputThunk]:
        """The constituent components and blocks of this component."""
        raise NotImplementedError("parts isn't implemented by default")

    def format_for_llm(self) -> TemplateRepresentation | str:
        """The representation of this component the backend renders into a prompt."""
        raise NotImplementedError("format_for_llm isn't implemented by default")

    def parse(self, computed: ModelOutputThunk) -> S:
        """Parse ``S`` from a computed output; failures raise :class:`ComponentParseError`."""
        try:
            return self._parse(computed)
        except Exception as e:
            raise ComponentParseError(f"component parsing failed: {e}") from e

    def _parse(self, computed: ModelOutputThunk) -> S:
        """Default parsing: the output text (``""`` when there is none)."""
        value = computed.value
        return cast(S, value if value is not None else "")


@dataclass
class TemplateRepresentation:
    """A component rendered as named arguments (Mellea's shape; we render it as plain text).

    Attributes:
        obj: the component represented.
        args: named values (``"content"`` is what :func:`render_plain` uses for the text).
        tools: accepted for compatibility; tools are not supported by this backend.
        fields: optional positional values.
        template: an optional template string (informational; no Jinja is run).
        template_order: Mellea's template lookup hint (informational).
        images: images attached to the representation.
    """

    obj: Any
    args: dict[str, Any]
    tools: dict[str, Any] | None = None
    fields: list[Any] | None = None
    template: str | None = None
    template_order: list[str] | None = None
    images: list[Any] | None = None


_COMPONENT_TYPES: dict[type, bool] = {}


def is_component(x: object) -> bool:
    """``isinstance(x, Component)``, answered once per type: the protocol's members are methods,
    so the answer depends on the class only, and a protocol check costs tens of microseconds
    (every request renders several components)."""
    kind = type(x)
    known = _COMPONENT_TYPES.get(kind)
    if known is None:
        known = _COMPONENT_TYPES[kind] = isinstance(x, Component)
    return known


def is_model_output_thunk(x: object) -> bool:
    """True when ``x`` behaves like a ``ModelOutputThunk`` (has ``is_computed`` and ``avalue``)."""
    return callable(getattr(x, "is_computed", None)) and callable(getattr(x, "avalue", None))


def blockify(s: object) -> CBlock | Component[Any] | ModelOutputThunk:
    """Wrap a ``str`` into a :class:`CBlock`; return blocks, components and thunks unchanged."""
    if isinstance(s, str):
        return CBlock(s)
    if isinstance(s, CBlock) or is_model_output_thunk(s) or is_component(s):
        return cast("CBlock | Component[Any] | ModelOutputThunk", s)
    raise InvalidInputError(
        f"expected a str, CBlock, Component or ModelOutputThunk, got {type(s).__name__}: {s!r}"
    )


def render_plain(x: object) -> str:
    """The plain text of a context item, as a backend sends it.

    ``str`` → itself; :class:`CBlock` or thunk → its value (``""`` if none yet); a component →
    its ``format_for_llm()`` string, or the ``"content"`` argument of its
    :class:`TemplateRepresentation` (else its non-None arguments as ``name: value`` lines).
    """
    if isinstance(x, str):
        return x
    if isinstance(x, CBlock):
        return str(x)
    if is_model_output_thunk(x):
        value = getattr(x, "value", None)
        return value if isinstance(value, str) else ""
    if isinstance(x, TemplateRepresentation):
        if "content" in x.args:
            return render_plain(x.args["content"])
        return render_plain({k: v for k, v in x.args.items() if v is not None})
    if is_component(x):
        return render_plain(cast(Component[Any], x).format_for_llm())
    if isinstance(x, Mapping):
        return "\n".join(f"{k}: {render_plain(v)}" for k, v in x.items())
    if isinstance(x, Iterable):
        return "\n".join(render_plain(v) for v in x)
    return "" if x is None else str(x)
