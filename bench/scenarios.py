"""The SPEC §8 scenarios: sizes, server scripts, targets, and how raw samples become numbers.

Each scenario runs every variant in a worker subprocess (see ``worker.py``) against one scripted
Ollama-protocol server process. A worker returns raw samples (times taken on the client); the
functions here join them with the server's records (send time of every token, the moment the
server saw a disconnect) and reduce them to the figures of the table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from common import find_tag, median, percentile, spread

from mellea_actors.testing import RequestRecord, Script

VARIANTS = ("raw_naive", "raw_capped", "mellea_actors", "mellea")
RAW = ("raw_naive", "raw_capped")


@dataclass
class Scenario:
    name: str
    title: str
    target: str
    script: Script
    params: dict[str, Any]  # passed to every worker
    rounds: int = 1  # each round runs every variant once (interleaved, to spread machine noise)
    warmup: int = 1
    reps: int = 3
    record_token_times: bool = False
    # spread the streams' phases evenly over one token period (first_delay = k/n * delay), so
    # that chunks arrive at a steady rate instead of n-chunk bursts every period
    stagger: bool = False
    needs_records: bool = False
    timeout: float = 300.0  # per worker process
    # variant -> max rounds (slow variants that are not the reference run fewer times)
    max_rounds: dict[str, int] = field(default_factory=dict)
    variants: tuple[str, ...] = VARIANTS


def build(quick: bool) -> list[Scenario]:
    """The five scenarios at full size, or the ``--quick`` sizes (< 1 min in all)."""
    long_n = 5000
    counting_long = Script.counting(long_n)
    short = Script.counting(20)
    n_streams, n_tokens = (100, 40) if quick else (1000, 100)
    n_live = 2000 if quick else 10_000
    # Mellea 0.7.0 needs O(n^2) time for n pending requests (each waits in httpx's pool): 2,000
    # take ~1 min, 10,000 would take far too long; it runs a smaller n (said in the table).
    n_live_mellea = 500 if quick else 2000
    cancel_runs = 50 if quick else 100
    return [
        Scenario(
            name="long_stream",
            title=f"1. one stream of {long_n:,} chunks drained with astream()",
            target="wall <= 1.15 x raw",
            script=counting_long,
            params={"expect": counting_long.text, "cap": 256},
            rounds=1 if quick else 3,
            warmup=1,
            reps=5,
        ),
        Scenario(
            name="lazy_thunks",
            title="2. 200 lazy thunks (20 tokens each) resolved with wait_for_all_mots",
            target="wall <= 1.1 x best raw",
            script=short,
            params={"n": 200, "expect": short.text, "cap": 256},
            rounds=1 if quick else 3,
            warmup=1,
            reps=3 if quick else 4,
        ),
        Scenario(
            name="cancel",
            title='3. cancel / validator "fail" -> server sees the disconnect',
            target="median <= 1 ms; 0 chunks after the failing one",
            script=Script.counting(2000, delay=0.001),
            params={"after": 10, "cap": 256},
            rounds=1 if quick else 2,
            warmup=5,
            reps=cancel_runs,
            needs_records=True,
        ),
        Scenario(
            name="many_streams",
            title=(
                f"4. {n_streams:,} concurrent streams x {n_tokens} chunks at 20 chunks/s "
                f"({_nproc()} cores)"
            ),
            target="all delivered; wall, CPU <= 1.1 x best raw; p99 < 50 ms",
            script=Script.counting(n_tokens, delay=0.05),
            params={"n": n_streams, "tokens": n_tokens, "cap": n_streams},
            rounds=1 if quick else 3,
            warmup=0,
            reps=1,
            record_token_times=True,
            stagger=True,
            needs_records=True,
            timeout=600.0,
            max_rounds={"raw_naive": 1, "mellea": 1},
        ),
        Scenario(
            name="live_thunks",
            title=f"5. {n_live:,} live thunks in one process (answers delayed 600 s)",
            target="threads do not grow with thunks",
            script=Script(tokens=("late",), first_delay=600.0),
            params={
                "n": n_live,
                "settle": 0.5 if quick else 1.0,
                "cap": 256,
                "per_variant": {"mellea": {"n": n_live_mellea}},
            },
            rounds=1,
            warmup=0,
            reps=1,
            timeout=600.0,
            variants=("raw_capped", "mellea_actors", "mellea"),
        ),
    ]


def _nproc() -> int:
    import os

    return len(os.sched_getaffinity(0))


# -- reducing samples ----------------------------------------------------------------------------
# A "sample" is one measured repetition of one variant, already joined with the server records.


def samples_from(
    sc: Scenario, results: list[dict[str, Any]], records: list[RequestRecord]
) -> list[dict[str, Any]]:
    """Turn one worker's results (+ the server's records of that worker) into samples."""
    if sc.name == "cancel":
        return _cancel_samples(results, records)
    if sc.name == "many_streams":
        return [_stream_sample(r, records, sc.params["tokens"]) for r in results]
    return results


def _by_tag(records: list[RequestRecord]) -> dict[str, RequestRecord]:
    out: dict[str, RequestRecord] = {}
    for rec in records:
        name = find_tag(rec.messages)
        if name is not None:
            out[name] = rec
    return out


def _cancel_samples(
    results: list[dict[str, Any]], records: list[RequestRecord]
) -> list[dict[str, Any]]:
    recs = _by_tag(records)
    out = []
    for block in results:
        if "skipped" in block:
            out.append({"kind": block["kind"], "skipped": block["skipped"]})
            continue
        for run in block["runs"]:
            rec = recs.get(run["tag"])
            disc = None if rec is None else rec.disconnected_at
            decided = run.get("decided_at")
            sample = {
                "kind": block["kind"],
                "disconnect_ms": None
                if disc is None or decided is None
                else (disc - decided) * 1000.0,
                "return_ms": None if decided is None else (run["returned_at"] - decided) * 1000.0,
                "outcome": None if rec is None else rec.outcome,
            }
            for key in ("delivered", "after_fail", "completed"):
                if key in run:
                    sample[key] = run[key]
            out.append(sample)
    return out


def _stream_sample(
    result: dict[str, Any], records: list[RequestRecord], tokens: int
) -> dict[str, Any]:
    recs = _by_tag(records)
    delays: list[float] = []
    delivered = missing_records = 0
    expected = tokens * len(result["recv"])
    for name, times in result["recv"].items():
        rec = recs.get(name)
        if rec is None:
            missing_records += 1
            continue
        sent = rec.token_times
        for i, t in enumerate(times):
            if t is not None:
                delivered += 1
                if i < len(sent):
                    delays.append(t - sent[i])
    delays.sort()
    return {
        "wall": result["wall"],
        "cpu": result["cpu"],
        "delivered": delivered,
        "expected": expected,
        "missing_records": missing_records,
        "p50_ms": percentile(delays, 0.50) * 1000.0,
        "p99_ms": percentile(delays, 0.99) * 1000.0,
        "max_ms": (delays[-1] if delays else float("nan")) * 1000.0,
    }


# -- aggregating -------------------------------------------------------------------------------


def _num(samples: list[dict[str, Any]], key: str) -> list[float]:
    return [s[key] for s in samples if isinstance(s.get(key), (int, float))]


def aggregate(sc: Scenario, samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Median figures of one variant (plus the noise figure ``spread`` of wall and CPU)."""
    if not samples:
        return {}
    agg: dict[str, Any] = {"n": len(samples)}
    for key in ("wall", "cpu"):
        values = _num(samples, key)
        if values:
            agg[key] = median(values)
            agg[f"{key}_spread"] = spread(values)
            agg[f"{key}_min"] = min(values)
    if sc.name in ("long_stream", "lazy_thunks"):
        agg["ok"] = all(s.get("ok") for s in samples)
    elif sc.name == "cancel":
        for kind in ("cancel", "validator"):
            runs = [s for s in samples if s.get("kind") == kind]
            skipped = [s["skipped"] for s in runs if "skipped" in s]
            if skipped:
                agg[kind] = {"skipped": skipped[0]}
                continue
            lat = sorted(_num(runs, "disconnect_ms"))
            ret = sorted(_num(runs, "return_ms"))
            if not runs:
                continue
            agg[kind] = {
                "runs": len(runs),
                "no_disconnect": sum(1 for s in runs if s.get("disconnect_ms") is None),
                "median_ms": median(lat),
                "p90_ms": percentile(lat, 0.9),
                "max_ms": lat[-1] if lat else float("nan"),
                "return_median_ms": median(ret),
            }
            if kind == "validator":
                agg[kind]["after_fail"] = sum(s.get("after_fail", 0) for s in runs)
                agg[kind]["completed"] = sum(1 for s in runs if s.get("completed"))
    elif sc.name == "many_streams":
        agg["delivered"] = min(s["delivered"] for s in samples)
        agg["expected"] = samples[0]["expected"]
        agg["all_delivered"] = all(
            s["delivered"] == s["expected"] and not s["missing_records"] for s in samples
        )
        agg["p50_ms"] = median(_num(samples, "p50_ms"))
        agg["p99_ms"] = median(_num(samples, "p99_ms"))
        agg["p99_ms_worst"] = max(_num(samples, "p99_ms"))
        agg["max_ms"] = max(_num(samples, "max_ms"))
    elif sc.name == "live_thunks":
        s = samples[0]
        keys = ("n", "create_s", "create_cpu", "live", "close_s", "before", "settled")
        agg.update({k: s[k] for k in keys})
        agg["checkpoints"] = s["checkpoints"]
        peak = max([s["settled"]["threads"]] + [c["threads"] for c in s["checkpoints"].values()])
        agg["threads_before"] = s["before"]["threads"]
        agg["threads_peak"] = peak
        agg["rss_mib"] = s["settled"]["vmrss_kib"] / 1024.0
        agg["rss_growth_mib"] = (s["settled"]["vmrss_kib"] - s["before"]["vmrss_kib"]) / 1024.0
    return agg


