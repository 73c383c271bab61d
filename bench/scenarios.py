"""The SPEC §8 scenarios: sizes, server scripts, targets, and how raw samples become numbers.

Each scenario runs every variant in a worker subprocess (see ``worker.py``) against one scripted
Ollama-protocol server process. A worker returns raw samples (times taken on the client); the
functions here join them with the server's records (send time of every token, the moment the
server saw a disconnect) and reduce them to the figures of the table, and judge them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from common import find_tag, median, percentile, spread

from mellea_actors.testing import RequestRecord, Script

VARIANTS = ("floor", "raw_naive", "raw_capped", "mellea", "mellea_actors")
"""Every variant, in the order of the tables' columns."""
RAW = ("raw_naive", "raw_capped")
REFERENCES = ("floor", *RAW)
"""The baselines: never judged, they are what the others are compared with."""
LABELS = {v: v for v in VARIANTS} | {"mellea": "Mellea 0.7.0"}
PERIOD = 0.05  # 20 tokens/s per stream


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
    # what the ratios are to: "floor", "raw" (the best raw variant), or "" (none)
    reference: str = "raw"
    worker: str = ""  # the workers' scenario function, when it is not ``name``
    sizes: tuple[int, ...] = ()  # one worker per size, with params n = cap = the size
    small_runs: tuple[int, int] = (1, 3)  # (warmup, reps) of the sizes up to 100
    needs_server: bool = True
    # the scripted server answers 503 "server busy" beyond this many generations at once, as
    # Ollama does beyond OLLAMA_NUM_PARALLEL + OLLAMA_MAX_QUEUE (None: it takes every request)
    server_max_active: int | None = None

    def runs_for(self, size: int | None) -> tuple[int, int]:
        """(warmup, reps) of one worker; small scaling sizes repeat (their figures are tiny)."""
        if size is not None and size <= 100:
            return self.small_runs
        return self.warmup, self.reps


#: What one Ollama host takes at once by default: OLLAMA_NUM_PARALLEL (up to 4) running plus
#: OLLAMA_MAX_QUEUE (512) waiting; it answers 503 "server busy" to the rest.
OLLAMA_TAKES = 516


