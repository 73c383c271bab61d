"""The supervision log: what every actor did and why.

Every lifecycle event of the runtime (actor started / stopped / crashed / restarted, generation
started / first chunk / completed / cancelled / failed, verdicts, breaker changes, escalations)
is one record: a dict with ``event``, ``ts`` (Unix time), ``actor``, ``kind``, ``parent``,
``thunk`` (the request id, when there is one), ``reason`` and event-specific fields.

Records go to two places:

* a bounded ring buffer per log, read with :meth:`SupervisionLog.events` (filter by thunk or
  actor) — every record, whatever its level; inspectable without parsing any output;
* the standard-library logger ``mellea_actors.supervision``, at the level :data:`EVENT_LEVELS`
  gives the event (lifecycle at DEBUG; failures, restarts, failovers and breaker changes at
  WARNING or ERROR). The message is the event name and every other key is a *field*: an
  attribute of the ``LogRecord``, as ``extra=`` makes it. So an application's
  ``structlog.stdlib.ProcessorFormatter`` with ``structlog.stdlib.ExtraAdder()`` in its
  ``foreign_pre_chain`` gets an event dict with ``event``, ``thunk``, ``actor``… as keys (and
  renders it as JSON, say), and a plain ``logging.Formatter("%(message)s %(thunk)s")`` works.

The application's context reaches the records: when a generation is created
(:meth:`ActorSystem.start_generation`, in the caller's thread or task) the structlog contextvars
bound there (``structlog.contextvars.bind_contextvars(request_id=…)``) are captured with
:meth:`SupervisionLog.capture_context` and added as fields to every record that carries that
thunk id — also those emitted later on the runtime's loop thread. Records are logged in a fresh
(empty) ``contextvars`` context, so ``merge_contextvars`` in the application's chain never adds
what happens to be bound in the runtime's threads: a record of a generation carries exactly
what its caller had bound, a record of no generation (the system, a supervisor, a host, a
breaker — shared by every request) carries none. The record's own keys win a clash with a bound
key; a key stdlib logging reserves (``name``, ``module``, ``message``…) gets a trailing ``_``.

Nothing is printed unless the application configures logging (the logger has a NullHandler and
no level of its own); :func:`configure_output` prints it as console lines or JSON lines.

Thread-safety: ``emit`` and ``capture_context`` may be called from any thread (a lock guards
the buffer and the captured contexts).
"""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import IO, Any

import structlog

__all__ = ["EVENT_LEVELS", "LOGGER_NAME", "SupervisionLog", "configure_output", "make_record"]

LOGGER_NAME = "mellea_actors.supervision"

_D, _I, _W, _E = logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR

#: The stdlib level of every event the runtime emits (an event not listed here: INFO).
#: ``tests/test_supervision_log.py`` checks that every event name used in the package is here.
EVENT_LEVELS: Mapping[str, int] = MappingProxyType(
    {
        # lifecycle: DEBUG ------------------------------------------------------------------
        "system_started": _D,
        "system_stopped": _D,
        "actor_started": _D,
        "actor_stopped": _D,
        "generation_started": _D,
        "first_chunk": _D,
        "generation_completed": _D,
        "generation_cancelled": _D,  # cancelled on purpose (the reason says by whom)
        "stream_stopping": _D,
        "stream_ended": _D,
        "escalation_received": _D,  # the root's note of an "escalated" (WARNING) below it
        "ray_stream": _D,
        "ray_worker_started": _D,
        # the pool and the Ray engine changing shape: INFO -------------------------------
        "host_added": _I,
        "host_removed": _I,
        "host_state": _I,
        "ray_workers_stopped": _I,
        # failures, retries, restarts, failovers, breaker changes: WARNING -------------------
        "verdict_fail": _W,
        "validator_failed": _W,
        "validator_stuck": _W,
        "generation_failed": _W,
        "generator_restarting": _W,
        "generator_restarted": _W,
        "failover": _W,
        "stream_retry": _W,
        "breaker_opened": _W,
        "breaker_closed": _W,
        "breaker_probe_failed": _W,
        "actor_restarted": _W,
        "ray_worker_died": _W,
        "ray_worker_restarted": _W,
        # something broke (a crash, a bug in a handler or a sink, gave up): ERROR ------------
        "actor_crashed": _E,
        "child_crashed": _E,
        "ask_failed": _E,
        "stream_sink_failed": _E,
        "escalated": _E,
    }
)
_LEVELS: dict[str, int] = dict(EVENT_LEVELS)  # the hot path reads a plain dict

#: Attributes of a ``LogRecord`` (``extra=`` may not set them).
_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
}

#: How many ended thunks keep their captured context (records of a stream or a validator may
#: follow the thunk actor's stop), and how many contexts are kept at most.
_LINGER = 1024
_MAX_CONTEXTS = 100_000


def _stdlib_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


# A library never prints through logging's last-resort handler: silent until configured.
_stdlib_logger().addHandler(logging.NullHandler())

# structlog keeps one ContextVar per key ever bound (bind_contextvars): reading those is much
# cheaper than get_contextvars(), which copies and scans the whole context. Private, so guarded.
_STRUCTLOG_VARS: dict[str, contextvars.ContextVar[Any]] | None = getattr(
    structlog.contextvars, "_CONTEXT_VARS", None
)
_PREFIX_LEN = len(getattr(structlog.contextvars, "STRUCTLOG_KEY_PREFIX", "structlog_"))