# -- verdicts ----------------------------------------------------------------------------------
Verdict = tuple[str, str]  # (metric text, PASS/FAIL/-)


def best_raw(aggs: dict[str, dict[str, Any]], key: str) -> float | None:
    values = [aggs[v][key] for v in RAW if v in aggs and key in aggs[v]]
    return min(values) if values else None


def verdict(sc: Scenario, variant: str, aggs: dict[str, dict[str, Any]]) -> Verdict:
    a = aggs.get(variant, {})
    if not a:
        return "", "-"
    judged = variant not in RAW
    fn: Callable[[Scenario, dict[str, Any], dict[str, dict[str, Any]]], tuple[str, bool | None]]
    fn = _VERDICTS[sc.name]
    text, ok = fn(sc, a, aggs)
    if not judged or ok is None:
        return text, "-"
    return text, "PASS" if ok else "FAIL"


def _ratio(a: dict[str, Any], aggs: dict[str, dict[str, Any]], key: str) -> float | None:
    best = best_raw(aggs, key)
    if best is None or key not in a or not best:
        return None
    return float(a[key]) / best


def _v_long(
    sc: Scenario, a: dict[str, Any], aggs: dict[str, dict[str, Any]]
) -> tuple[str, bool | None]:
    r = _ratio(a, aggs, "wall")
    text = "" if a.get("ok") else "WRONG TEXT"
    return text, None if r is None else (r <= 1.15 and bool(a.get("ok")))