def build(quick: bool) -> list[Scenario]:
    """The scenarios at full size, or the ``--quick`` sizes."""
    long_n = 5000
    counting_long = Script.counting(long_n)
    short = Script.counting(20)
    n_streams, n_tokens = (100, 40) if quick else (1000, 40)
    sizes = (10, 100, 1000) if quick else (10, 100, 1000, 3000)
    n_live = 2000 if quick else 10_000
    # Mellea 0.7.0 needs O(n^2) time for n pending requests (each waits in httpx's pool): 2,000
    # take ~1 min, 10,000 would take far too long; it runs a smaller n (said in the table).
    n_live_mellea = 300 if quick else 2000
    cancel_runs = 20 if quick else 100
    # paced streams: one measured run per worker, every token's send time joined by tag
    paced: dict[str, Any] = {
        "warmup": 0,
        "reps": 1,
        "record_token_times": True,
        "stagger": True,
        "needs_records": True,
        "timeout": 600.0,
    }
    return [
        Scenario(
            name="long_stream",
            title=f"1. one stream of {long_n:,} chunks drained with astream()",
            target="wall <= 1.1 x raw",
            script=counting_long,
            params={"expect": counting_long.text, "cap": 256},
            rounds=1 if quick else 3,
            warmup=1,
            reps=5,
        ),
        Scenario(
            name="first_text",
            title="1b. time to first text (call -> first non-empty astream(), 20-token answers)",
            target="median <= raw + 2 ms",
            script=short,
            params={"expect": short.text, "cap": 256},
            warmup=5,
            reps=20 if quick else 50,
        ),
        Scenario(
            name="lazy_thunks",
            title="2. 200 lazy thunks (20 tokens each) resolved with wait_for_all_mots",
            target="wall <= 1.1 x best raw",
            script=short,
            params={"n": 200, "expect": short.text, "cap": 256},
            rounds=1 if quick else 3,
            warmup=1,
            reps=2 if quick else 4,
        ),
        Scenario(
            name="cancel",
            title='3. cancel / validator "fail" -> server sees the disconnect',
            target='"fail" -> disconnect median <= 0.6 ms; 0 chunks after the failing one',
            script=Script.counting(2000, delay=0.001),
            params={"after": 10, "cap": 256},
            rounds=1 if quick else 2,
            warmup=5,
            reps=cancel_runs,
            needs_records=True,
            reference="",
        ),
        Scenario(
            name="many_streams",
            title=(
                f"4. {n_streams:,} concurrent streams x {n_tokens} chunks at 20 chunks/s "
                f"({_nproc()} cores)"
            ),
            target=(
                "all in flight, all in order; CPU <= 1.5x, wall <= 1.2x, p99 <= 1.5x floor "
                "and < 50 ms"
            ),
            script=Script.counting(n_tokens, delay=PERIOD),
            params={"n": n_streams, "tokens": n_tokens, "cap": n_streams},
            rounds=1 if quick else 3,
            max_rounds={"raw_naive": 1, "mellea": 1},
            reference="floor",
            **paced,
        ),
        Scenario(
            name="live_thunks",
            title=(
                f"5. {n_live:,} live thunks in one process (answers delayed 600 s; the host takes "
                f"{OLLAMA_TAKES} at once and answers 503 beyond, as Ollama's defaults do)"
            ),
            target="threads flat; RSS growth <= 4 KB per thunk",
            script=Script(tokens=("late",), first_delay=600.0),
            params={
                "n": n_live,
                "settle": 1.0 if quick else 3.0,
                "cap": 256,
                "per_variant": {"mellea": {"n": n_live_mellea}},
            },
            rounds=1,
            warmup=0,
            reps=1,
            timeout=600.0,
            variants=("raw_capped", "mellea", "mellea_actors"),
            reference="",
            server_max_active=OLLAMA_TAKES,
        ),
        Scenario(
            name="open_streams",
            title=(
                f"5b. {n_live:,} live thunks, every one an open HTTP stream (a host that takes "
                "them all; answers delayed 600 s)"
            ),
            target="reference only: RSS per open stream, as a ratio to the floor's",
            script=Script(tokens=("late",), first_delay=600.0),
            params={"n": n_live, "settle": 2.0 if quick else 6.0, "cap": n_live},
            rounds=1,
            warmup=0,
            reps=1,
            timeout=600.0,
            variants=("floor", "mellea_actors"),
            reference="floor",
            worker="live_thunks",
        ),
        Scenario(
            name="scaling",
            title=(
                "6. CPU per chunk against concurrent streams (20 chunks each at 20 chunks/s, "
                f"{_nproc()} cores)"
            ),
            target="CPU/chunk within 1.3x of the 10-stream figure until saturation",
            script=Script.counting(20, delay=PERIOD),
            params={"tokens": 20},
            variants=("floor", "raw_capped", "mellea_actors"),
            reference="",
            worker="many_streams",
            sizes=sizes,
            small_runs=(1, 1) if quick else (1, 3),
            **paced,
        ),
        Scenario(
            name="parse_deliver",
            title="7. per-chunk cost in-process: parse one chat line; parse + deliver to a reader",
            target="(information)",
            script=short,
            params={
                "lines": 20_000 if quick else 100_000,
                "repeat": 2 if quick else 5,
                "streams": 100,
                "chunks": 100,
                "interval": 0.005,
            },
            warmup=0,
            reps=1,
            variants=("mellea_actors",),
            reference="",
            needs_server=False,
        ),
    ]


def _nproc() -> int:
    return len(os.sched_getaffinity(0))


# -- reducing samples ----------------------------------------------------------------------------
# A "sample" is one measured repetition of one variant, already joined with the server records.


