"""mellea_actors benchmark suite (SPEC §8), side by side: the floor, the raw ollama client,
Mellea 0.7.0 and ours.

Usage (from the project root)::

    .venv/bin/python bench/run.py                 # full run (~15 min on 2 cores)
    .venv/bin/python bench/run.py --quick         # smaller sizes (~1.5 min)
    .venv/bin/python bench/run.py --only cancel --json out.json
    .venv/bin/python bench/run.py --readme bench/README.md --plot bench/scaling.png   # make bench

Every (scenario, variant) runs in its own worker subprocess (``bench/worker.py``) so that CPU
time and thread counts are those of that variant alone; the scripted Ollama-protocol server runs
in another subprocess (no shared GIL). Mellea 0.7.0 runs in its own venv (``--mellea-python``).
"""

from __future__ import annotations

import argparse
import contextlib
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

import report  # noqa: E402
from common import proc_cpu_seconds, system_busy_seconds  # noqa: E402
from scenarios import (  # noqa: E402
    VARIANTS,
    Scenario,
    aggregate,
    build,
    judge,
    samples_from,
    verdict_word,
)

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
    for a moment (0.5 s; 0.25 s when ``max_wait`` is short); returns the seconds waited."""
    t0 = time.perf_counter()
    window = 0.25 if max_wait <= 1.0 else 0.5
    while True:
        busy0 = system_busy_seconds()
        time.sleep(window)
        load = (system_busy_seconds() - busy0) / window
        waited = time.perf_counter() - t0
        if load < threshold or waited >= max_wait:
            return waited


def python_for(variant: str, args: argparse.Namespace) -> str | None:
    if variant == "mellea":
        return args.mellea_python if Path(args.mellea_python).exists() else None
    return sys.executable


def run_worker(
    sc: Scenario,
    variant: str,
    python: str,
    server: ScriptedOllamaProcess | None,
    max_wait: float,
    size: int | None = None,
) -> dict[str, Any]:
    """One worker process; returns its samples, the server CPU it caused, or an error."""
    per_variant = sc.params.get("per_variant", {}).get(variant, {})
    warmup, reps = sc.runs_for(size)
    params = {
        **{k: v for k, v in sc.params.items() if k != "per_variant"},
        **per_variant,
        **({} if size is None else {"n": size, "cap": size}),
        "scenario": sc.worker or sc.name,
        "variant": variant,
        "base_url": "" if server is None else server.base_url,
        "reps": reps,
        "warmup": warmup,
    }
    if server is not None:
        server.reset()  # records, queue, and the peak count of answers in progress
    waited = wait_for_quiet(max_wait) if max_wait > 0 else 0.0
    if sc.stagger and server is not None:
        n = params["n"]
        period = sc.script.delay
        server.enqueue(
            *(
                dataclasses.replace(sc.script, first_delay=period * (k % n) / n)
                for k in range(n * (warmup + reps))
            )
        )
    server_pid = None if server is None else server.pid
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        p_path, r_path, log_path = (Path(tmp) / n for n in ("p.json", "r.json", "log.txt"))
        p_path.write_text(json.dumps(params))
        srv0 = 0.0 if server_pid is None else proc_cpu_seconds(server_pid)
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
        server_cpu = 0.0 if server_pid is None else proc_cpu_seconds(server_pid) - srv0
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
    records = server.requests if sc.needs_records and server is not None else []
    samples = samples_from(sc, data["results"], records)
    worker_level: dict[str, Any] = {}
    if server is not None:
        # most generation answers in progress at once during this worker (server-side truth)
        worker_level["peak_active"] = out["peak_active"] = server.peak_active()
        sent = sum(r.tokens_sent for r in records)
        if sent:
            worker_level["server_us_per_chunk"] = server_cpu / sent * 1e6
    if size is not None:
        worker_level["size"] = size
    out["samples"] = [{**s, **worker_level} for s in samples]
    return out


def run_scenario(sc: Scenario, args: argparse.Namespace) -> dict[str, Any]:
    print(f"\n== {sc.title}", flush=True)
    variants = [v for v in sc.variants if v not in args.skip]
    samples: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    errors: dict[str, str] = {}
    skipped: dict[str, str] = {}
    server_cpu: dict[str, list[float]] = {v: [] for v in variants}
    foreign: dict[str, list[float]] = {v: [] for v in variants}
    sizes: list[int | None] = list(sc.sizes) or [None]
    server_cm: contextlib.AbstractContextManager[ScriptedOllamaProcess | None] = (
        ScriptedOllamaProcess(record_token_times=sc.record_token_times)
        if sc.needs_server
        else contextlib.nullcontext()
    )
    with server_cm as server:
        if server is not None:
            server.set_script(sc.script)
            server.set_max_active(sc.server_max_active)
        for rnd in range(sc.rounds):
            for size in sizes:
                for variant in variants:
                    if rnd >= sc.max_rounds.get(variant, sc.rounds) or variant in errors | skipped:
                        continue
                    python = python_for(variant, args)
                    if python is None:
                        skipped[variant] = f"no Mellea 0.7.0 venv at {args.mellea_python}"
                        continue
                    res = run_worker(sc, variant, python, server, args.quiet_wait, size)
                    where = f"{variant:14s}" + ("" if size is None else f" {size:>6,} streams")
                    if "error" in res:
                        errors[variant] = res["error"]
                        print(f"   {where} round {rnd + 1}: ERROR (see the report)", flush=True)
                        continue
                    samples[variant].extend(res["samples"])
                    server_cpu[variant].append(res["server_cpu"])
                    foreign[variant].append(res["foreign_cores"])
                    print(f"   {where} round {rnd + 1}/{sc.rounds}: {_progress(res)}", flush=True)
    aggs = {v: aggregate(sc, s) for v, s in samples.items() if s}
    for v, cpu in server_cpu.items():
        if v in aggs and cpu:
            aggs[v]["server_cpu_per_worker"] = cpu
            aggs[v]["foreign_cores_per_worker"] = foreign[v]
    return {
        "name": sc.name,
        "title": sc.title,
        "target": sc.target,
        "reference": sc.reference,
        "samples": samples,
        "errors": errors,
        "skipped": skipped,
        **_judged(sc, aggs),
    }


def _progress(res: dict[str, Any]) -> str:
    text = (
        f"{res['elapsed']:.1f} s, worker CPU {res['worker_cpu']:.1f} s, "
        f"server CPU {res['server_cpu']:.1f} s"
    )
    if "peak_active" in res:
        text += f", peak in flight {res['peak_active']:,}"
    text += f", other load {res['foreign_cores']:.2f} cores"
    if res["waited_for_quiet"] >= 1:
        text += f" (waited {res['waited_for_quiet']:.0f} s for quiet)"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (~1.5 min)")
    parser.add_argument(
        "--only", action="append", default=[], metavar="NAME", help="run only this scenario"
    )
    parser.add_argument(
        "--skip", action="append", default=[], metavar="VARIANT", help="skip a variant"
    )
    parser.add_argument("--json", metavar="PATH", help="write every sample and figure here")
    parser.add_argument(
        "--readme",
        metavar="PATH",
        help="write the summary and scaling tables into this markdown file, between its "
        "bench:results markers (make bench: bench/README.md)",
    )
    parser.add_argument(
        "--plot",
        metavar="PATH",
        help="write the scaling plot (PNG, needs matplotlib) here (make bench: bench/scaling.png)",
    )
    parser.add_argument(
        "--from-json",
        metavar="PATH",
        help="run nothing: print the tables of a report saved with --json (and write --readme, "
        "--plot from it)",
    )
    parser.add_argument(
        "--sizes",
        metavar="N,N,...",
        help="the scaling scenario's numbers of concurrent streams (default 10,100,1000,3000; "
        "10,100,1000 with --quick)",
    )
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
        "0.3 cores (default 5 s, 1 s with --quick; 0 disables)",
    )
    args = parser.parse_args(argv)
    if args.quiet_wait is None:
        args.quiet_wait = 1.0 if args.quick else 5.0

    scenarios = build(args.quick)
    names = [s.name for s in scenarios]
    unknown = [n for n in args.only if n not in names]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {names}")
    unknown = [v for v in args.skip if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    selected = [s for s in scenarios if not args.only or s.name in args.only]
    for sc in selected:
        if args.rounds:
            sc.rounds = args.rounds
        if args.sizes and sc.sizes:
            try:
                sc.sizes = tuple(int(x) for x in args.sizes.split(","))
            except ValueError:
                parser.error(f"--sizes wants numbers separated by commas, not {args.sizes!r}")

    if args.from_json:
        return print_and_write(load_report(Path(args.from_json)), args)

    info = machine_info()
    print(
        f"mellea_actors bench ({'quick' if args.quick else 'full'}) {info['date']}  "
        f"{info['nproc']} cores ({info['cpu']}), {info['mem_gib']} GiB, Python {info['python']}, "
        f"load average at start {' '.join(f'{x:.2f}' for x in info['loadavg_start'])}"
    )
    t0 = time.perf_counter()
    rep: dict[str, Any] = {"machine": info, "quick": args.quick, "scenarios": []}
    for sc in selected:
        rep["scenarios"].append(run_scenario(sc, args))
    info["loadavg_end"] = os.getloadavg()
    info["elapsed_s"] = round(time.perf_counter() - t0, 1)
    if args.json:
        Path(args.json).write_text(json.dumps(rep, indent=1, default=str))
    return print_and_write(rep, args)


def load_report(path: Path) -> dict[str, Any]:
    """A report saved with ``--json``, its figures and verdicts computed again from its samples
    (so that a change to how samples are reduced shows without running anything again)."""
    rep: dict[str, Any] = json.loads(path.read_text())
    scenarios = {sc.name: sc for sc in build(rep["quick"])}
    for entry in rep["scenarios"]:
        sc = scenarios[entry["name"]]
        aggs = {v: aggregate(sc, s) for v, s in entry["samples"].items() if s}
        for v, a in aggs.items():
            for key in ("server_cpu_per_worker", "foreign_cores_per_worker"):
                if key in entry["aggregates"].get(v, {}):
                    a[key] = entry["aggregates"][v][key]
        entry.update(_judged(sc, aggs))
    return rep


def _judged(sc: Scenario, aggs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The aggregates of a scenario with every variant's checks and verdict."""
    judged = {v: judge(sc, v, aggs) for v in aggs}
    return {
        "aggregates": aggs,
        "checks": {v: checks for v, (_, checks) in judged.items()},
        "verdicts": {v: (text, verdict_word(checks)) for v, (text, checks) in judged.items()},
    }


