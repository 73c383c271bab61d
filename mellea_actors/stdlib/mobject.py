"""``Query`` and ``Transform``: the components behind ``session.query`` / ``session.transform``."""

from __future__ import annotations

from typing import Any

from mellea_actors.core.cblock import CBlock, Component, render_plain
from mellea_actors.errors import InvalidInputError

__all__ = ["Query", "Transform"]


def _check_text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"{what} must be a non-empty str, got {value!r}")
    return value


class Query(Component[str]):
    """Ask a question about an object (its text is shown to the model first)."""

    def __init__(self, obj: Any, query: str) -> None:
        self.obj = obj
        self.query = _check_text(query, "query")

    def parts(self) -> list[Any]:
        return [self.obj if isinstance(self.obj, CBlock | Component) else CBlock(str(self.obj))]

    def format_for_llm(self) -> str:
        return (
            f"{render_plain(self.obj)}\n\nAnswer this question about the text above: {self.query}"
        )


class Transform(Component[str]):
    """Transform an object as described; the answer is the transformed text."""

    def __init__(self, obj: Any, transformation: str) -> None:
        self.obj = obj
        self.transformation = _check_text(transformation, "transformation")

    def parts(self) -> list[Any]:
        return [self.obj if isinstance(self.obj, CBlock | Component) else CBlock(str(self.obj))]

    def format_for_llm(self) -> str:
        return (
            f"{render_plain(self.obj)}\n\nTransform the text above as follows: "
            f"{self.transformation}\nAnswer with the transformed text only."
        )