def samples_from(
    sc: Scenario, results: list[dict[str, Any]], records: list[RequestRecord]
) -> list[dict[str, Any]]:
    """Turn one worker's results (+ the server's records of that worker) into samples."""
    if sc.name == "cancel":
        return _cancel_samples(results, records)
    if sc.name in ("many_streams", "scaling"):
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
    late: list[float] = []  # server: send time - scheduled time
    recv: list[float] = []
    sent_all: list[float] = []
    delivered = missing_records = 0
    expected = tokens * len(result["recv"])
    for name, times in result["recv"].items():
        rec = recs.get(name)
        if rec is None:
            missing_records += 1
            continue
        sent = rec.token_times
        sent_all.extend(sent)
        if rec.script is not None:
            due = rec.started_at + rec.script.first_delay
            late.extend(t - (due + i * rec.script.delay) for i, t in enumerate(sent))
        for i, t in enumerate(times):
            if t is not None:
                delivered += 1
                recv.append(t)
                if i < len(sent):
                    delays.append(t - sent[i])
    delays.sort()
    late.sort()
    return {
        "wall": result["wall"],
        "cpu": result["cpu"],
        "streams": len(result["recv"]),
        "delivered": delivered,
        "expected": expected,
        "disorder": result.get("disorder", 0),
        "missing_records": missing_records,
        "p50_ms": percentile(delays, 0.50) * 1000.0,
        "p99_ms": percentile(delays, 0.99) * 1000.0,
        "max_ms": (delays[-1] if delays else float("nan")) * 1000.0,
        # how late the server sent the tokens (its own lag: it must not be the bottleneck)
        "server_late_p99_ms": percentile(late, 0.99) * 1000.0,
        # the spans of the server's sends and of the client's receipts (rates over them)
        "send_span": max(sent_all) - min(sent_all) if sent_all else float("nan"),
        "recv_span": max(recv) - min(recv) if recv else float("nan"),
    }


# -- aggregating -------------------------------------------------------------------------------


def _num(samples: list[dict[str, Any]], key: str) -> list[float]:
    return [s[key] for s in samples if isinstance(s.get(key), (int, float))]