def print_and_write(rep: dict[str, Any], args: argparse.Namespace) -> int:
    """Print the tables; write the README section, the plot (and say where the JSON went)."""
    info = rep["machine"]
    print()
    print(report.detail_table(rep))
    print(
        f"total {info['elapsed_s']} s; load average at end "
        f"{' '.join(f'{x:.2f}' for x in info['loadavg_end'])}; "
        "noise = (max - min) / median over the repetitions; ratios are to the scenario's "
        "reference (the floor for many_streams, the best raw variant elsewhere); "
        "load = the most CPU (cores) other processes used during that variant's runs"
    )
    print("\nSide by side (verdict: mellea_actors):\n")
    print(report.summary_table(rep, markdown=False))
    scaling = report.scaling_table(rep, markdown=False)
    if scaling is not None:
        print("\nScaling:\n")
        print(scaling)
    warning = report.load_warning(rep)
    if warning is not None:
        print(f"\n{warning}")
    for sc in rep["scenarios"]:
        for variant, err in sc["errors"].items():
            print(f"\n--- {sc['name']} / {variant} failed:\n{err}")
    plot = Path(args.plot) if args.plot else None
    if plot is not None and report.write_plot(rep, plot):
        print(f"\nwrote {plot}")
    if args.readme:
        report.write_readme(rep, Path(args.readme), plot)
        print(f"wrote the tables into {args.readme}")
    if args.json and not args.from_json:
        print(f"\nwrote {args.json}")
    errors = any(sc["errors"] for sc in rep["scenarios"])
    failed = any(
        ok == "FAIL"
        for sc in rep["scenarios"]
        for v, (_, ok) in sc["verdicts"].items()
        if v == "mellea_actors"
    )
    return 1 if errors or (failed and args.strict) else 0


if __name__ == "__main__":
    sys.exit(main())