def _v_lazy(
    sc: Scenario, a: dict[str, Any], aggs: dict[str, dict[str, Any]]
) -> tuple[str, bool | None]:
    r = _ratio(a, aggs, "wall")
    text = "" if a.get("ok") else "WRONG TEXT"
    return text, None if r is None else (r <= 1.10 and bool(a.get("ok")))


def _v_cancel(
    sc: Scenario, a: dict[str, Any], aggs: dict[str, dict[str, Any]]
) -> tuple[str, bool | None]:
    parts: list[str] = []
    ok = True
    c = a.get("cancel", {})
    if "median_ms" in c:
        parts.append(
            f"cancel->disc med {c['median_ms']:.2f} ms (p90 {c['p90_ms']:.2f}, "
            f"max {c['max_ms']:.2f}; cancel() returns {c['return_median_ms']:.2f})"
        )
        if c["no_disconnect"]:
            parts.append(f"{c['no_disconnect']} runs without disconnect")
        ok = ok and c["median_ms"] <= 1.0 and not c["no_disconnect"]
    v = a.get("validator", {})
    if "skipped" in v:
        parts.append(f"validator: skipped ({v['skipped']})")
    elif "median_ms" in v:
        parts.append(
            f'"fail"->disc med {v["median_ms"]:.2f} ms (p90 {v["p90_ms"]:.2f}); '
            f"chunks after fail: {v['after_fail']}"
        )
        ok = ok and v["median_ms"] <= 1.0 and v["after_fail"] == 0 and not v["no_disconnect"]
    return "; ".join(parts), ok


def _v_streams(
    sc: Scenario, a: dict[str, Any], aggs: dict[str, dict[str, Any]]
) -> tuple[str, bool | None]:
    rw, rc = _ratio(a, aggs, "wall"), _ratio(a, aggs, "cpu")
    text = (
        f"delivered {a['delivered']:,}/{a['expected']:,}; delay p50 {a['p50_ms']:.1f} ms, "
        f"p99 {a['p99_ms']:.1f} ms (worst run {a['p99_ms_worst']:.1f}), max {a['max_ms']:.0f} ms"
    )
    if rw is None or rc is None:
        return text, None
    ok = a["all_delivered"] and rw <= 1.10 and rc <= 1.10 and a["p99_ms"] < 50.0
    return text, ok


def _v_live(
    sc: Scenario, a: dict[str, Any], aggs: dict[str, dict[str, Any]]
) -> tuple[str, bool | None]:
    cps = ", ".join(f"{k}: {v['threads']}" for k, v in a["checkpoints"].items())
    text = (
        f"n={a['n']:,}: threads {a['threads_before']} before -> {cps} -> "
        f"{a['settled']['threads']} settled; "
        f"RSS {a['rss_mib']:.0f} MiB (+{a['rss_growth_mib']:.0f}); "
        f"create {a['create_s']:.2f} s; live {a['live']:,}; close {a['close_s']:.2f} s"
    )
    # "does not grow with them": a bounded pool (asyncio's getaddrinfo executor...) is allowed
    return text, a["threads_peak"] <= a["threads_before"] + 8


_VERDICTS = {
    "long_stream": _v_long,
    "lazy_thunks": _v_lazy,
    "cancel": _v_cancel,
    "many_streams": _v_streams,
    "live_thunks": _v_live,
}
