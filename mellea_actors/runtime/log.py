"""The supervision log: what every actor did and why.

Every lifecycle event of the runtime (actor started / stopped / crashed / restarted, generation
started / first chunk / completed / cancelled / failed, verdicts, breaker changes, escalations)
is one record: a dict with ``event``, ``ts`` (Unix time), ``actor``, ``kind``, ``parent``,
``thunk`` (the request id, when there is one), ``reason`` and event-specific fields.

Records go to two places:

* a bounded ring buffer per log, read with :meth:`SupervisionLog.events` (filter by thunk or
  actor) — inspectable without parsing any output;
* structlog, bound to the standard-library logger ``mellea_actors.supervision`` at INFO (WARNING
  for failures). Nothing is printed unless that logger is enabled; :func:`configure_output`
  enables it with a human-readable console renderer, or JSON lines.

Thread-safety: ``emit`` may be called from any thread (a lock guards the buffer).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, MutableMapping
from typing import IO, Any

import structlog

__all__ = ["LOGGER_NAME", "SupervisionLog", "configure_output"]

LOGGER_NAME = "mellea_actors.supervision"

_WARNING_EVENTS = frozenset(
    {"actor_crashed", "generation_failed", "escalated", "breaker_opened", "verdict_fail"}
)


def _stdlib_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


# A library never prints through logging's last-resort handler: silent until configured.
_stdlib_logger().addHandler(logging.NullHandler())
_KV = structlog.processors.KeyValueRenderer(key_order=["event", "actor", "kind", "thunk", "reason"])


class SupervisionLog:
    """A ring buffer of supervision records plus a structlog emitter."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._records: deque[dict[str, Any]] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._waiting = 0  # threads in wait_for (guarded by the lock): notify only then
        self._std = _stdlib_logger()
        self._logger = structlog.wrap_logger(
            self._std,
            processors=[_render_for_stdlib],
            wrapper_class=structlog.stdlib.BoundLogger,
        )

    def emit(
        self,
        event: str,
        *,
        actor: str,
        kind: str,
        parent: str | None = None,
        thunk: str | None = None,
        reason: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Record one event; returns the record (a fresh dict the log will not change)."""
        record: dict[str, Any] = {
            "event": event,
            "ts": time.time(),
            "actor": actor,
            "kind": kind,
            "parent": parent,
            "thunk": thunk,
            "reason": reason,
        }
        if fields:
            record.update(fields)
        with self._lock:
            self._records.append(record)
            if self._waiting:
                self._changed.notify_all()
        level = logging.WARNING if event in _WARNING_EVENTS else logging.INFO
        if self._std.isEnabledFor(level):
            log_fields = {k: v for k, v in record.items() if k != "event"}
            if level == logging.WARNING:
                self._logger.warning(event, **log_fields)
            else:
                self._logger.info(event, **log_fields)
        return dict(record)

    def events(
        self,
        *,
        thunk: str | None = None,
        actor: str | None = None,
        event: str | Iterable[str] | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Recent records, oldest first, optionally filtered (by thunk id, actor id, event name)."""
        names = {event} if isinstance(event, str) else set(event) if event is not None else None
        with self._lock:
            records = list(self._records)
        out = [
            dict(r)
            for r in records
            if (thunk is None or r["thunk"] == thunk)
            and (actor is None or r["actor"] == actor)
            and (names is None or r["event"] in names)
        ]
        return out[-limit:] if limit is not None else out

    def wait_for(
        self,
        event: str,
        *,
        thunk: str | None = None,
        actor: str | None = None,
        count: int = 1,
        timeout: float = 10.0,
    ) -> dict[str, Any]:
        """Block until ``count`` matching records exist (already or later); return the last one.

        Raises TimeoutError after ``timeout`` seconds. Blocking: from a coroutine, use
        ``await asyncio.to_thread(log.wait_for, …)``.
        """

        def matches() -> list[dict[str, Any]]:
            return [
                r
                for r in self._records
                if r["event"] == event
                and (thunk is None or r["thunk"] == thunk)
                and (actor is None or r["actor"] == actor)
            ]

        with self._changed:
            self._waiting += 1
            try:
                found = self._changed.wait_for(lambda: len(matches()) >= count, timeout)
            finally:
                self._waiting -= 1
            if not found:
                raise TimeoutError(
                    f"fewer than {count} {event!r} events (thunk={thunk}, actor={actor}) "
                    f"after {timeout} s"
                )
            return dict(matches()[count - 1])

    def clear(self) -> None:
        with self._lock:
            self._records.clear()


def _render_for_stdlib(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> tuple[Any, ...]:
    """Give stdlib logging a ``key=value`` message, and the event dict as ``record.supervision``."""
    return (_KV(logger, method_name, dict(event_dict)),), {"extra": {"supervision": event_dict}}


class _StructlogFormatter(logging.Formatter):
    """Renders records whose message is a structlog event dict (console or JSON)."""

    def __init__(self, json: bool) -> None:
        super().__init__()
        self._json = json
        renderer: Any
        if json:
            renderer = structlog.processors.JSONRenderer(sort_keys=False)
        else:
            renderer = structlog.dev.ConsoleRenderer(colors=False)
        self._chain = [
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
            structlog.processors.add_log_level,
            renderer,
        ]

    def format(self, record: logging.LogRecord) -> str:
        msg = getattr(record, "supervision", None)
        if not isinstance(msg, dict):
            return super().format(record)
        event_dict: Any = dict(msg)
        if not self._json:  # the console shows what is set; JSON keeps every key (null)
            event_dict = {k: v for k, v in event_dict.items() if v is not None}
        for processor in self._chain:
            event_dict = processor(None, record.levelname.lower(), event_dict)
        return str(event_dict)


def configure_output(
    *, json: bool = False, stream: IO[str] | None = None, level: int = logging.INFO
) -> logging.Handler:
    """Print the supervision log: human-readable lines by default, JSON lines with ``json=True``.

    Returns the installed handler (remove it with ``logging.getLogger(LOGGER_NAME).removeHandler``).
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_StructlogFormatter(json=json))
    std = _stdlib_logger()
    std.addHandler(handler)
    std.setLevel(level)
    std.propagate = False
    return handler
