"""Scenario ``host_pool`` (SPEC §11): throughput through a pool, and what a failover costs.

Run directly: ``.venv/bin/python bench/host_pool.py [--quick] [--json PATH]``.

* **scaling**: each scripted host (``ScriptedOllamaProcess``, a subprocess each, so no host
  shares the client's GIL) is capped at ``K`` concurrent generations — the session's
  ``max_in_flight=K`` holds the rest in the client's per-host queue, and every host's capacity
  is ``K`` — and serves paced tokens (``tokens`` tokens, ``delay`` s apart). ``requests``
  generations are submitted at once to a session of one host, then of three; requests/s is
  ``requests / wall time``. Target: three hosts ≥ 2.7x one host.
* **failover**: one generation at a time, ``rounds`` times: a first-try success on a healthy
  host, and a failover (the first host refuses connections, ``ECONNREFUSED`` on loopback; the
  breaker is set never to open so every round fails over). Latency = submit → computed.
  Target: median(failover) - median(first try) ≤ 5 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mellea_actors import start_session
from mellea_actors.runtime.breaker import BreakerPolicy
from mellea_actors.runtime.host_pool import HostSpec
from mellea_actors.testing import Script, ScriptedOllama, ScriptedOllamaProcess

MODEL = "scripted"


def throughput(servers: list[ScriptedOllamaProcess], k: int, requests: int) -> float:
    specs = [HostSpec(s.base_url, capacity=k) for s in servers]
    with start_session(model_id=MODEL, base_url=specs, max_in_flight=k) as m:
        m.submit("warm-up").wait(timeout=60)
        for s in servers:
            s.reset()
        started = time.perf_counter()
        mots = [m.submit(f"r{i}") for i in range(requests)]
        for mot in mots:
            mot.wait(timeout=300)
        elapsed = time.perf_counter() - started
    peaks = [s.peak_active() for s in servers]
    assert max(peaks) <= k, f"a host ran more than K={k} at once: {peaks}"
    return requests / elapsed


def failover_latency(rounds: int) -> dict[str, float]:
    never_open = BreakerPolicy(failure_threshold=10**9)
    with ScriptedOllama() as good, ScriptedOllama() as bad:
        samples: dict[str, list[float]] = {"first_try": [], "failover": []}
        with start_session(model_id=MODEL, base_url=[good.base_url]) as m:
            for i in range(rounds + 5):
                t = time.perf_counter()
                m.submit(f"f{i}").wait(timeout=10)
                if i >= 5:
                    samples["first_try"].append(time.perf_counter() - t)
        with start_session(
            model_id=MODEL, base_url=[bad.base_url, good.base_url], breaker_policy=never_open
        ) as m:
            bad.refuse_connections(None)
            for i in range(rounds + 5):
                t = time.perf_counter()
                m.submit(f"g{i}").wait(timeout=10)
                if i >= 5:
                    samples["failover"].append(time.perf_counter() - t)
            moved = len(m.system.log.events(event="failover", limit=None))
            assert moved >= rounds, f"only {moved} failovers"
    first = statistics.median(samples["first_try"]) * 1000
    over = statistics.median(samples["failover"]) * 1000
    return {"first_try_ms": first, "failover_ms": over, "added_ms": over - first}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("-k", type=int, default=4)
    args = parser.parse_args(argv)
    k = args.k
    requests = 120 if args.quick else 480
    rounds = 50 if args.quick else 200
    script = Script(tokens=tuple(f"t{i} " for i in range(20)), delay=0.01)
    servers = [ScriptedOllamaProcess(script, models=(MODEL,)).start() for _ in range(3)]
    try:
        one = throughput(servers[:1], k, requests)
        three = throughput(servers, k, requests)
    finally:
        for s in servers:
            s.stop()
    latency = failover_latency(rounds)
    result: dict[str, Any] = {
        "k": k,
        "requests": requests,
        "rps_1_host": one,
        "rps_3_hosts": three,
        "ratio": three / one,
        **latency,
    }
    ok_ratio = result["ratio"] >= 2.7
    ok_latency = result["added_ms"] <= 5.0
    print(
        f"K={k}: 1 host {one:.1f} req/s, 3 hosts {three:.1f} req/s, ratio {three / one:.2f}x "
        f"(target >= 2.7x: {'PASS' if ok_ratio else 'FAIL'})"
    )
    print(
        f"failover: first try {latency['first_try_ms']:.2f} ms, failover "
        f"{latency['failover_ms']:.2f} ms, added {latency['added_ms']:.2f} ms (median; target "
        f"<= 5 ms: {'PASS' if ok_latency else 'FAIL'})"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if ok_ratio and ok_latency else 1


if __name__ == "__main__":
    raise SystemExit(main())
