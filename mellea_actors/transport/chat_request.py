"""The request of one generation, as the transport sends it to Ollama's ``/api/chat``.

Built (and validated, once) by the facade, carried by the runtime's messages, read by the
transport. It lives here, at the bottom, because every layer above needs it; the runtime
re-exports it from :mod:`mellea_actors.runtime.messages`. Frozen: pykka shares messages between
threads without copying them. Pydantic dataclasses with slots: validated when built, like a
model, at a tenth of a model's memory (every pending generation holds one).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field
from typing import Any, Literal

from pydantic import ConfigDict
from pydantic.dataclasses import dataclass

__all__ = ["ChatMessage", "GenerationRequest"]


_CONFIG = ConfigDict(arbitrary_types_allowed=False)


@dataclass(frozen=True, slots=True, config=_CONFIG)
class ChatMessage:
    """One message of an Ollama ``/api/chat`` request."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str
    images: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True, config=_CONFIG)
class GenerationRequest:
    """Everything one generation needs; built by the facade, read by the runtime and transport."""

    request_id: str
    host: str
    model: str
    messages: tuple[ChatMessage, ...]
    options: Mapping[str, Any] = field(default_factory=dict)
    format: Mapping[str, Any] | Literal["json"] | None = None
    think: bool | Literal["low", "medium", "high"] | None = None
    stream: bool = True
    """The user's ``ModelOption.STREAM``; the transport always streams from Ollama."""
    stream_timeout: float | None = 120.0
    """Seconds without a chunk (time to first chunk included) before the stream fails."""
    keep_alive: float | str | None = None