def aggregate(sc: Scenario, samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Median figures of one variant (plus the noise figure ``spread`` of wall and CPU)."""
    if not samples:
        return {}
    agg: dict[str, Any] = {"n": len(samples)}
    if sc.name == "scaling":
        agg["sizes"] = _scaling_sizes(sc, samples)
        agg.update(_saturation(sc, agg["sizes"]))
        return agg
    for key in ("wall", "cpu"):
        values = _num(samples, key)
        if values:
            agg[key] = median(values)
            agg[f"{key}_spread"] = spread(values)
            agg[f"{key}_min"] = min(values)
    if sc.name in ("long_stream", "lazy_thunks"):
        agg["ok"] = all(s.get("ok") for s in samples)
    elif sc.name == "first_text":
        firsts = sorted(s["first_s"] * 1000.0 for s in samples if s.get("first_s") is not None)
        agg["ok"] = all(s.get("ok") for s in samples) and len(firsts) == len(samples)
        agg["first_ms"] = median(firsts)
        agg["first_p90_ms"] = percentile(firsts, 0.9)
    elif sc.name == "cancel":
        agg.update(_cancel_figures(samples))
    elif sc.name == "many_streams":
        agg.update(_stream_figures(samples))
        agg["peak_active"] = min(s.get("peak_active", -1) for s in samples)
        agg["streams"] = samples[0]["streams"]
    elif sc.name in ("live_thunks", "open_streams"):
        s = samples[0]
        keys = ("n", "create_s", "create_cpu", "live", "close_s", "before", "settled")
        agg.update({k: s[k] for k in keys})
        agg["checkpoints"] = s["checkpoints"]
        peak = max([s["settled"]["threads"]] + [c["threads"] for c in s["checkpoints"].values()])
        agg["threads_before"] = s["before"]["threads"]
        agg["threads_peak"] = peak
        agg["rss_mib"] = s["settled"]["vmrss_kib"] / 1024.0
        growth_kib = s["settled"]["vmrss_kib"] - s["before"]["vmrss_kib"]
        agg["rss_growth_mib"] = growth_kib / 1024.0
        agg["kb_per_thunk"] = growth_kib / s["n"]
    elif sc.name == "parse_deliver":
        agg.update({k: v for k, v in samples[0].items() if k not in agg})
    return agg


def _cancel_figures(samples: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in ("cancel", "validator"):
        runs = [s for s in samples if s.get("kind") == kind]
        skipped = [s["skipped"] for s in runs if "skipped" in s]
        if skipped:
            out[kind] = {"skipped": skipped[0]}
            continue
        lat = sorted(_num(runs, "disconnect_ms"))
        ret = sorted(_num(runs, "return_ms"))
        if not runs:
            continue
        out[kind] = {
            "runs": len(runs),
            "no_disconnect": sum(1 for s in runs if s.get("disconnect_ms") is None),
            "median_ms": median(lat),
            "p90_ms": percentile(lat, 0.9),
            "max_ms": lat[-1] if lat else float("nan"),
            "return_median_ms": median(ret),
        }
        if kind == "validator":
            out[kind]["after_fail"] = sum(s.get("after_fail", 0) for s in runs)
            out[kind]["completed"] = sum(1 for s in runs if s.get("completed"))
    return out


def _stream_figures(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Delivery and delay figures of stream samples (medians; worst where said)."""
    return {
        "delivered": min(s["delivered"] for s in samples),
        "expected": samples[0]["expected"],
        "disorder": sum(s["disorder"] for s in samples),
        "all_delivered": all(
            s["delivered"] == s["expected"] and not s["missing_records"] for s in samples
        ),
        "p50_ms": median(_num(samples, "p50_ms")),
        "p99_ms": median(_num(samples, "p99_ms")),
        "p99_ms_worst": max(_num(samples, "p99_ms")),
        "max_ms": max(_num(samples, "max_ms")),
    }


def _scaling_sizes(sc: Scenario, samples: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per number of streams: CPU per chunk, chunks/s achieved and offered, delays, peak."""
    out: dict[int, dict[str, Any]] = {}
    for size in sorted({s["size"] for s in samples}):
        runs = [s for s in samples if s["size"] == size]
        fig = _stream_figures(runs)
        fig.update(
            wall=median(_num(runs, "wall")),
            cpu=median(_num(runs, "cpu")),
            us_per_chunk=median(s["cpu"] / max(s["delivered"], 1) * 1e6 for s in runs),
            rate=median(s["delivered"] / s["wall"] for s in runs),
            offered=size / sc.script.delay,
            cores=median(s["cpu"] / s["wall"] for s in runs),
            # received over sent, each over its own span: < 1 when the client falls behind
            keep_up=median(s["send_span"] / s["recv_span"] for s in runs if s["recv_span"]),
            server_late_p99_ms=median(_num(runs, "server_late_p99_ms")),
            peak_active=min(s.get("peak_active", -1) for s in runs),
            server_us_per_chunk=median(_num(runs, "server_us_per_chunk")),
        )
        fig["server_cores"] = fig["server_us_per_chunk"] * fig["rate"] / 1e6
        out[size] = fig
    return out


def _saturation(sc: Scenario, sizes: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The first size where the client saturates (and why), and how flat CPU/chunk is before.

    Saturated: the worker's CPU over its wall exceeds 0.9 cores, or the client falls behind
    the server (it receives at under 90 % of the rate the server sent at, each over its own
    span, or a p99 delay over one token period), or fewer streams than asked were in flight at
    once (a cap made the rest wait, or the client started them too slowly to overlap).
    """
    period_ms = sc.script.delay * 1000.0
    first = min(sizes)
    base = sizes[first]["us_per_chunk"]
    saturated_at: int | None = None
    reasons: list[str] = []
    for size, fig in sizes.items():
        fig["ratio"] = fig["us_per_chunk"] / base if base else float("nan")
        if saturated_at is not None:
            continue
        why = []
        if 0 <= fig["peak_active"] < size:
            why.append(f"not all in flight: peak {fig['peak_active']:,}")
        if fig["cores"] > 0.9:
            why.append(f"CPU {fig['cores']:.2f} cores")
        if fig["keep_up"] < 0.9:
            why.append(f"behind: received at {fig['keep_up']:.0%} of the rate sent")
        if fig["p99_ms"] > period_ms:
            why.append(f"behind: p99 delay {fig['p99_ms']:.0f} ms > one period")
        if why:
            saturated_at, reasons = size, why
    before = [s for s in sizes if saturated_at is None or s < saturated_at]
    return {
        "saturated_at": saturated_at,
        "saturation": "; ".join(reasons),
        "flat_sizes": before,
        "flat_max_ratio": max((sizes[s]["ratio"] for s in before), default=float("nan")),
    }


# -- verdicts ----------------------------------------------------------------------------------
Checks = dict[str, bool]
"""A variant's verdict, criterion by criterion (all must hold to PASS)."""


def best_raw(aggs: dict[str, dict[str, Any]], key: str) -> float | None:
    values = [aggs[v][key] for v in RAW if v in aggs and key in aggs[v]]
    return min(values) if values else None


def reference_value(reference: str, aggs: dict[str, dict[str, Any]], key: str) -> float | None:
    """The figure ``key`` of a scenario's reference: ``"floor"``, or ``"raw"`` (the best raw
    variant); None without one."""
    if reference == "floor":
        value = aggs.get("floor", {}).get(key)
        return float(value) if isinstance(value, (int, float)) else None
    if reference == "raw":
        return best_raw(aggs, key)
    return None


def ratio(
    reference: str, a: dict[str, Any], aggs: dict[str, dict[str, Any]], key: str
) -> float | None:
    """``a[key]`` over the reference's figure (None if either is missing)."""
    ref = reference_value(reference, aggs, key)
    if ref is None or not isinstance(a.get(key), (int, float)) or not ref:
        return None
    return float(a[key]) / ref


def judge(sc: Scenario, variant: str, aggs: dict[str, dict[str, Any]]) -> tuple[str, Checks]:
    """The detail text of a variant's figures, and its checks (none for a reference)."""
    a = aggs.get(variant, {})
    if not a:
        return "", {}
    text, checks = _VERDICTS[sc.name](sc, a, aggs)
    return text, {} if variant in REFERENCES else checks


def verdict_word(checks: Checks) -> str:
    if not checks:
        return "-"
    return "PASS" if all(checks.values()) else "FAIL"


def _v_wall(sc: Scenario, a: dict[str, Any], aggs: dict[str, dict[str, Any]]) -> tuple[str, Checks]:
    """Scenarios 1 and 2: wall <= 1.1 x the best raw variant, and the right text."""
    r = ratio(sc.reference, a, aggs, "wall")
    text = "" if a.get("ok") else "WRONG TEXT"
    return text, {} if r is None else {"wall": r <= 1.10, "text": bool(a.get("ok"))}


def _v_first(
    sc: Scenario, a: dict[str, Any], aggs: dict[str, dict[str, Any]]
) -> tuple[str, Checks]:
    ref = reference_value(sc.reference, aggs, "first_ms")
    text = f"first text median {a['first_ms']:.2f} ms (p90 {a['first_p90_ms']:.2f})"
    if not a.get("ok"):
        text += "; WRONG TEXT or no text"
    if ref is None:
        return text, {}
    text += f"; {a['first_ms'] - ref:+.2f} ms vs raw"
    return text, {"first text": a["first_ms"] <= ref + 2.0, "text": bool(a.get("ok"))}


def _v_cancel(
    sc: Scenario, a: dict[str, Any], aggs: dict[str, dict[str, Any]]
) -> tuple[str, Checks]:
    parts: list[str] = []
    checks: Checks = {}
    c = a.get("cancel", {})
    if "median_ms" in c:
        parts.append(
            f"cancel->disc med {c['median_ms']:.2f} ms (p90 {c['p90_ms']:.2f}, "
            f"max {c['max_ms']:.2f}; cancel returns {c['return_median_ms']:.2f})"
        )
        if c["no_disconnect"]:
            parts.append(f"{c['no_disconnect']} runs without disconnect")
    v = a.get("validator", {})
    if "skipped" in v:
        parts.append(f"validator: skipped ({v['skipped']})")
    elif "median_ms" in v:
        parts.append(
            f'"fail"->disc med {v["median_ms"]:.2f} ms (p90 {v["p90_ms"]:.2f}); '
            f"chunks after fail: {v['after_fail']}"
        )
        checks['"fail" -> disconnect'] = v["median_ms"] <= 0.6 and not v["no_disconnect"]
        checks["after fail"] = v["after_fail"] == 0
    return "; ".join(parts), checks


def _v_streams(
    sc: Scenario, a: dict[str, Any], aggs: dict[str, dict[str, Any]]
) -> tuple[str, Checks]:
    rw, rc, rp = (ratio(sc.reference, a, aggs, k) for k in ("wall", "cpu", "p99_ms"))
    n = a["streams"]
    text = (
        f"peak in flight {a['peak_active']:,}/{n:,}; delivered {a['delivered']:,}/"
        f"{a['expected']:,}, {a['disorder']} out of order; delay p50 {a['p50_ms']:.1f} ms, "
        f"p99 {a['p99_ms']:.1f} ms (worst run {a['p99_ms_worst']:.1f}), max {a['max_ms']:.0f} ms"
    )
    if rw is None or rc is None or rp is None:
        return text, {}
    return text, {
        "in flight": a["peak_active"] == n,
        "in order": a["all_delivered"] and a["disorder"] == 0,
        "CPU": rc <= 1.5,
        "wall": rw <= 1.2,
        "p99": rp <= 1.5 and a["p99_ms"] < 50.0,
    }


def _v_live(sc: Scenario, a: dict[str, Any], aggs: dict[str, dict[str, Any]]) -> tuple[str, Checks]:
    cps = ", ".join(f"{k}: {v['threads']}" for k, v in a["checkpoints"].items())
    text = (
        f"n={a['n']:,}: threads {a['threads_before']} before -> {cps} -> "
        f"{a['settled']['threads']} settled; "
        f"RSS {a['rss_mib']:.0f} MiB (+{a['rss_growth_mib']:.0f}, {a['kb_per_thunk']:.1f} KB "
        f"per thunk); create {a['create_s']:.2f} s; live {a['live']:,}; close {a['close_s']:.2f} s"
    )
    # "flat": a bounded pool (asyncio's getaddrinfo executor...) is allowed
    return text, {
        "threads": a["threads_peak"] <= a["threads_before"] + 8,
        "memory": a["kb_per_thunk"] <= 4.0,
    }


def _v_open(sc: Scenario, a: dict[str, Any], aggs: dict[str, dict[str, Any]]) -> tuple[str, Checks]:
    text, _ = _v_live(sc, a, aggs)
    floor = aggs.get("floor", {}).get("kb_per_thunk")
    if floor:
        text += f"; {a['kb_per_thunk'] / floor:.2f}x the floor's RSS per open stream"
    return text, {"threads": a["threads_peak"] <= a["threads_before"] + 8}


def _v_scaling(
    sc: Scenario, a: dict[str, Any], aggs: dict[str, dict[str, Any]]
) -> tuple[str, Checks]:
    sizes: dict[int, dict[str, Any]] = a["sizes"]
    per = ", ".join(
        f"{n:,}: {f['us_per_chunk']:.1f}" + ("" if n == min(sizes) else f" ({f['ratio']:.2f}x)")
        for n, f in sizes.items()
    )
    sat = a["saturated_at"]
    if sat is None:
        top = max(sizes)
        where = f"no saturation up to {top:,} streams ({sizes[top]['offered']:,.0f} chunks/s)"
    else:
        where = (
            f"saturates at {sat:,} streams ({sizes[sat]['offered']:,.0f} chunks/s offered; "
            f"{a['saturation']})"
        )
    flat = a["flat_sizes"]
    text = f"us CPU/chunk at {per}; {where}"
    if len(flat) < 2:
        return text + "; too few sizes before saturation to judge flatness", {}
    text += f"; max {a['flat_max_ratio']:.2f}x up to {max(flat):,} streams"
    return text, {"flat": a["flat_max_ratio"] <= 1.3}


def _v_parse(
    sc: Scenario, a: dict[str, Any], aggs: dict[str, dict[str, Any]]
) -> tuple[str, Checks]:
    orjson = f", orjson.loads {a['orjson_loads_us']:.2f}" if "orjson_loads_us" in a else ""
    text = (
        f"us/chunk: json.loads {a['json_loads_us']:.2f}{orjson}, ollama ChatResponse "
        f"{a['ollama_parse_us']:.2f}, transport ({a['transport_api']}) "
        f"{a['transport_parse_us']:.2f}; through the runtime {a['runtime_us']:.1f} "
        f"(stub stream {a['stub_us']:.1f} + delivery {a['delivery_us']:.1f}; "
        f"{a['reads_per_chunk']:.2f} reads/chunk at {a['rate']:,.0f} chunks/s)"
    )
    if not a.get("ok"):
        text += "; WRONG TEXT"
    return text, {}


_VERDICTS: dict[
    str,
    Callable[[Scenario, dict[str, Any], dict[str, dict[str, Any]]], tuple[str, Checks]],
] = {
    "long_stream": _v_wall,
    "first_text": _v_first,
    "lazy_thunks": _v_wall,
    "cancel": _v_cancel,
    "many_streams": _v_streams,
    "live_thunks": _v_live,
    "open_streams": _v_open,
    "scaling": _v_scaling,
    "parse_deliver": _v_parse,
}
