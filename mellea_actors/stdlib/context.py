"""Concrete contexts (Mellea's ``mellea.stdlib.context``): :class:`SimpleContext` (no history)
and :class:`ChatContext` (a conversation).

They live in :mod:`mellea_actors.core.context_chain` beside :class:`Context`, so that ``core``
needs nothing from ``stdlib``; this module is their Mellea import path. ``Context``,
``ContextTurn``, ``CBlock`` and ``Component`` are re-exported for convenience, as Mellea does.
"""

from __future__ import annotations

from mellea_actors.core.cblock import CBlock, Component
from mellea_actors.core.context_chain import ChatContext, Context, ContextTurn, SimpleContext

__all__ = ["CBlock", "ChatContext", "Component", "Context", "ContextTurn", "SimpleContext"]
