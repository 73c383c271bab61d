"""Restart policies of the runtime's supervisors.

A generator that fails for a *transient* reason (connection refused or dropped, HTTP 5xx) before
it delivered any chunk is restarted after an exponential backoff, up to ``max_restarts`` times;
after text was delivered it is never silently retried: the thunk fails and its reader gets the
error (text already received stays readable).

A host that answers 503 ("server busy": Ollama's queue, ``OLLAMA_MAX_QUEUE``, is full) before
the first chunk is admission, not failure: the request is sent again after the same backoff
(with jitter), for up to ``busy_retry_for`` seconds, and these retries count neither as restarts
nor toward the restart intensity.

Restart intensity, in the spirit of Erlang/OTP: if a supervisor needs more than
``intensity_restarts`` restarts within ``intensity_period`` seconds (over all its children), it
stops restarting and escalates: the failing generations fail with their error at once.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from mellea_actors.errors import BackendError, BackendResponseError, InvalidInputError

__all__ = ["RestartIntensity", "RestartPolicy"]


@dataclass(frozen=True)
class RestartPolicy:
    """When and how fast a failed generator is restarted."""

    max_restarts: int = 2
    backoff_initial: float = 0.05
    backoff_factor: float = 2.0
    backoff_max: float = 2.0
    intensity_restarts: int = 20
    intensity_period: float = 10.0
    busy_retry_for: float = 300.0

    def __post_init__(self) -> None:
        if self.max_restarts < 0:
            raise InvalidInputError(f"max_restarts must be >= 0, got {self.max_restarts}")
        if self.backoff_initial < 0 or self.backoff_factor < 1 or self.backoff_max < 0:
            raise InvalidInputError("backoff values must be >= 0 (factor >= 1)")
        if self.busy_retry_for < 0:
            raise InvalidInputError(f"busy_retry_for must be >= 0, got {self.busy_retry_for}")

    def backoff(self, restart_number: int) -> float:
        """Seconds to wait before restart number ``restart_number`` (1-based)."""
        delay = self.backoff_initial * self.backoff_factor ** (restart_number - 1)
        return float(min(delay, self.backoff_max))

    def should_retry_busy(self, error: BaseException, chunks: int, waited: float) -> bool:
        """True if ``error`` is a "server busy" answer (HTTP 503) before any chunk, and the
        generation has been trying for less than ``busy_retry_for`` seconds."""
        return (
            isinstance(error, BackendResponseError)
            and error.status_code == 503
            and chunks == 0
            and waited < self.busy_retry_for
        )

    def should_restart(self, error: BaseException, restarts_so_far: int, chunks: int) -> bool:
        """True if a generator that failed with ``error`` may be restarted transparently."""
        return (
            isinstance(error, BackendError)
            and error.transient
            and chunks == 0
            and restarts_so_far < self.max_restarts
        )


class RestartIntensity:
    """Counts restarts in a sliding window; ``exceeded`` once the policy's intensity is passed.

    Owned by one supervisor; used only on its loop thread.
    """

    def __init__(self, policy: RestartPolicy) -> None:
        self._policy = policy
        self._times: deque[float] = deque()

    def record(self, now: float | None = None) -> bool:
        """Record a restart; returns False if this restart exceeds the intensity (escalate)."""
        now = time.monotonic() if now is None else now
        horizon = now - self._policy.intensity_period
        while self._times and self._times[0] < horizon:
            self._times.popleft()
        if len(self._times) >= self._policy.intensity_restarts:
            return False
        self._times.append(now)
        return True
