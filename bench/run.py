"""mellea_actors benchmark suite (SPEC §8), side by side: raw ollama client, ours, Mellea 0.7.0.

Usage (from the project root)::

    .venv/bin/python bench/run.py                 # full run (~10 min)
    .venv/bin/python bench/run.py --quick         # smaller sizes (< 1 min)
    .venv/bin/python bench/run.py --only cancel --json out.json

Every (scenario, variant) runs in its own worker subprocess (``bench/worker.py``) so that CPU
time and thread counts are those of that variant alone; the scripted Ollama-protocol server runs
in another subprocess (no shared GIL). Mellea 0.7.0 runs in its own venv (``--mellea-python``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from common import proc_cpu_seconds, system_busy_seconds  # noqa: E402
from scenarios import RAW, VARIANTS, Scenario, aggregate, build, samples_from, verdict  # noqa: E402

from mellea_actors.testing import ScriptedOllamaProcess  # noqa: E402

DEFAULT_MELLEA_PYTHON = "/tmp/mellea-venv/bin/python"


def machine_info() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model,
        "mem_gib": round(mem_gib, 1),
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg(),
    }


def wait_for_quiet(max_wait: float, threshold: float = 0.3) -> float:
    """Wait (at most ``max_wait`` s) until the machine's other load is under ``threshold`` cores
    for 0.5 s (the machine may be shared); returns the seconds waited."""
    t0 = time.perf_counter()
    while True:
        busy0 = system_busy_seconds()
        time.sleep(0.5)
        load = (system_busy_seconds() - busy0) / 0.5
        waited = time.perf_counter() - t0
        if load < threshold or waited >= max_wait:
            return waited


def python_for(variant: str, args: argparse.Namespace) -> str | None:
    if variant == "mellea":
        return args.mellea_python if Path(args.mellea_python).exists() else None
    return sys.executable


def run_worker(
    sc: Scenario, variant: str, python: str, server: ScriptedOllamaProcess, max_wait: float
) -> dict[str, Any]:
    """One worker process; returns its samples, the server CPU it caused, or an error."""
    per_variant = sc.params.get("per_variant", {}).get(variant, {})
    params = {
        **{k: v for k, v in sc.params.items() if k != "per_variant"},
        **per_variant,
        "scenario": sc.name,
        "variant": variant,
        "base_url": server.base_url,
        "reps": sc.reps,
        "warmup": sc.warmup,
    }
    server.reset()
    waited = wait_for_quiet(max_wait) if max_wait > 0 else 0.0
    if sc.stagger:
        n = params["n"]
        period = sc.script.delay
        server.enqueue(
            *(
                dataclasses.replace(sc.script, first_delay=period * (k % n) / n)
                for k in range(n * (sc.warmup + sc.reps))
            )
        )
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        p_path, r_path, log_path = (Path(tmp) / n for n in ("p.json", "r.json", "log.txt"))
        p_path.write_text(json.dumps(params))
        srv0 = proc_cpu_seconds(server.pid)
        busy0, own0 = system_busy_seconds(), time.process_time()
        kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        with open(log_path, "w") as log:
            try:
                proc = subprocess.run(
                    [python, str(BENCH / "worker.py"), str(p_path), str(r_path)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=sc.timeout,
                    cwd=str(BENCH),
                    env={**os.environ, "PYTHONPATH": str(BENCH)},
                )
                rc: int | str = proc.returncode
            except subprocess.TimeoutExpired:
                rc = f"timeout after {sc.timeout:.0f} s"
        elapsed = time.perf_counter() - t0
        server_cpu = proc_cpu_seconds(server.pid) - srv0
        kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        worker_cpu = (kids1.ru_utime - kids0.ru_utime) + (kids1.ru_stime - kids0.ru_stime)
        ours = worker_cpu + server_cpu + time.process_time() - own0
        # CPU used meanwhile by everything else on the machine, in cores (other people's work)
        foreign = max(0.0, system_busy_seconds() - busy0 - ours) / elapsed
        out: dict[str, Any] = {
            "elapsed": elapsed,
            "server_cpu": server_cpu,
            "worker_cpu": worker_cpu,
            "foreign_cores": foreign,
            "waited_for_quiet": waited,
        }
        if r_path.exists():
            data = json.loads(r_path.read_text())
        else:
            data = {"error": f"worker exited with {rc} and no result"}
        if "error" in data:
            out["error"] = (
                data["error"] + "\n--- worker output ---\n" + log_path.read_text()[-3000:]
            )
            return out
    records = server.requests if sc.needs_records else []
    out["samples"] = samples_from(sc, data["results"], records)
    return out


def run_scenario(sc: Scenario, args: argparse.Namespace) -> dict[str, Any]:
    print(f"\n== {sc.title}", flush=True)
    variants = [v for v in sc.variants if v not in args.skip]
    samples: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    errors: dict[str, str] = {}
    skipped: dict[str, str] = {}
    server_cpu: dict[str, list[float]] = {v: [] for v in variants}
    foreign: dict[str, list[float]] = {v: [] for v in variants}
    with ScriptedOllamaProcess(record_token_times=sc.record_token_times) as server:
        server.set_script(sc.script)
        for rnd in range(sc.rounds):
            for variant in variants:
                if rnd >= sc.max_rounds.get(variant, sc.rounds) or variant in errors | skipped:
                    continue
                python = python_for(variant, args)
                if python is None:
                    skipped[variant] = f"no Mellea 0.7.0 venv at {args.mellea_python}"
                    continue
                res = run_worker(sc, variant, python, server, args.quiet_wait)
                if "error" in res:
                    errors[variant] = res["error"]
                    print(f"   {variant:14s} round {rnd + 1}: ERROR (see the report)", flush=True)
                    continue
                samples[variant].extend(res["samples"])
                server_cpu[variant].append(res["server_cpu"])
                foreign[variant].append(res["foreign_cores"])
                print(
                    f"   {variant:14s} round {rnd + 1}/{sc.rounds}: {res['elapsed']:.1f} s, "
                    f"worker CPU {res['worker_cpu']:.1f} s, server CPU {res['server_cpu']:.1f} s, "
                    f"other load {res['foreign_cores']:.2f} cores"
                    + (
                        f" (waited {res['waited_for_quiet']:.0f} s for quiet)"
                        if res["waited_for_quiet"] >= 1
                        else ""
                    ),
                    flush=True,
                )
    aggs = {v: aggregate(sc, s) for v, s in samples.items() if s}
    for v, cpu in server_cpu.items():
        if v in aggs and cpu:
            aggs[v]["server_cpu_per_worker"] = cpu
            aggs[v]["foreign_cores_per_worker"] = foreign[v]
    return {
        "name": sc.name,
        "title": sc.title,
        "target": sc.target,
        "aggregates": aggs,
        "samples": samples,
        "errors": errors,
        "skipped": skipped,
        "verdicts": {v: verdict(sc, v, aggs) for v in aggs},
    }


# -- the table ---------------------------------------------------------------------------------
def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _fmt_ratio(value: float | None, best: float | None) -> str:
    if value is None or not best:
        return "-"
    return f"{value / best:.2f}x"


def print_table(report: dict[str, Any]) -> None:
    head = ("variant", "wall (±noise)", "CPU (±noise)", "wall/raw", "CPU/raw", "load", "verdict")
    widths = (14, 20, 20, 9, 8, 5, 7)
    print()
    for sc in report["scenarios"]:
        aggs = sc["aggregates"]
        best_wall = min((aggs[v]["wall"] for v in RAW if "wall" in aggs.get(v, {})), default=None)
        best_cpu = min((aggs[v]["cpu"] for v in RAW if "cpu" in aggs.get(v, {})), default=None)
        print(f"{sc['title']}   [target: {sc['target']}]")
        print("  " + " ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " detail")
        for variant in VARIANTS:
            if variant in sc.get("skipped", {}):
                print(f"  {variant:14s} skipped: {sc['skipped'][variant]}")
                continue
            if variant in sc["errors"]:
                err = sc["errors"][variant].strip().splitlines()
                print(f"  {variant:14s} ERROR: {err[-1] if err else '?'}")
                continue
            a = aggs.get(variant)
            if not a:
                continue
            wall = f"{_fmt_time(a['wall'])} ±{a['wall_spread'] * 100:.0f}%" if "wall" in a else "-"
            cpu = f"{_fmt_time(a['cpu'])} ±{a['cpu_spread'] * 100:.0f}%" if "cpu" in a else "-"
            text, ok = sc["verdicts"].get(variant, ("", "-"))
            load = a.get("foreign_cores_per_worker") or []
            cells = (
                variant,
                wall,
                cpu,
                _fmt_ratio(a.get("wall"), best_wall),
                _fmt_ratio(a.get("cpu"), best_cpu),
                f"{max(load):.1f}" if load else "-",
                ok,
            )
            line = "  " + " ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))
            print(f"{line} {text}".rstrip())
        print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (< 1 min)")
    parser.add_argument(
        "--only", action="append", default=[], metavar="NAME", help="run only this scenario"
    )
    parser.add_argument(
        "--skip", action="append", default=[], metavar="VARIANT", help="skip a variant"
    )
    parser.add_argument("--json", metavar="PATH", help="write every sample and figure here")
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 if a mellea_actors target FAILs"
    )
    parser.add_argument(
        "--rounds", type=int, metavar="N", help="override every scenario's number of rounds"
    )
    parser.add_argument("--mellea-python", default=DEFAULT_MELLEA_PYTHON)
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=None,
        metavar="S",
        help="before each worker, wait up to S s for the machine's other load to drop under "
        "0.3 cores (default 5 s, 2 s with --quick; 0 disables)",
    )
    args = parser.parse_args(argv)
    if args.quiet_wait is None:
        args.quiet_wait = 2.0 if args.quick else 5.0

    scenarios = build(args.quick)
    names = [s.name for s in scenarios]
    unknown = [n for n in args.only if n not in names]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {names}")
    selected = [s for s in scenarios if not args.only or s.name in args.only]
    if args.rounds:
        for sc in selected:
            sc.rounds = args.rounds

    info = machine_info()
    print(
        f"mellea_actors bench ({'quick' if args.quick else 'full'}) {info['date']}  "
        f"{info['nproc']} cores ({info['cpu']}), {info['mem_gib']} GiB, Python {info['python']}, "
        f"load average at start {' '.join(f'{x:.2f}' for x in info['loadavg_start'])}"
    )
    t0 = time.perf_counter()
    report: dict[str, Any] = {"machine": info, "quick": args.quick, "scenarios": []}
    for sc in selected:
        report["scenarios"].append(run_scenario(sc, args))
    info["loadavg_end"] = os.getloadavg()
    info["elapsed_s"] = round(time.perf_counter() - t0, 1)
    print_table(report)
    print(
        f"total {info['elapsed_s']} s; load average at end "
        f"{' '.join(f'{x:.2f}' for x in info['loadavg_end'])}; "
        "noise = (max - min) / median over the repetitions; ratios are to the best raw variant; "
        "load = the most CPU (cores) other processes used during that variant's runs"
    )
    for sc in report["scenarios"]:
        for variant, err in sc["errors"].items():
            print(f"\n--- {sc['name']} / {variant} failed:\n{err}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
        print(f"\nwrote {args.json}")
    errors = any(sc["errors"] for sc in report["scenarios"])
    failed = any(
        ok == "FAIL"
        for sc in report["scenarios"]
        for v, (_, ok) in sc["verdicts"].items()
        if v == "mellea_actors"
    )
    return 1 if errors or (failed and args.strict) else 0


if __name__ == "__main__":
    sys.exit(main())
