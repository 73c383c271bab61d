"""The `Backend` interface: turn (action, context) into a pending model output."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, TypeVar

import pydantic

if TYPE_CHECKING:
    from mellea_actors.core.context_chain import Context, ContextItem
    from mellea_actors.core.model_output import ModelOutputThunk

__all__ = ["Backend", "BaseModelSubclass"]

BaseModelSubclass = TypeVar("BaseModelSubclass", bound=pydantic.BaseModel)
"""A pydantic model class used as a structured-output ``format``."""


class Backend(abc.ABC):
    """An inference backend.

    What every implementation promises for :meth:`generate_from_context`:

    - it returns at once (it never waits for the model) with an **uncomputed**
      ``ModelOutputThunk`` whose generation has already started in the background, and the
      new context (``ctx`` with ``action`` and then the thunk appended);
    - it never mutates ``ctx`` (contexts are immutable; the new one is returned);
    - bad input (unknown or ill-typed model options, unsupported tools …) raises
      ``InvalidInputError`` before any request is sent;
    - backend failures surface later, from the thunk's ``avalue()``/``astream()``.

    Attributes:
        model_id: the model this backend generates with (set by every implementation).
        model_options: the backend's default model options (lowest-precedence layer).
    """

    model_id: str
    model_options: dict[str, Any]

    @abc.abstractmethod
    async def generate_from_context(
        self,
        action: ContextItem,
        ctx: Context,
        *,
        format: type[pydantic.BaseModel] | None = None,
        model_options: dict[str, Any] | None = None,
        tool_calls: bool = False,
    ) -> tuple[ModelOutputThunk, Context]:
        """Start generating a response to ``action`` given ``ctx``.

        Args:
            action: the newest item (the prompt), passed separately from the context.
            ctx: the history; what the model sees is ``ctx.view_for_generation()``.
            format: a pydantic model for structured (JSON-schema constrained) output.
            model_options: per-call options, overriding the backend's defaults.
            tool_calls: extract tool calls from the output (not supported by every backend).

        Returns:
            ``(thunk, new_ctx)``: an uncomputed thunk (generation already running) and
            ``ctx.add(action).add(thunk)``.
        """
