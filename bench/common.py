"""Small helpers shared by the orchestrator and the workers (standard library only).

This module is imported by workers running in *both* virtual environments (the project's
``.venv`` and Mellea 0.7.0's ``/tmp/mellea-venv``), so it must not import anything but the
standard library.
"""

from __future__ import annotations

import os
import re
import statistics
import time
from collections.abc import Iterable, Sequence
from typing import Any

MODEL = "scripted"
"""The model name the scripted server serves."""

_TAG = re.compile(r"<<([A-Za-z0-9_.-]+)>>")


def tag(name: str) -> str:
    """A marker to put in a prompt, so that the server's record can be matched to its request."""
    return f"<<{name}>>"


def find_tag(obj: Any) -> str | None:
    """The first ``<<name>>`` marker in a request body's messages (any nesting), or None."""
    match = _TAG.search(repr(obj))
    return match.group(1) if match else None


def token_index(token: str) -> int:
    """``"t17"`` or ``"t17 "`` → 17 (the scripted server's counting tokens)."""
    return int(token.strip()[1:])


def proc_status() -> dict[str, int]:
    """This process's OS thread count and resident memory (from ``/proc/self/status``)."""
    out: dict[str, int] = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key == "Threads":
                out["threads"] = int(value)
            elif key in ("VmRSS", "VmHWM"):
                out[key.lower() + "_kib"] = int(value.split()[0])
    return out


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds consumed so far by process ``pid`` (Linux ``/proc``)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def system_busy_seconds() -> float:
    """CPU seconds spent busy by the whole machine so far, all cores (``/proc/stat``)."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    guest = sum(fields[8:10]) if len(fields) > 9 else 0  # already counted in user / nice
    return (sum(fields) - idle - guest) / _CLK_TCK


class Meter:
    """Wall (``perf_counter``) and CPU (``process_time``: every thread of this process)."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0
        self._w0 = 0.0
        self._c0 = 0.0

    def __enter__(self) -> Meter:
        self._w0 = time.perf_counter()
        self._c0 = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._w0
        self.cpu = time.process_time() - self._c0


def median(values: Iterable[float]) -> float:
    data = list(values)
    return statistics.median(data) if data else float("nan")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of an already sorted sequence (nearest rank)."""
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


def spread(values: Sequence[float]) -> float:
    """(max - min) / median, the noise figure reported next to a median (0 for one value)."""
    if len(values) < 2:
        return 0.0
    mid = median(values)
    return (max(values) - min(values)) / mid if mid else float("nan")


class Arrivals:
    """When each counting token (``t0 ``, ``t1 ``…) of one stream arrived, and whether in order."""

    __slots__ = ("disorder", "next", "times")

    def __init__(self, tokens: int) -> None:
        self.times: list[float | None] = [None] * tokens
        self.next = 0  # the index the next token must have
        self.disorder = 0  # tokens that did not come right after their predecessor

    def add(self, text: str, now: float) -> None:
        """Stamp every token found in ``text`` (one read of the stream) with ``now``."""
        for tok in text.split():
            i = token_index(tok)
            if i != self.next:
                self.disorder += 1
            self.next = i + 1
            if 0 <= i < len(self.times):
                self.times[i] = now


async def receive_times(mot: Any) -> list[float]:
    """Read a thunk to its end with ``astream()``; the receive time of each counting token
    (one ``t`` each) in the order they came."""
    times: list[float] = []
    while not mot.is_computed():
        text = await mot.astream()
        times.extend([time.monotonic()] * text.count("t"))
    return times


def raise_open_files(want: int = 65536) -> int:
    """Raise this process's soft limit of open files towards ``want`` (capped by the hard limit);
    returns the soft limit now in force. Thousands of concurrent streams need one socket each."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        return target
    return soft


def stream_result(m: Meter, rep: int, received: Sequence[Arrivals]) -> dict[str, Any]:
    """One measured repetition of the many-streams scenario, as a worker returns it."""
    return {
        "wall": m.wall,
        "cpu": m.cpu,
        "recv": {f"r{rep}s{k}": a.times for k, a in enumerate(received)},
        "disorder": sum(a.disorder for a in received),
    }


class FirstText:
    """Time from its creation to the first non-empty text added, and the whole text."""

    __slots__ = ("first", "parts", "t0")

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.first: float | None = None
        self.parts: list[str] = []

    def add(self, text: str) -> None:
        if text and self.first is None:
            self.first = time.perf_counter() - self.t0
        self.parts.append(text)

    def result(self, expect: str) -> dict[str, Any]:
        return {"first_s": self.first, "ok": "".join(self.parts) == expect}