def _bound_contextvars() -> dict[str, Any]:
    """The structlog contextvars bound in the current context (``{}``: none, the usual case)."""
    if _STRUCTLOG_VARS is None:
        return structlog.contextvars.get_contextvars()
    if not _STRUCTLOG_VARS:  # nothing was ever bound in this process
        return {}
    bound: dict[str, Any] = {}
    for name, var in tuple(_STRUCTLOG_VARS.items()):  # another thread may add a key meanwhile
        value = var.get(Ellipsis)
        if value is not Ellipsis:  # Ellipsis: unbound (structlog's marker)
            bound[name[_PREFIX_LEN:]] = value
    return bound


def make_record(
    event: str,
    *,
    actor: str,
    kind: str,
    parent: str | None = None,
    thunk: str | None = None,
    reason: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """One record as the log stores it: the keys every record has, then the event's fields."""
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
    return record


class SupervisionLog:
    """A ring buffer of supervision records plus their stdlib-logging emitter."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._records: deque[dict[str, Any]] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._waiting = 0  # threads in wait_for (guarded by the lock): notify only then
        self._std = _stdlib_logger()
        # thunk id -> the caller's structlog contextvars, oldest first; the ids of ended thunks
        # whose context is still kept, oldest first (both guarded by the lock)
        self._contexts: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._ended: OrderedDict[str, None] = OrderedDict()

    def capture_context(self, thunk: str) -> None:
        """Keep the structlog contextvars bound where this is called for ``thunk``'s records.

        Called where a generation is created, in the caller's context. Costs next to nothing
        when the caller has nothing bound (nothing is kept then). The context is dropped a while
        after the thunk ended (once :data:`_LINGER` more thunks have ended), and the oldest
        goes when more than :data:`_MAX_CONTEXTS` are kept.
        """
        bound = _bound_contextvars()
        if not bound:
            return
        with self._lock:
            contexts = self._contexts
            contexts[thunk] = bound
            if len(contexts) > _MAX_CONTEXTS:
                oldest, _ = contexts.popitem(last=False)
                self._ended.pop(oldest, None)

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
    ) -> None:
        """Record one event (five per generation: no copy of the record is made back)."""
        record = make_record(
            event, actor=actor, kind=kind, parent=parent, thunk=thunk, reason=reason, **fields
        )
        bound = None
        with self._lock:
            self._records.append(record)
            if self._waiting:
                self._changed.notify_all()
            if thunk is not None and self._contexts:  # some caller had contextvars bound
                bound = self._contexts.get(thunk)
                if bound is not None and kind == "thunk" and event in _THUNK_ENDS:
                    self._thunk_ended(thunk)
        level = _LEVELS.get(event, logging.INFO)
        if self._std.isEnabledFor(level):
            self._log(level, record, bound)

    def _thunk_ended(self, thunk: str) -> None:
        """(Lock held.) ``thunk``'s context lingers until _LINGER more thunks have ended."""
        ended = self._ended
        if thunk in ended:
            return
        ended[thunk] = None
        if len(ended) > _LINGER:
            oldest, _ = ended.popitem(last=False)
            self._contexts.pop(oldest, None)

    def _log(self, level: int, record: dict[str, Any], bound: dict[str, Any] | None) -> None:
        extra = record
        if bound:
            extra = dict(record)
            for key, value in bound.items():
                extra.setdefault(key, value)  # the record's own keys win
        if not _RESERVED.isdisjoint(extra):
            extra = {(f"{k}_" if k in _RESERVED else k): v for k, v in extra.items()}
        # a fresh context: the app's merge_contextvars adds nothing the runtime's thread has
        contextvars.Context().run(self._std.log, level, record["event"], extra=extra)

    def stored(self) -> list[dict[str, Any]]:
        """The stored records themselves, oldest first (one list copy under the lock; the
        records are the log's own: read them, do not change them). For a reader that finds
        new records by identity (the live view), instead of :meth:`events`' copy of each."""
        with self._lock:
            return list(self._records)

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


#: The records of a thunk actor that end it (its captured context then starts to linger).
_THUNK_ENDS = frozenset({"actor_stopped", "actor_crashed"})


def _record_fields(record: logging.LogRecord) -> dict[str, Any] | None:
    """The fields of a supervision record as stdlib logging got it (None: not one of ours)."""
    if not isinstance(getattr(record, "event", None), str) or record.name != LOGGER_NAME:
        return None
    return {k: v for k, v in record.__dict__.items() if k not in _RESERVED}


class _StructlogFormatter(logging.Formatter):
    """Renders supervision records (their fields) with structlog: console or JSON lines."""

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
        fields = _record_fields(record)
        if fields is None:
            return super().format(record)
        event_dict: Any = fields
        if not self._json:  # the console shows what is set; JSON keeps every key (null)
            event_dict = {k: v for k, v in event_dict.items() if v is not None}
        for processor in self._chain:
            event_dict = processor(None, record.levelname.lower(), event_dict)
        return str(event_dict)


def configure_output(
    *, json: bool = False, stream: IO[str] | None = None, level: int = logging.DEBUG
) -> logging.Handler:
    """Print the supervision log: human-readable lines by default, JSON lines with ``json=True``.

    Every record by default (``level``: DEBUG); ``level=logging.WARNING`` prints failures,
    restarts, failovers and breaker changes only (see :data:`EVENT_LEVELS`). The records stop
    propagating to the root logger. An application with its own logging set-up does not need
    this: its handlers get the records as they are (see the module docstring).

    Returns the installed handler (remove it with ``logging.getLogger(LOGGER_NAME).removeHandler``).
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_StructlogFormatter(json=json))
    std = _stdlib_logger()
    std.addHandler(handler)
    std.setLevel(level)
    std.propagate = False
    return handler
