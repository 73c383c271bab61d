"""``Message``: one chat turn (Mellea's ``mellea.stdlib.components.Message``).

It lives in ``core`` because the layers below the standard library need it too (an LLM judge's
prompt in :mod:`mellea_actors.core.requirement`, the backend's rendering); its Mellea import
path, :mod:`mellea_actors.stdlib.components`, re-exports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, get_args

from mellea_actors.core.cblock import CBlock, Component, TemplateRepresentation
from mellea_actors.errors import InvalidInputError

if TYPE_CHECKING:
    from mellea_actors.core.model_output import ModelOutputThunk

__all__ = ["Message", "MessageRole"]

MessageRole: TypeAlias = Literal["system", "user", "assistant", "tool"]
_ROLES: tuple[str, ...] = get_args(MessageRole)


class Message(Component["Message"]):
    """One message of a chat.

    Args:
        role: ``"system"``, ``"user"``, ``"assistant"`` or ``"tool"``.
        content: the text.
        images: optional images (base64 strings, file paths, or ``CBlock``s holding either).

    ``str(message)`` is its content.
    """

    Role: TypeAlias = MessageRole

    def __init__(
        self, role: MessageRole, content: str, *, images: Sequence[str | CBlock] | None = None
    ) -> None:
        if role not in _ROLES:
            raise InvalidInputError(f"invalid message role {role!r}; must be one of {list(_ROLES)}")
        if not isinstance(content, str):
            raise InvalidInputError(
                f"message content must be a str, got {type(content).__name__}: {content!r}"
            )
        if images is not None and (
            isinstance(images, str) or not all(isinstance(i, str | CBlock) for i in images)
        ):
            raise InvalidInputError(
                f"images must be a list of base64 strings, paths or CBlocks, got {images!r}"
            )
        self.role: MessageRole = role
        self.content = content
        self._images: list[str | CBlock] | None = None if images is None else list(images)

    @property
    def images(self) -> list[str | CBlock] | None:
        """The images attached to the message (a copy), or ``None``."""
        return None if self._images is None else list(self._images)

    def parts(self) -> list[Component[Any] | CBlock | ModelOutputThunk]:
        """The content block, then any image blocks."""
        parts: list[Component[Any] | CBlock | ModelOutputThunk] = [CBlock(self.content)]
        parts.extend(i if isinstance(i, CBlock) else CBlock(i) for i in self._images or ())
        return parts

    def format_for_llm(self) -> TemplateRepresentation:
        """``args`` holds ``role``, ``content`` and ``images``."""
        return TemplateRepresentation(
            obj=self,
            args={"role": self.role, "content": self.content, "images": self.images},
            images=self.images,
            template_order=["*", "Message"],
        )

    def _parse(self, computed: ModelOutputThunk) -> Message:
        value = computed.value
        return Message("assistant", value if value is not None else "")

    def __str__(self) -> str:
        return self.content

    def __repr__(self) -> str:
        images = f", images=<{len(self._images)}>" if self._images else ""
        return f"Message(role={self.role!r}, content={self.content!r}{images})"
