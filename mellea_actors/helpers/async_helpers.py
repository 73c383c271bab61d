"""Helpers for resolving many thunks at once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from mellea_actors.core.model_output import ModelOutputThunk

__all__ = ["wait_for_all_mots"]


async def wait_for_all_mots(mots: Iterable[ModelOutputThunk[Any]]) -> None:
    """Resolve every thunk concurrently (like ``gather`` of their ``avalue()``).

    Every thunk is waited for, even when one fails, so none is left half-way; then the first
    failure (in the order of ``mots``) is raised. Thunks may come from any session and any loop.
    Cancelling this call stops the waiting, not the generations (cancel the thunks for that).
    """
    results = await asyncio.gather(*(m.avalue() for m in mots), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
