"""Many paced streams through the Ray engine (2 Ray supervisors) vs in-process, side by side.

    .venv/bin/python bench/ray_streams.py [--streams 1000] [--tokens 40] [--delay 0.05]
        [--rounds 3] [--windows 10,25,50] [--verdicts 10] [--json PATH] [--readme PATH]

The scripted Ollama-protocol server runs in its own process and records when it sent each
token; every engine reads the same streams (``t0 ``, ``t1 ``… at ``1/delay`` tokens/s) through
a session's ``astream()``. A round runs the in-process engine, then the Ray engine once per
channel window of ``--windows`` (ms; the order is reversed every other round, to spread the
machine's noise); the script prints the **median over the rounds** of each figure, side by
side, and the median of the per-round ratios Ray / in-process of the caller's CPU per chunk:

* chunks delivered, expected, out of order (every chunk must arrive, in order);
* the delay from the server's send to the reader (p50, p99);
* the caller's CPU (``process_time``: every thread of the process, Ray's own C++ threads
  included) per chunk, and how it splits between its threads (the reading task's loop, the
  session's actor loop, Ray's threads);
* the CPU of every other process involved, read from ``/proc`` (the Ray generation supervisors,
  the raylet, the GCS, Ray's other daemons), and the total per chunk (the scripted server is
  listed apart: it is the Ollama side, the same in both engines);
* the batching: Ray items received, deltas per item (the batch size), stream entries per item
  and deltas per entry (a window joins a stream's deltas into one entry);
* then, per engine, the time from a "fail" verdict to the server seeing the disconnect
  (``stream_with_chunking`` with a requirement that fails chunk 3; ``--verdicts`` runs); for
  Ray also with the workers' control links off (the cancel through a Ray actor call only).

``--readme PATH`` rewrites only the part of that markdown file between ``<!-- ray:begin -->``
and ``<!-- ray:end -->`` (the markers are appended at the end if missing).
Needs Ray (``pip install 'mellea_actors[ray]'``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import logging
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    Arrivals,
    find_tag,
    percentile,
    proc_cpu_seconds,
    raise_open_files,
    tag,
)

from mellea_actors import MelleaSession, start_session
from mellea_actors.backends import ModelOption
from mellea_actors.core.backend import Backend
from mellea_actors.core.base import Context
from mellea_actors.core.requirement import PartialValidationResult, Requirement
from mellea_actors.runtime import ray_transport
from mellea_actors.stdlib.components import Instruction
from mellea_actors.stdlib.streaming import stream_with_chunking
from mellea_actors.testing import Script, ScriptedOllamaProcess

BEGIN, END = "<!-- ray:begin -->", "<!-- ray:end -->"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- processes and threads -----------------------------------------------------------------------
def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (Linux ``/proc``)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _role(pid: int) -> str:
    """What a process under this one is: a Ray generation supervisor, the raylet, the GCS,
    other."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "gone"
    if "RayGenerationSupervisor" in cmd:
        return "ray_workers"
    if "raylet" in cmd.split(" ", 1)[0]:
        return "raylet"
    if "gcs_server" in cmd.split(" ", 1)[0]:
        return "gcs"
    return "ray_other"


def _cpu_by_role(pids: list[int]) -> dict[str, float]:
    out: dict[str, float] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            role = _role(pid)
            out[role] = out.get(role, 0.0) + proc_cpu_seconds(pid)
    return out


