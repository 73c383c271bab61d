"""The live view's Prometheus metrics, in a registry of their own (one per system).

Counters and histograms are fed from the supervision log's records (one call of
:meth:`LiveMetrics.record` per record, in log order), so they say what the log says; gauges
and the token counter are snapshots taken at scrape time (:class:`_SnapshotCollector`). Nothing
here runs per chunk.

Names (``docs/live_view.md`` has the table):

* ``mellea_actors_generations_total{outcome}``: generations ended (``completed``, ``failed``,
  ``cancelled``: one per ``generation_*`` record).
* ``mellea_actors_generation_attempts_total``: attempts launched (``generation_started``).
* ``mellea_actors_tokens_total``: deltas received (ended generations: their records' ``chunks``;
  running ones: their buffer's length now). ``rate()`` of it is tokens per second.
* ``mellea_actors_time_to_first_chunk_seconds``: histogram (``first_chunk`` records' latency).
* ``mellea_actors_chunk_delay_seconds``: histogram of the mean delay between two deltas of a
  generation, one observation per ended generation with two deltas or more.
* ``mellea_actors_errors_total{event,kind}``: ``generation_failed`` (kind: the error type),
  ``actor_crashed`` (kind: the actor kind), ``validator_failed`` (the error type), ``escalated``.
* ``mellea_actors_restarts_total{kind}``: ``generator_restarted`` and ``actor_restarted``.
* ``mellea_actors_failovers_total``, ``mellea_actors_verdict_fails_total``.
* ``mellea_actors_log_records_total{event}``: every record the view has read.
* ``mellea_actors_log_records_missed_total``: records that left the log's ring before the view
  read them (0 unless the log turns over faster than the view reads it).
* Gauges: ``mellea_actors_active_streams{kind}`` (``generation``: generations under way;
  ``chunking``: ``stream_with_chunking`` runs), ``mellea_actors_breaker_open{host}`` (1 while a
  host's circuit breaker is open), ``mellea_actors_host_in_flight{host}`` (pool only).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["LiveMetrics", "Snapshot"]

#: What the snapshot collector reads at scrape time (see :meth:`LiveState.metrics_snapshot`).
Snapshot = dict[str, Any]

_ENDED = {
    "generation_completed": "completed",
    "generation_failed": "failed",
    "generation_cancelled": "cancelled",
}
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_DELAY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _SnapshotCollector(Collector):
    """Gauges and the token counter, read at scrape time from ``snapshot()``."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        tokens = CounterMetricFamily(
            "mellea_actors_tokens",
            "Deltas (tokens) received: ended generations' chunks plus running ones' buffers",
        )
        tokens.add_metric([], snap["tokens"])
        yield tokens
        active = GaugeMetricFamily(
            "mellea_actors_active_streams",
            "Streams under way (generation: generations; chunking: stream_with_chunking runs)",
            labels=["kind"],
        )
        active.add_metric(["generation"], snap["active_generations"])
        active.add_metric(["chunking"], snap["active_chunking"])
        yield active
        breaker = GaugeMetricFamily(
            "mellea_actors_breaker_open",
            "1 while the host's circuit breaker is open, else 0",
            labels=["host"],
        )
        for host, is_open in sorted(snap["breakers"].items()):
            breaker.add_metric([host], 1.0 if is_open else 0.0)
        yield breaker
        in_flight = GaugeMetricFamily(
            "mellea_actors_host_in_flight",
            "Attempts running on the host (pool only)",
            labels=["host"],
        )
        for host in snap["hosts"]:
            in_flight.add_metric([str(host.get("url"))], float(host.get("in_flight") or 0))
        yield in_flight


class LiveMetrics:
    """The metrics of one system's live view (its own :class:`CollectorRegistry`).

    ``record`` is called under the live state's lock, in log order; prometheus_client's own
    locks make the scrape safe against it.
    """

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.generations = Counter(
            "mellea_actors_generations",
            "Generations ended, by outcome (one per generation_* record)",
            ["outcome"],
            registry=r,
        )
        for outcome in _ENDED.values():
            self.generations.labels(outcome)
        self.attempts = Counter(
            "mellea_actors_generation_attempts",
            "Generation attempts launched (generation_started records)",
            registry=r,
        )
        self.ttfc = Histogram(
            "mellea_actors_time_to_first_chunk_seconds",
            "Time from an attempt's start to its first delta (first_chunk records)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.chunk_delay = Histogram(
            "mellea_actors_chunk_delay_seconds",
            "Mean delay between two deltas of a generation (one observation per ended "
            "generation with two deltas or more)",
            buckets=_DELAY_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "mellea_actors_errors",
            "Errors by record (event) and kind (error type, or the crashed actor's kind)",
            ["event", "kind"],
            registry=r,
        )
        self.restarts = Counter(
            "mellea_actors_restarts",
            "Restarts (generator_restarted, actor_restarted), by the restarted one's kind",
            ["kind"],
            registry=r,
        )
        self.restarts.labels("generator")
        self.failovers = Counter(
            "mellea_actors_failovers", "Attempts moved to another host", registry=r
        )
        self.verdict_fails = Counter(
            "mellea_actors_verdict_fails", "'fail' verdicts of validators", registry=r
        )
        self.records = Counter(
            "mellea_actors_log_records",
            "Supervision log records read by the live view, by event",
            ["event"],
            registry=r,
        )
        self.missed = Counter(
            "mellea_actors_log_records_missed",
            "Records that left the log's ring buffer before the live view read them",
            registry=r,
        )
        r.register(_SnapshotCollector(snapshot))

    def record(self, record: dict[str, Any], chunk_delay: float | None) -> None:
        """Count one supervision-log record (``chunk_delay``: the mean delay between the
        deltas of the generation it ends, when it ends one)."""
        event = record.get("event")
        self.records.labels(str(event)).inc()
        outcome = _ENDED.get(str(event))
        if outcome is not None:
            self.generations.labels(outcome).inc()
            if chunk_delay is not None:
                self.chunk_delay.observe(chunk_delay)
            if outcome == "failed":
                self.errors.labels("generation_failed", str(record.get("error_type"))).inc()
        elif event == "generation_started":
            self.attempts.inc()
        elif event == "first_chunk":
            latency = record.get("latency")
            if isinstance(latency, int | float):
                self.ttfc.observe(max(0.0, float(latency)))
        elif event == "actor_crashed":
            self.errors.labels("actor_crashed", str(record.get("kind"))).inc()
        elif event == "validator_failed":
            self.errors.labels("validator_failed", str(record.get("error_type"))).inc()
        elif event == "escalated":
            self.errors.labels("escalated", str(record.get("kind"))).inc()
        elif event == "generator_restarted":
            self.restarts.labels("generator").inc()
        elif event == "actor_restarted":
            self.restarts.labels(str(record.get("kind"))).inc()
        elif event == "failover":
            self.failovers.inc()
        elif event == "verdict_fail":
            self.verdict_fails.inc()

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)
