"""Concrete contexts: :class:`SimpleContext` (no history) and :class:`ChatContext` (a conversation).

``Context``, ``ContextTurn``, ``CBlock`` and ``Component`` are re-exported for convenience, as
Mellea does.
"""

from __future__ import annotations

from mellea_actors.core.cblock import CBlock, Component
from mellea_actors.core.context import Context, ContextItem, ContextTurn
from mellea_actors.errors import InvalidInputError

__all__ = ["CBlock", "ChatContext", "Component", "Context", "ContextTurn", "SimpleContext"]


class SimpleContext(Context):
    """Each interaction is an independent turn: generation sees no history.

    Items are still recorded (so ``last_output()``/``last_turn()`` work), but
    :meth:`view_for_generation` is always empty.
    """

    _is_chat_context = False

    def add(self, c: ContextItem) -> SimpleContext:
        """A new ``SimpleContext`` with ``c`` appended."""
        return SimpleContext.from_previous(self, c)

    def view_for_generation(self) -> list[ContextItem]:
        """Always ``[]``: no prior turn is sent to the model."""
        return []


def _is_system_message(item: object) -> bool:
    return getattr(item, "role", None) == "system"


class ChatContext(Context):
    """A conversation: generation sees every earlier turn, oldest first.

    Args:
        window_size: when set, the view keeps the leading system message(s) plus the newest
            ``window_size`` other items (Mellea 0.7.0's ``WindowCompactor`` default pinning).
            The window applies to the view only; :meth:`as_list` keeps the whole history.
        model_id: the model this conversation is bound to (informational).
    """

    _is_chat_context = True

    def __init__(self, window_size: int | None = None, *, model_id: str | None = None) -> None:
        super().__init__()
        if window_size is not None and (
            isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 0
        ):
            raise InvalidInputError(
                f"window_size must be a non-negative int or None, got {window_size!r}"
            )
        self._window_size = window_size
        self._model_id = model_id

    @property
    def window_size(self) -> int | None:
        """How many non-system items the view keeps (``None``: all)."""
        return self._window_size

    @property
    def model_id(self) -> str | None:
        """The model this conversation is bound to, if any."""
        return self._model_id

    def new_instance(self) -> ChatContext:
        """A new empty ``ChatContext`` with the same window and model."""
        return ChatContext(self._window_size, model_id=self._model_id)

    def add(self, c: ContextItem) -> ChatContext:
        """A new ``ChatContext`` (same configuration) with ``c`` appended."""
        return ChatContext.from_previous(self, c)

    def view_for_generation(self) -> list[ContextItem]:
        """The conversation so far, oldest first, windowed by ``window_size``."""
        items = self.as_list()
        if self._window_size is None:
            return items
        pinned = 0
        while pinned < len(items) and _is_system_message(items[pinned]):
            pinned += 1
        body = items[pinned:]
        kept = body[-self._window_size :] if self._window_size > 0 else []
        return items[:pinned] + kept