def _threads() -> dict[int, float]:
    """CPU seconds so far of each thread of this process, by native thread id."""
    out: dict[int, float] = {}
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError), open(f"/proc/self/task/{tid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
            out[int(tid)] = (int(fields[11]) + int(fields[12])) / _CLK_TCK
    return out


def _thread_split(before: dict[int, float], after: dict[int, float]) -> dict[str, float]:
    """The caller's CPU by thread: the reading loop (main), the session loop, Ray's threads."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out = {"main": 0.0, "session_loop": 0.0, "ray_threads": 0.0}
    for tid, cpu in after.items():
        spent = cpu - before.get(tid, 0.0)
        name = names.get(tid, "")
        if name == "MainThread":
            out["main"] += spent
        elif name.startswith("mellea-actors-"):
            out["session_loop"] += spent
        else:  # Ray's core worker (C++) threads and its Python helper threads
            out["ray_threads"] += spent
    return out


# -- one run ---------------------------------------------------------------------------------
class _Channels:
    """Every Ray channel opened during a run (for its item counters; nothing per delta)."""

    def __init__(self) -> None:
        self.opened: list[Any] = []
        self._init = ray_transport._Channel.__init__

    def __enter__(self) -> _Channels:
        init, opened = self._init, self.opened

        def recording(channel: Any, *args: Any, **kwargs: Any) -> None:
            init(channel, *args, **kwargs)
            opened.append(channel)

        ray_transport._Channel.__init__ = recording  # type: ignore[method-assign,assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        ray_transport._Channel.__init__ = self._init  # type: ignore[method-assign]


def _session(engine: str, server: ScriptedOllamaProcess, window_ms: float) -> MelleaSession:
    kwargs: dict[str, Any] = {"engine": engine, "check": False}
    if engine == "ray":
        kwargs["ray_workers"] = 2
        ray_transport.WINDOW = window_ms / 1000  # read by each RaySession when it is made
    return start_session(model_id="scripted", base_url=server.base_url, **kwargs)


def run(
    engine: str, server: ScriptedOllamaProcess, args: argparse.Namespace, window_ms: float = 10
) -> dict[str, Any]:
    server.set_script(Script.counting(args.tokens, delay=args.delay))
    server.reset()
    with _Channels() as channels:
        m = _session(engine, server, window_ms)
        try:
            others = [p for p in _descendants(os.getpid()) if p != server.pid]

            async def consume(k: int) -> Arrivals:
                arrivals = Arrivals(args.tokens)
                mot = await m.ainstruct(
                    f"stream {k} {tag(f's{k}')}",
                    strategy=None,
                    model_options={ModelOption.STREAM: True},
                )
                while not mot.is_computed():
                    arrivals.add(await mot.astream(), time.monotonic())
                arrivals.add(await mot.astream(), time.monotonic())  # what came with the end
                return arrivals

            async def main() -> list[Arrivals]:
                return await asyncio.gather(*(consume(k) for k in range(args.streams)))

            threads0 = _threads()
            cpu0, procs0 = time.process_time(), _cpu_by_role(others)
            srv0 = proc_cpu_seconds(server.pid)
            wall0 = time.perf_counter()
            received = asyncio.run(main())
            wall = time.perf_counter() - wall0
            caller_cpu = time.process_time() - cpu0
            procs1 = _cpu_by_role(others)
            split = _thread_split(threads0, _threads())
            server_cpu = proc_cpu_seconds(server.pid) - srv0
        finally:
            m.close()
    procs = {role: procs1.get(role, 0.0) - procs0.get(role, 0.0) for role in procs1}
    records = {find_tag(r.messages): r for r in server.requests}
    delays: list[float] = []
    delivered = disorder = 0
    for k, arrivals in enumerate(received):
        disorder += arrivals.disorder
        rec = records.get(f"s{k}")
        for i, t in enumerate(arrivals.times):
            if t is None:
                continue
            delivered += 1
            if rec is not None and i < len(rec.token_times):
                delays.append(t - rec.token_times[i])
    delays.sort()
    items = sum(c.items for c in channels.opened)
    entries = sum(c.entries for c in channels.opened)
    deltas = sum(c.deltas for c in channels.opened)
    others_cpu = sum(procs.values())
    n = max(delivered, 1)
    return {
        "engine": engine if engine == "local" else f"ray {window_ms:g} ms",
        "delivered": delivered,
        "expected": args.streams * args.tokens,
        "disorder": disorder,
        "wall_s": wall,
        "p50_ms": percentile(delays, 0.5) * 1000,
        "p99_ms": percentile(delays, 0.99) * 1000,
        "caller_cpu_s": caller_cpu,
        "caller_us_per_chunk": caller_cpu / n * 1e6,
        "caller_main_us": split["main"] / n * 1e6,
        "caller_session_loop_us": split["session_loop"] / n * 1e6,
        "caller_ray_threads_us": split["ray_threads"] / n * 1e6,
        "ray_workers_cpu_s": procs.get("ray_workers", 0.0),
        "raylet_cpu_s": procs.get("raylet", 0.0),
        "gcs_cpu_s": procs.get("gcs", 0.0),
        "ray_other_cpu_s": procs.get("ray_other", 0.0),
        "others_cpu_s": others_cpu,
        "total_cpu_s": caller_cpu + others_cpu,
        "total_us_per_chunk": (caller_cpu + others_cpu) / n * 1e6,
        "server_cpu_s": server_cpu,
        "ray_items": items,
        "deltas_per_item": deltas / items if items else 0.0,
        "entries_per_item": entries / items if items else 0.0,
        "deltas_per_entry": deltas / entries if entries else 0.0,
    }


# -- verdict -> disconnect -----------------------------------------------------------------------
class _FailAt(Requirement):
    """Says "fail" on chunk ``at`` and records when (class level: validators hold copies)."""

    failed_at: list[float] = []

    def __init__(self, at: int) -> None:
        super().__init__("fail at")
        self.at = at
        self.count = 0

    async def _stream_validate(
        self, chunk: str, *, backend: Backend, ctx: Context
    ) -> PartialValidationResult:
        index, self.count = self.count, self.count + 1
        if index >= self.at:
            _FailAt.failed_at.append(time.monotonic())
            return PartialValidationResult("fail", reason=f"chunk {index}")
        return PartialValidationResult("pass")


def verdicts(
    engine: str, server: ScriptedOllamaProcess, runs: int, window_ms: float, link: bool = True
) -> list[float]:
    """Milliseconds from each run's "fail" verdict to the server's disconnect (Ray: with the
    workers' control links, or ``link=False``: the cancel through a Ray call alone)."""
    text = " ".join(f"Sentence number {i}." for i in range(400))
    server.set_script(Script.from_text(text, delay=0.005))
    server.reset()
    out: list[float] = []
    m = _session(engine, server, window_ms)
    if not link and m.system.ray is not None:
        for worker in m.system.ray.workers():
            worker.control = None  # channels open no link: Ray's cancel call only
    try:

        async def one() -> float:
            _FailAt.failed_at.clear()
            result = await stream_with_chunking(
                Instruction("x"), m.backend, m.ctx, requirements=[_FailAt(3)]
            )
            async with asyncio.timeout(30):
                chunks = [c async for c in result.astream()]
                await result.acomplete()
            assert len(chunks) == 3, chunks
            verdict = _FailAt.failed_at[0]
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                record = server.requests[-1]
                if record.disconnected_at is not None:
                    return (record.disconnected_at - verdict) * 1000
                await asyncio.sleep(0.005)
            raise TimeoutError("the server saw no disconnect within 10 s")

        async def all_runs() -> None:
            for _ in range(runs):
                out.append(await one())
                server.reset()

        asyncio.run(all_runs())
    finally:
        m.close()
    return out


# -- report ------------------------------------------------------------------------------------
ROWS: list[tuple[str, str, str]] = [
    ("delivered", "{:.0f}", "chunks delivered"),
    ("expected", "{:.0f}", "chunks expected"),
    ("disorder", "{:.0f}", "out of order"),
    ("wall_s", "{:.2f}", "wall (s)"),
    ("p50_ms", "{:.1f}", "delay p50 (ms)"),
    ("p99_ms", "{:.1f}", "delay p99 (ms)"),
    ("caller_us_per_chunk", "{:.1f}", "caller CPU / chunk (µs)"),
    ("caller_main_us", "{:.1f}", "  caller: reading loop (main thread)"),
    ("caller_session_loop_us", "{:.1f}", "  caller: session actor loop"),
    ("caller_ray_threads_us", "{:.1f}", "  caller: Ray's threads"),
    ("caller_cpu_s", "{:.2f}", "caller CPU (s)"),
    ("ray_workers_cpu_s", "{:.2f}", "Ray generation supervisors CPU (s)"),
    ("raylet_cpu_s", "{:.2f}", "raylet CPU (s)"),
    ("gcs_cpu_s", "{:.2f}", "GCS CPU (s)"),
    ("ray_other_cpu_s", "{:.2f}", "other Ray processes CPU (s)"),
    ("total_cpu_s", "{:.2f}", "total CPU, all processes (s)"),
    ("total_us_per_chunk", "{:.1f}", "total CPU / chunk (µs)"),
    ("server_cpu_s", "{:.2f}", "scripted server CPU (s, apart)"),
    ("ray_items", "{:.0f}", "Ray items"),
    ("deltas_per_item", "{:.1f}", "batch: deltas per item"),
    ("entries_per_item", "{:.1f}", "stream entries per item"),
    ("deltas_per_entry", "{:.2f}", "deltas per entry (joined)"),
]


def _median_rows(samples: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    return {
        name: {key: statistics.median(r[key] for r in rows) for key, _, _ in ROWS}
        for name, rows in samples.items()
    }


def _ratios(samples: dict[str, list[dict[str, Any]]], key: str) -> dict[str, float]:
    local = samples["local"]
    return {
        name: statistics.median(r[key] / base[key] for r, base in zip(rows, local, strict=True))
        for name, rows in samples.items()
        if name != "local"
    }


def _table(
    medians: dict[str, dict[str, float]],
    cpu_ratio: dict[str, float],
    total_ratio: dict[str, float],
    markdown: bool,
) -> str:
    names = list(medians)
    lines = []
    if markdown:
        lines.append("| median over the rounds | " + " | ".join(names) + " |")
        lines.append("|---|" + "---:|" * len(names))
    else:
        lines.append(f"{'':36}" + "".join(f"{n:>14}" for n in names))
    rows = [(label, [fmt.format(medians[n][key]) for n in names]) for key, fmt, label in ROWS]
    rows.append(
        (
            "caller CPU / chunk, ratio to local",
            ["1.00"] + [f"{cpu_ratio[n]:.2f}" for n in names[1:]],
        )
    )
    rows.append(
        (
            "total CPU / chunk, ratio to local",
            ["1.00"] + [f"{total_ratio[n]:.2f}" for n in names[1:]],
        )
    )
    for label, cells in rows:
        if markdown:
            lines.append(f"| {label.strip()} | " + " | ".join(cells) + " |")
        else:
            lines.append(f"{label:36}" + "".join(f"{c:>14}" for c in cells))
    return "\n".join(lines)


NOTES = """How to read it:

* *Caller* is this process (`process_time`: all its threads, Ray's own C++ threads included);
  the thread split comes from `/proc/self/task`. The other processes' CPU is read from `/proc`
  for every descendant of the caller (the Ray generation supervisors, the raylet, the GCS, Ray's
  other daemons); the scripted server (the Ollama side, the same for both) is listed apart.
* *Batch*: a Ray item carries, per channel (one per worker) and window, one entry per stream
  with news, its deltas joined into one text (`runtime/ray_worker.py`, "Items"). At 20 tokens/s
  a stream has about one delta per window, so entries hold ~1 delta and items ~100-400.
* In-process, the session's loop parses HTTP and NDJSON for every delta; through Ray it only
  replays one entry per stream per item into the stream's sink. What the caller still pays
  through Ray: that sink and its thunk and reader (the same code as in-process) and Ray's
  per-item cost (about 0.5-1 ms of CPU in Ray's threads per item, whatever its size), which
  wider windows divide; every delta then waits up to the window longer.
* With few streams per worker the items are small and Ray's per-item cost dominates: run with
  `--streams 100` or `--streams 300` (measured 1.26x and 1.08x the in-process caller CPU per
  chunk, 3 rounds each, 2026-12-01).
* The p99 delays of this scenario come from its two bursts (1,000 streams starting together,
  and ending together), not from the steady state; they are noisy on a shared machine.
* A "fail" verdict reaches the worker over its *control link* (a TCP connection to the
  worker's node, token checked; one hop) and through a Ray call (ordered after the start; the
  path when the link is down); a Ray actor call alone takes several ms here."""


def _write_readme(path: Path, body: str) -> None:
    text = path.read_text() if path.exists() else ""
    section = f"{BEGIN}\n{body.rstrip()}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--delay", type=float, default=0.05)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--windows", default=None, help="channel windows in ms, comma-separated (default: 10)"
    )
    parser.add_argument("--verdicts", type=int, default=10)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--readme", type=Path, default=None)
    args = parser.parse_args()
    default_window = ray_transport.WINDOW * 1000
    windows = [float(w) for w in args.windows.split(",")] if args.windows else [default_window]
    raise_open_files()
    logging.getLogger("mellea_actors").setLevel(logging.ERROR)
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    server = ScriptedOllamaProcess(record_token_times=True).start()
    load0 = os.getloadavg()[0]
    configs: list[tuple[str, float]] = [("local", 0.0)] + [("ray", w) for w in windows]
    samples: dict[str, list[dict[str, Any]]] = {}
    verdict_ms: dict[str, list[float]] = {}
    try:
        for r in range(args.rounds):
            order = configs if r % 2 == 0 else configs[::-1]
            for engine, window in order:
                row = run(engine, server, args, window)
                samples.setdefault(row["engine"], []).append(row)
                print(
                    f"round {r + 1}: {row['engine']:>10}: delivered {row['delivered']}, "
                    f"disorder {row['disorder']}, p99 {row['p99_ms']:.1f} ms, caller "
                    f"{row['caller_us_per_chunk']:.1f} µs/chunk, total "
                    f"{row['total_us_per_chunk']:.1f} µs/chunk",
                    flush=True,
                )
        for engine, link, name in [
            ("local", True, "local"),
            ("ray", True, "ray"),
            ("ray", False, "ray, Ray call only (no control link)"),
        ]:
            if args.verdicts > 0:
                verdict_ms[name] = verdicts(engine, server, args.verdicts, default_window, link)
    finally:
        ray_transport.WINDOW = default_window / 1000
        server.stop()
        ray.shutdown()
    samples = {
        name: samples[name]
        for name in [c for c in samples if c == "local"] + [c for c in samples if c != "local"]
    }
    medians = _median_rows(samples)
    cpu_ratio = _ratios(samples, "caller_us_per_chunk")
    total_ratio = _ratios(samples, "total_us_per_chunk")
    head = (
        f"{args.streams} streams x {args.tokens} tokens at {1 / args.delay:.0f} tokens/s, "
        f"{args.rounds} rounds; Ray: 2 workers, one channel per worker, item at most "
        f"{ray_transport.MAX_DELTAS} deltas, windows {', '.join(f'{w:g}' for w in windows)} ms "
        f"(default {default_window:g} ms); load average {load0:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after"
    )
    print("\n" + head)
    print(_table(medians, cpu_ratio, total_ratio, markdown=False))
    ok = all(
        m["delivered"] == m["expected"] and m["disorder"] == 0 for m in medians.values()
    ) and all(
        r["delivered"] == r["expected"] and r["disorder"] == 0
        for rows in samples.values()
        for r in rows
    )
    lower = all(v < 1 for v in cpu_ratio.values())
    print(
        f"every chunk delivered in order in every run: {'yes' if ok else 'NO'}; caller CPU per "
        f"chunk lower through Ray than in-process: {'yes' if lower else 'NO'}"
    )
    vlines = []
    for engine, values in verdict_ms.items():
        values = sorted(values)
        vlines.append(
            f"'fail' verdict -> server sees the disconnect, {engine}: median "
            f"{statistics.median(values):.1f} ms, max {values[-1]:.1f} ms ({len(values)} runs)"
        )
    print("\n".join(vlines))
    if args.json is not None:
        args.json.write_text(
            json.dumps({"samples": samples, "medians": medians, "verdict_ms": verdict_ms}, indent=1)
        )
    if args.readme is not None:
        when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        command = "bench/ray_streams.py " + " ".join(sys.argv[1:])
        body = "\n".join(
            [
                "## The Ray engine (`bench/ray_streams.py`)",
                "",
                f"`.venv/bin/python {command.strip()}` ({when}; a 2-core machine, shared).",
                "",
                head + ".",
                "",
                _table(medians, cpu_ratio, total_ratio, markdown=True),
                "",
                f"Every chunk delivered in order in every run: {'yes' if ok else 'NO'}. "
                f"Caller CPU per chunk lower through Ray than in-process: "
                f"{'yes' if lower else 'NO'}.",
                "",
                *(f"* {line}" for line in vlines),
                "",
                NOTES,
            ]
        )
        _write_readme(args.readme, body)


if __name__ == "__main__":
    main()
