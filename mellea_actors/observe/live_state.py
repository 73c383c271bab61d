"""What the live view keeps: the log's tail (numbered), per-stream progress, breaker states.

:meth:`LiveState.ingest` reads the records the log gained since the last call (found by
identity in :meth:`LiveSource.records`'s list: O(new records) plus one list copy), numbers them
(``seq``: 1, 2, … in the order the view read them), feeds the metrics and updates one
:class:`_Stream` per generation. It runs on the server's threads (each request, and the
server's idle tick), never on the runtime's loop. Running generations' token counts are read
from :meth:`LiveSource.streams` when a view is built, not counted per chunk.

Thread-safety: every public method may be called from any thread (one lock).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mellea_actors.observe.live_metrics import LiveMetrics, Snapshot
from mellea_actors.observe.live_source import LiveSource

__all__ = ["LiveState"]

#: Ended generations kept for the page (the newest).
ENDED_KEPT = 200
#: Records kept for ``/api/events`` (as many as the log's default ring).
TAIL_KEPT = 10_000
#: Generations known at most (the oldest are forgotten first: one whose end left the log's
#: ring unread would otherwise be kept for ever).
STREAMS_KEPT = 20_000

_END_EVENTS = {
    "generation_completed": "completed",
    "generation_failed": "failed",
    "generation_cancelled": "cancelled",
}


@dataclass(slots=True)
class _Stream:
    """One generation as the log told it (records only; live counts come from the source)."""

    thunk: str
    started_at: float  # ts of its first generation_started
    host: str | None = None
    model: str | None = None
    attempt: int = 1
    restarts: int = 0
    failovers: int = 0
    first_chunk_at: float | None = None  # ts of first_chunk
    ttfc: float | None = None
    ended_at: float | None = None
    outcome: str | None = None
    chunks: int | None = None
    completion_tokens: int | None = None
    reason: str | None = None
    error_type: str | None = None
    stream_actor: str | None = None  # stream-<id> when a stream_with_chunking run reads it
    validators: dict[str, dict[str, Any]] = field(default_factory=dict)


class LiveState:
    """The live view's state for one :class:`LiveSource` (see the module docstring)."""

    def __init__(self, source: LiveSource) -> None:
        self.source = source
        self._lock = threading.Lock()
        self._last: dict[str, Any] | None = None  # the last record read (held: identity)
        self._seq = 0
        self._tail: deque[tuple[int, dict[str, Any]]] = deque(maxlen=TAIL_KEPT)
        self._streams: OrderedDict[str, _Stream] = OrderedDict()
        self._ended: deque[str] = deque()
        self._ended_tokens = 0  # sum of ended generations' chunks
        self._tokens_seen = 0  # the token counter's high-water mark (monotonic)
        self._breakers: dict[str, bool] = {}  # host -> open
        self._actor_restarts: dict[str, int] = {}  # actor id -> restarts
        self._event_names: set[str] = set()
        self.updates = 0  # ingest calls that found something (the page shows it)
        self.metrics = LiveMetrics(self._metrics_snapshot)

    # -- reading the log -------------------------------------------------------------------
    def ingest(self) -> int:
        """Read the records the log gained since the last call; returns how many."""
        records = self.source.records()
        with self._lock:
            new = self._new_records(records)
            for record in new:
                self._seq += 1
                self._tail.append((self._seq, record))
                self._apply(record)
            if new:
                self._last = new[-1]
                self.updates += 1
            return len(new)

    def _new_records(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        last = self._last
        if last is None:
            return records
        for i in range(len(records) - 1, -1, -1):
            if records[i] is last:
                return records[i + 1 :]
        # the last one read left the ring: everything there is new, and some were missed
        # (how many is unknown; count at least one)
        self.metrics.missed.inc()
        return records

    def _apply(self, record: dict[str, Any]) -> None:
        event = str(record.get("event"))
        self._event_names.add(event)
        thunk = record.get("thunk")
        stream = self._streams.get(thunk) if isinstance(thunk, str) else None
        chunk_delay: float | None = None
        if event == "generation_started" and isinstance(thunk, str):
            if stream is None:
                stream = self._streams[thunk] = _Stream(thunk, float(record.get("ts") or 0.0))
                while len(self._streams) > STREAMS_KEPT:
                    self._streams.popitem(last=False)
            stream.host = record.get("host") or stream.host
            stream.model = record.get("model") or stream.model
            stream.attempt = int(record.get("attempt") or stream.attempt)
        elif stream is not None:
            if event == "first_chunk":
                stream.first_chunk_at = float(record.get("ts") or 0.0)
                latency = record.get("latency")
                stream.ttfc = float(latency) if isinstance(latency, int | float) else None
            elif event in _END_EVENTS and stream.outcome is None:
                stream.outcome = _END_EVENTS[event]
                stream.ended_at = float(record.get("ts") or 0.0)
                chunks = record.get("chunks")
                stream.chunks = int(chunks) if isinstance(chunks, int) else 0
                tokens = record.get("completion_tokens")
                stream.completion_tokens = tokens if isinstance(tokens, int) else None
                stream.reason = record.get("reason")
                stream.error_type = record.get("error_type")
                self._ended_tokens += stream.chunks
                if stream.chunks >= 2 and stream.first_chunk_at is not None:
                    span = stream.ended_at - stream.first_chunk_at
                    chunk_delay = max(0.0, span) / (stream.chunks - 1)
                self._ended.append(thunk)  # type: ignore[arg-type]
                self._forget_old()
            elif event == "generator_restarted":
                stream.restarts += 1
            elif event == "failover":
                stream.failovers += 1
                stream.host = record.get("to_host") or stream.host
            elif record.get("kind") in ("validator", "stream"):
                self._apply_stream_record(stream, event, record)
        if event in ("breaker_opened", "breaker_closed") and record.get("host"):
            self._breakers[str(record["host"])] = event == "breaker_opened"
        elif event == "generation_started" and record.get("host"):
            self._breakers.setdefault(str(record["host"]), False)
        elif event == "actor_restarted":
            actor = str(record.get("actor"))
            self._actor_restarts[actor] = self._actor_restarts.get(actor, 0) + 1
        self.metrics.record(record, chunk_delay)

    @staticmethod
    def _apply_stream_record(stream: _Stream, event: str, record: dict[str, Any]) -> None:
        actor = str(record.get("actor"))
        if record.get("kind") == "stream":
            stream.stream_actor = actor
            return
        parent = record.get("parent")
        if isinstance(parent, str):
            stream.stream_actor = parent
        v = stream.validators.setdefault(actor, {"fail": 0, "fault": 0, "checked": None})
        if event == "actor_started":
            v["check"] = record.get("check")
        elif event == "verdict_fail":
            v["fail"] += 1
        elif event == "validator_failed":
            v["fault"] += 1
        elif event == "actor_stopped":
            v["checked"] = record.get("checked")

    def _forget_old(self) -> None:
        while len(self._ended) > ENDED_KEPT:
            self._streams.pop(self._ended.popleft(), None)

    # -- views (JSON-ready) -------------------------------------------------------------------
    def streams(self) -> list[dict[str, Any]]:
        """Every generation under way, then the newest ended ones: progress and verdicts."""
        live = {s["thunk"]: s for s in self.source.streams()}
        now = time.time()
        with self._lock:
            rows = []
            for thunk, stream in self._streams.items():
                snap = live.pop(thunk, None)
                rows.append(self._row(stream, snap, now))
            for thunk, snap in live.items():  # started before the view read its record
                rows.append(self._row(_Stream(thunk, now), snap, now))
        running = [r for r in rows if r["outcome"] is None]
        ended = sorted(
            (r for r in rows if r["outcome"] is not None), key=lambda r: -(r["ended_ts"] or 0)
        )
        return running + ended

    @staticmethod
    def _row(stream: _Stream, snap: dict[str, Any] | None, now: float) -> dict[str, Any]:
        if stream.outcome is not None:
            tokens = stream.chunks or 0
            state = stream.outcome
            span = None
            if stream.first_chunk_at is not None and stream.ended_at is not None:
                span = stream.ended_at - stream.first_chunk_at
            age = (stream.ended_at or now) - stream.started_at
        else:  # no snapshot: its thunk is gone, the view has not read its end (yet)
            tokens = int(snap["tokens"]) if snap else 0
            state = str(snap["status"]) if snap else "ended"
            span = snap.get("streaming_for") if snap else None
            age = now - stream.started_at
        rate = tokens / span if span and span > 0 and tokens else None
        outcome = stream.outcome if stream.outcome is not None or snap else "ended"
        return {
            "thunk": stream.thunk,
            "state": state,
            "outcome": outcome,
            "host": stream.host,
            "model": stream.model,
            "tokens": tokens,
            "tokens_per_s": None if rate is None else round(rate, 2),
            "age_s": round(max(0.0, age), 3),
            "ttfc_s": None if stream.ttfc is None else round(stream.ttfc, 4),
            "attempt": stream.attempt,
            "restarts": stream.restarts,
            "failovers": stream.failovers,
            "stream_actor": stream.stream_actor,
            "verdicts": {
                "fail": sum(v["fail"] for v in stream.validators.values()),
                "fault": sum(v["fault"] for v in stream.validators.values()),
                "validators": len(stream.validators),
                "checked": [v["checked"] for v in stream.validators.values()],
            },
            "reason": stream.reason,
            "error_type": stream.error_type,
            "ended_ts": stream.ended_at,
        }

    def tree(self) -> dict[str, Any]:
        """The source's actor tree, each node with ``state``, ``host`` and ``restarts``."""
        tree = self.source.tree()
        with self._lock:
            self._annotate(tree)
        return tree

    def _annotate(self, node: dict[str, Any]) -> None:
        node_id = str(node.get("id"))
        state = node.get("state") or node.get("status")
        if state is None and "alive" in node:
            state = "alive" if node["alive"] else "stopped"
        node["state"] = state or "running"
        node.setdefault("restarts", self._actor_restarts.get(node_id, 0))
        if node.get("kind") == "thunk":
            stream = self._streams.get(node_id.removeprefix("thunk-"))
            if stream is not None:
                node.setdefault("host", stream.host)
                node["restarts"] = stream.restarts
        elif node.get("kind") == "host":
            node.setdefault("host", node.get("url"))
        for child in node.get("children") or ():
            if isinstance(child, dict):
                self._annotate(child)

    def events(
        self,
        *,
        thunk: str | None = None,
        actor: str | None = None,
        event: str | Iterable[str] | None = None,
        since: int | None = None,
        limit: int | None = 200,
    ) -> tuple[list[dict[str, Any]], int]:
        """The records read so far (the newest ``limit``, oldest first), each with its ``seq``,
        filtered like ``SupervisionLog.events`` (an ``actor`` or ``thunk`` filter also matches
        a prefix ending in ``*``), plus only those after ``since``; and the last ``seq``."""
        names = {event} if isinstance(event, str) else set(event) if event is not None else None
        with self._lock:
            tail = list(self._tail)
            last = self._seq
        out = []
        for seq, record in reversed(tail):
            if since is not None and seq <= since:
                break
            if (
                _matches(record.get("thunk"), thunk)
                and _matches(record.get("actor"), actor)
                and (names is None or record.get("event") in names)
            ):
                out.append({"seq": seq, **record})
                if limit is not None and len(out) >= limit:
                    break
        out.reverse()
        return out, last

    def event_names(self) -> list[str]:
        with self._lock:
            return sorted(self._event_names)

    def breakers(self) -> dict[str, bool]:
        with self._lock:
            return dict(self._breakers)

    @property
    def seq(self) -> int:
        return self._seq

    # -- the metrics' snapshot (at scrape time) -------------------------------------------------
    def _metrics_snapshot(self) -> Snapshot:
        live = self.source.streams()
        tree = self.source.tree()
        with self._lock:
            running = sum(
                int(s["tokens"])
                for s in live
                if (known := self._streams.get(s["thunk"])) is None or known.outcome is None
            )
            # monotonic: a generation whose end the view has not read yet may count a delta
            # the ended record does not (thinking-only deltas are counted the other way round)
            tokens = max(self._tokens_seen, self._ended_tokens + running)
            self._tokens_seen = tokens
            breakers = dict(self._breakers)
        active = sum(1 for s in live if s.get("status") in ("pending", "streaming"))
        return {
            "tokens": tokens,
            "active_generations": active,
            "active_chunking": _count_kind(tree, "stream"),
            "breakers": breakers,
            "hosts": self.source.hosts(),
        }


def _matches(value: Any, wanted: str | None) -> bool:
    if not wanted:
        return True
    if not isinstance(value, str):
        return False
    if wanted.endswith("*"):
        return value.startswith(wanted[:-1])
    return value == wanted


def _count_kind(node: dict[str, Any], kind: str) -> int:
    own = 1 if node.get("kind") == kind else 0
    return own + sum(
        _count_kind(c, kind) for c in node.get("children") or () if isinstance(c, dict)
    )
