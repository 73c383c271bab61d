"""Script and record types of the scripted Ollama-protocol server.

Both types are immutable values, safe to share between threads:

* :class:`Script` says what the server does for one generation request (``/api/chat`` or
  ``/api/generate``): which tokens, at what pace, and which fault to inject.
* :class:`RequestRecord` is a *snapshot* of what the server saw and did for one request. The server
  keeps its own mutable bookkeeping on its event-loop thread and hands out fresh snapshots on
  demand.

Times are ``time.monotonic()`` values. On Linux this is ``CLOCK_MONOTONIC``, which is system-wide,
so times recorded by a server running in a subprocess are comparable with the caller's
``time.monotonic()``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["GENERATION_PATHS", "Outcome", "RequestRecord", "Script"]

#: The endpoints whose answers are scripted (their records are ``ScriptedOllama.requests``).
GENERATION_PATHS: frozenset[str] = frozenset({"/api/chat", "/api/generate"})

Outcome = Literal[
    "completed",  # the whole answer was sent (final chunk, chunked terminator)
    "client_disconnected",  # the client closed the connection before the answer was complete
    "error_line",  # an {"error": ...} line was sent mid-stream (HTTP 200), then a clean end
    "dropped",  # the server closed the connection mid-answer on purpose (Script.drop_after)
    "http_error",  # answered with a non-200 status and {"error": ...} (Script.status, 404, ...)
    "stalled",  # the server stopped while this request was stalled (Script.stall_after)
    "refused",  # the connection was closed without any answer (Script.refuse)
    "server_stopped",  # the server stopped while this request was in progress (not stalled)
]

_WORDS = re.compile(r"\S+\s*|\s+")


@dataclass(frozen=True)
class Script:
    """What the server does for one generation request.

    Token pacing: token ``i`` (0-based) is sent at ``start + first_delay + i * delay`` where
    ``start`` is when the request was read; the schedule does not accumulate sleep drift.
    ``delay == 0`` sends as fast as the connection drains.

    Faults (checked in this order, each counting tokens already sent):

    * ``status != 200``: answer at once with that status and ``{"error": error_message}`` (no
      stream).
    * ``refuse``: close the connection at once, without a status line.
    * ``stall_after=n``: after ``n`` tokens, send nothing until the client disconnects, or for
      ``stall_for`` seconds after which the remaining tokens follow (their schedule shifts by the
      stall).
    * ``error_after=n``: after ``n`` tokens, send the line ``{"error": error_message}`` and end the
      stream cleanly (HTTP 200, like Ollama does). Non-streaming requests get HTTP 500 with that
      error instead.
    * ``drop_after=n``: after ``n`` tokens, close the connection: no final chunk, no chunked
      terminator.
    """

    tokens: Sequence[str] = ("Hello", " world", ".")
    delay: float = 0.0
    first_delay: float = 0.0
    status: int = 200
    error_message: str | None = None
    error_after: int | None = None
    drop_after: int | None = None
    stall_after: int | None = None
    stall_for: float | None = None
    done_reason: str = "stop"
    refuse: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.tokens, str):
            raise TypeError("Script.tokens must be a sequence of strings, not a string")
        object.__setattr__(self, "tokens", tuple(self.tokens))
        for name in ("delay", "first_delay"):
            if getattr(self, name) < 0:
                raise ValueError(f"Script.{name} must be >= 0")
        for name in ("error_after", "drop_after", "stall_after"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"Script.{name} must be >= 0 or None")
        if self.stall_for is not None and self.stall_for < 0:
            raise ValueError("Script.stall_for must be >= 0 or None")
        if not 100 <= self.status <= 599:
            raise ValueError("Script.status must be an HTTP status code")

    @property
    def text(self) -> str:
        """The whole answer: the concatenation of the tokens."""
        return "".join(self.tokens)

    @classmethod
    def from_text(cls, text: str, **kwargs: Any) -> Script:
        """A script whose tokens are the words of ``text``, each with its trailing whitespace."""
        return cls(tokens=tuple(_WORDS.findall(text)), **kwargs)

    @classmethod
    def counting(cls, n: int, **kwargs: Any) -> Script:
        """A script of ``n`` distinct tokens ``"t0 "``, ``"t1 "``, ... (for ordering checks)."""
        return cls(tokens=tuple(f"t{i} " for i in range(n)), **kwargs)

    def to_json(self) -> dict[str, Any]:
        """A JSON-compatible dict (used by the command line and the control endpoints)."""
        data = dataclasses.asdict(self)
        data["tokens"] = list(self.tokens)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Script:
        """The inverse of :meth:`to_json`; unknown keys raise ``TypeError``."""
        return cls(**dict(data))


@dataclass(frozen=True)
class RequestRecord:
    """An immutable snapshot of one request as the server saw it.

    ``index`` is the request's position in its list (``requests`` or ``other_requests``);
    ``connection`` numbers the TCP connections the server accepted (1, 2, ...), so that requests
    sharing a keep-alive connection share it.

    ``outcome`` is ``None`` while the request is in progress. ``disconnected_at`` is set only when
    the client closed the connection while this request was still being answered; it is the moment
    the server's event loop noticed (EOF or reset on the socket), taken with ``time.monotonic()``.
    ``token_times`` holds the send time of each token (``time.monotonic()``, taken just before the
    bytes are handed to the socket) when the server was created with ``record_token_times=True``,
    else it is empty.
    """

    index: int
    connection: int
    method: str
    path: str
    body: Any
    model: str | None
    messages: tuple[Mapping[str, Any], ...]
    prompt: str | None
    options: Mapping[str, Any] | None
    format: Any
    stream: bool
    started_at: float
    script: Script | None = None
    tokens_sent: int = 0
    first_token_at: float | None = None
    token_times: tuple[float, ...] = field(default=(), repr=False)
    stalled_at: float | None = None
    disconnected_at: float | None = None
    finished_at: float | None = None
    status: int | None = None
    outcome: Outcome | None = None

    @property
    def done(self) -> bool:
        """True once the server has finished with this request (``outcome`` is set)."""
        return self.outcome is not None

    def to_json(self) -> dict[str, Any]:
        """A JSON-compatible dict (used by the control endpoint ``GET /_scripted/requests``)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["messages"] = [dict(m) for m in self.messages]
        data["options"] = dict(self.options) if self.options is not None else None
        data["token_times"] = list(self.token_times)
        data["script"] = self.script.to_json() if self.script is not None else None
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RequestRecord:
        """The inverse of :meth:`to_json`."""
        values = dict(data)
        values["messages"] = tuple(values.get("messages") or ())
        values["token_times"] = tuple(values.get("token_times") or ())
        script = values.get("script")
        values["script"] = Script.from_json(script) if script is not None else None
        return cls(**values)
