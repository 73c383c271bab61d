"""The standard components: :class:`Message` (one chat turn) and :class:`Instruction` (a task).

``Instruction.format_for_llm()`` renders one plain-text user prompt (no template engine): the
description, the requirements the model should see, grounding context and examples, laid out
compactly for small instruct models.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mellea_actors.core.cblock import (
    CBlock,
    Component,
    TemplateRepresentation,
    blockify,
    is_component,
    is_model_output_thunk,
    render_plain,
)
from mellea_actors.core.message import Message
from mellea_actors.core.requirement import Requirement, reqify
from mellea_actors.errors import InvalidInputError

if TYPE_CHECKING:
    from mellea_actors.core.model_output import ModelOutputThunk

__all__ = ["CBlock", "Component", "Instruction", "Message", "TemplateRepresentation"]

# -- user variables -----------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_NAME = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*")


def apply_user_variables(text: str, variables: Mapping[str, object], where: str) -> str:
    """Replace every ``{{ name }}`` in ``text`` by ``str(variables[name])``.

    Raises:
        InvalidInputError: a placeholder names a missing variable, or is not a plain name.
    """

    def substitute(match: re.Match[str]) -> str:
        name_match = _NAME.fullmatch(match.group(1))
        if name_match is None:
            raise InvalidInputError(
                f"unsupported placeholder {match.group(0)!r} in the {where}: only "
                "{{ name }} placeholders are supported"
            )
        name = name_match.group(1)
        if name not in variables:
            given = ", ".join(sorted(variables)) or "none"
            raise InvalidInputError(
                f"user variable {name!r} is used in the {where} but not given in "
                f"user_variables (given: {given})"
            )
        return str(variables[name])

    return _PLACEHOLDER.sub(substitute, text)


def _substitute_block(
    value: str | CBlock, variables: Mapping[str, object] | None, where: str
) -> str | CBlock:
    if variables is None:
        return value
    if isinstance(value, str):
        return apply_user_variables(value, variables, where)
    if value.value is None:
        return value
    return CBlock(apply_user_variables(value.value, variables, where), dict(value.meta))


# -- rendering ----------------------------------------------------------------------------


def _bullets(items: Iterable[str]) -> str:
    return "\n".join("- " + item.strip().replace("\n", "\n  ") for item in items)


def _requirement_text(r: Requirement) -> str | None:
    """What the model is told about ``r`` (``None``: nothing)."""
    if getattr(r, "check_only", False):
        return None
    description = getattr(r, "description", None)
    if description:
        return str(description)
    rendered = r.format_for_llm()
    return rendered if isinstance(rendered, str) and rendered.strip() else None


class Instruction(Component[str]):
    """A task for the model: what to do, under which requirements, with which material.

    Args:
        description: the task.
        requirements: constraints; strings become ``Requirement(s)``.
        icl_examples: example outputs.
        grounding_context: named material (name → text, block, component or thunk).
        user_variables: values for ``{{ name }}`` placeholders in the description, prefix,
            requirement descriptions, examples and grounding texts (a missing one raises
            ``InvalidInputError``). Requirement objects are copied before substitution.
        prefix: text put before the description.
        output_prefix: text put at the very end of the prompt.
        images: images for the prompt.
    """

    def __init__(
        self,
        description: str | CBlock | None = None,
        requirements: Sequence[Requirement | str] | None = None,
        icl_examples: Sequence[str | CBlock] | None = None,
        grounding_context: Mapping[str, Any] | None = None,
        user_variables: Mapping[str, object] | None = None,
        prefix: str | CBlock | None = None,
        output_prefix: str | CBlock | None = None,
        images: Sequence[str | CBlock] | None = None,
    ) -> None:
        variables = self._check_variables(user_variables)
        self._description = self._text_block(description, "description", variables)
        self._prefix = self._text_block(prefix, "prefix", variables)
        self._output_prefix = self._text_block(output_prefix, "output_prefix", variables)

        self._requirements: list[Requirement] = []
        for i, r in enumerate(self._sequence(requirements, "requirements")):
            if isinstance(r, str):
                r = _substitute_block(r, variables, f"requirement {i}")
            elif isinstance(r, Requirement) and variables is not None and r.description:
                text = apply_user_variables(r.description, variables, f"requirement {i}")
                if text != r.description:
                    r = copy.deepcopy(r)
                    r.description = text
            self._requirements.append(reqify(r))

        self._icl_examples: list[CBlock] = []
        for i, ex in enumerate(self._sequence(icl_examples, "icl_examples")):
            if not isinstance(ex, str | CBlock):
                raise InvalidInputError(
                    f"icl_examples[{i}] must be a str or CBlock, got {type(ex).__name__}"
                )
            block = blockify(_substitute_block(ex, variables, f"example {i}"))
            assert isinstance(block, CBlock)
            self._icl_examples.append(block)

        if grounding_context is not None and not isinstance(grounding_context, Mapping):
            raise InvalidInputError(
                "grounding_context must be a mapping of name → text, got "
                f"{type(grounding_context).__name__}"
            )
        self._grounding_context: dict[str, CBlock | Component[Any] | ModelOutputThunk] = {}
        for key, value in (grounding_context or {}).items():
            if not isinstance(key, str):
                raise InvalidInputError(f"grounding_context keys must be str, got {key!r}")
            if isinstance(value, str | CBlock):
                value = _substitute_block(value, variables, f"grounding context {key!r}")
            elif not (is_model_output_thunk(value) or is_component(value)):
                raise InvalidInputError(
                    f"grounding_context[{key!r}] must be a str, CBlock, Component or "
                    f"ModelOutputThunk, got {type(value).__name__}"
                )
            self._grounding_context[key] = blockify(value)

        self._images: list[str | CBlock] | None = (
            None if images is None else list(self._sequence(images, "images"))
        )
        self._repair_string: str | None = None

    # -- construction helpers -------------------------------------------------------------

    @staticmethod
    def _check_variables(variables: Mapping[str, object] | None) -> Mapping[str, object] | None:
        if variables is None:
            return None
        if not isinstance(variables, Mapping) or not all(isinstance(k, str) for k in variables):
            raise InvalidInputError(
                f"user_variables must be a mapping with str keys, got {variables!r}"
            )
        return dict(variables)

    @staticmethod
    def _text_block(
        value: str | CBlock | None, where: str, variables: Mapping[str, object] | None
    ) -> CBlock | None:
        if value is None:
            return None
        if not isinstance(value, str | CBlock):
            raise InvalidInputError(
                f"{where} must be a str or CBlock, got {type(value).__name__}: {value!r}"
            )
        block = blockify(_substitute_block(value, variables, where))
        assert isinstance(block, CBlock)
        return block

    @staticmethod
    def _sequence(value: Sequence[Any] | None, where: str) -> list[Any]:
        if value is None:
            return []
        if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
            raise InvalidInputError(f"{where} must be a list, got {type(value).__name__}")
        return list(value)

    # -- accessors ------------------------------------------------------------------------

    @property
    def description(self) -> str | None:
        """The task text (after substitution)."""
        return None if self._description is None else self._description.value

    @property
    def requirements(self) -> list[Requirement]:
        """The requirements (a new list each time; the objects themselves are shared)."""
        return list(self._requirements)

    @property
    def icl_examples(self) -> list[str]:
        """The example texts."""
        return [str(e) for e in self._icl_examples]

    @property
    def grounding_context(self) -> dict[str, CBlock | Component[Any] | ModelOutputThunk]:
        """The grounding material (a copy of the mapping)."""
        return dict(self._grounding_context)

    @property
    def prefix(self) -> str | None:
        """Text put before the description."""
        return None if self._prefix is None else self._prefix.value

    @property
    def output_prefix(self) -> str | None:
        """Text put at the end of the prompt."""
        return None if self._output_prefix is None else self._output_prefix.value

    @property
    def images(self) -> list[str | CBlock] | None:
        """Images for the prompt (a copy), or ``None``."""
        return None if self._images is None else list(self._images)

    @property
    def repair_string(self) -> str | None:
        """Feedback appended by :meth:`copy_and_repair`, if any."""
        return self._repair_string

    # -- Component ------------------------------------------------------------------------

    def parts(self) -> list[Component[Any] | CBlock | ModelOutputThunk]:
        """Description, prefixes, grounding values, requirements and examples (non-None)."""
        parts: list[Component[Any] | CBlock | ModelOutputThunk] = [
            p for p in (self._description, self._prefix, self._output_prefix) if p is not None
        ]
        parts.extend(self._grounding_context.values())
        parts.extend(self._requirements)
        parts.extend(self._icl_examples)
        return parts

    def format_for_llm(self) -> str:
        """The user prompt: description, requirements, grounding context, examples.

        Requirements marked ``check_only`` (and those without any text) are left out. Thunks
        in the grounding context render as their current value, so resolve them first.
        """
        sections: list[str] = []
        head = "\n".join(
            t for t in (render_plain(self._prefix), render_plain(self._description)) if t
        )
        if head:
            sections.append(head)
        reqs = [t for t in map(_requirement_text, self._requirements) if t]
        if reqs:
            sections.append("The response must satisfy these requirements:\n" + _bullets(reqs))
        if self._grounding_context:
            lines = []
            for key, value in self._grounding_context.items():
                text = render_plain(value).strip()
                sep = "\n" if "\n" in text else " "
                lines.append(f"[{key}]{sep}{text}" if key else text)
            sections.append("Use this context:\n" + "\n".join(lines))
        if self._icl_examples:
            sections.append("Examples:\n" + _bullets(str(e) for e in self._icl_examples))
        if self._repair_string:
            sections.append(self._repair_string)
        if self._output_prefix is not None and str(self._output_prefix):
            sections.append(str(self._output_prefix))
        return "\n\n".join(sections)

    def copy_and_repair(self, repair_string: str) -> Instruction:
        """A copy of this instruction with ``repair_string`` appended to its prompt."""
        new = copy.copy(self)
        new._requirements = list(self._requirements)
        new._icl_examples = list(self._icl_examples)
        new._grounding_context = dict(self._grounding_context)
        new._repair_string = repair_string
        return new

    def _parse(self, computed: ModelOutputThunk) -> str:
        value = computed.value
        return value if value is not None else ""

    def __str__(self) -> str:
        return self.format_for_llm()

    def __repr__(self) -> str:
        return (
            f"Instruction({self.description!r}, requirements={self._requirements!r}, "
            f"examples={len(self._icl_examples)}, grounding={list(self._grounding_context)!r})"
        )
