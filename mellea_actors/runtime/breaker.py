"""The circuit breaker of one Ollama host.

States::

    closed ──(threshold consecutive connection failures)──▶ open
    open ──(probe task: GET /api/version with exponential backoff)──▶ closed, when the host answers

While the breaker is open, new generations for that host fail at once with
:class:`~mellea_actors.errors.CircuitOpenError` (naming the host and what happened) instead of each
waiting for its own connect timeout; restarts waiting for their backoff fail the same way. Only
*connection* failures count (:class:`~mellea_actors.errors.BackendUnavailableError`): an HTTP error
or a dropped stream means the host is there. Any success (a chunk, or a probe answer) closes it.

Ownership: a breaker belongs to one generation supervisor and is used only on its loop thread.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mellea_actors.errors import CircuitOpenError, InvalidInputError

__all__ = ["BreakerPolicy", "BreakerState", "CircuitBreaker"]


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"


@dataclass(frozen=True)
class BreakerPolicy:
    """When a host's breaker opens and how it probes the host to close again."""

    failure_threshold: int = 5
    probe_initial: float = 0.2
    probe_factor: float = 2.0
    probe_max: float = 5.0
    probe_timeout: float = 2.0

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise InvalidInputError(f"failure_threshold must be >= 1, got {self.failure_threshold}")
        if self.probe_initial <= 0 or self.probe_factor < 1 or self.probe_max <= 0:
            raise InvalidInputError("probe delays must be > 0 (factor >= 1)")


class CircuitBreaker:
    """Counts consecutive connection failures of one host; see the module docstring."""

    def __init__(self, host: str, policy: BreakerPolicy) -> None:
        self.host = host
        self.policy = policy
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self.last_error: BaseException | None = None
        self.probes = 0

    @property
    def is_open(self) -> bool:
        return self.state is BreakerState.OPEN

    def record_failure(self, error: BaseException) -> bool:
        """Count a connection failure; True if this one opened the breaker."""
        self.consecutive_failures += 1
        self.last_error = error
        if self.state is BreakerState.CLOSED and (
            self.consecutive_failures >= self.policy.failure_threshold
        ):
            self.state = BreakerState.OPEN
            self.probes = 0
            return True
        return False

    def trip(self, error: BaseException) -> bool:
        """Open at once (a pooled host's half-open trial failed); True if it was closed."""
        self.consecutive_failures += 1
        self.last_error = error
        if self.state is BreakerState.OPEN:
            return False
        self.state = BreakerState.OPEN
        self.probes = 0
        return True

    def record_success(self) -> bool:
        """The host answered; True if this closed an open breaker."""
        was_open = self.state is BreakerState.OPEN
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self.last_error = None
        return was_open

    def next_probe_delay(self) -> float:
        """Seconds until the next probe (grows with every failed probe)."""
        delay = self.policy.probe_initial * self.policy.probe_factor**self.probes
        self.probes += 1
        return float(min(delay, self.policy.probe_max))

    def open_error(self, model: str | None = None) -> CircuitOpenError:
        """The error a request gets while the breaker is open."""
        return CircuitOpenError(
            f"Ollama at {self.host} is unreachable: the circuit breaker opened after "
            f"{self.consecutive_failures} consecutive connection failures "
            f"(last: {self.last_error}); failing fast until /api/version answers again",
            host=self.host,
            model=model,
        )
