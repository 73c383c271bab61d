"""Argument checks shared by every layer: bad input fails at the call, naming the parameter.

Each check raises :class:`~mellea_actors.errors.InvalidInputError` (a ``ValueError``) whose
message names the parameter and shows what was given, before any request is sent. It imports
nothing but the error tree, so the facade, the runtime and the transport may all use it.
"""

from __future__ import annotations

import math
from typing import Any

from mellea_actors.errors import InvalidInputError

__all__ = ["check_count", "check_instance", "check_text", "check_timeout"]


def check_timeout(value: object, name: str, *, allow_none: bool = True) -> float | None:
    """A timeout in seconds: a positive, finite int or float (or None when allowed)."""
    if value is None and allow_none:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or math.isnan(value)
        or value <= 0
        or math.isinf(value)
    ):
        also = " or None" if allow_none else ""
        raise InvalidInputError(f"{name} must be a positive number of seconds{also}, got {value!r}")
    return float(value)


def check_count(value: object, name: str, *, minimum: int = 1) -> int:
    """A whole number, at least ``minimum`` (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInputError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def check_instance(value: object, types: type | tuple[type, ...], name: str) -> Any:
    """``value`` unchanged if it is one of ``types``; else an error naming what was given."""
    if not isinstance(value, types):
        wanted = (
            types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        )
        raise InvalidInputError(f"{name} must be a {wanted}, got {type(value).__name__}: {value!r}")
    return value


def check_text(value: object, name: str, *, allow_empty: bool = True) -> str:
    """A str that can be sent as UTF-8 (no lone surrogate), non-empty unless allowed."""
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} must be a str, got {type(value).__name__}: {value!r}")
    if not value and not allow_empty:
        raise InvalidInputError(f"{name} must not be empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = value[exc.start : exc.end]
        raise InvalidInputError(
            f"{name} holds {bad!r} at position {exc.start}, a lone surrogate that cannot be "
            "sent as UTF-8 (was the text decoded with errors='surrogateescape'?)"
        ) from None
    return value
