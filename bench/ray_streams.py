"""Many paced streams through the Ray engine (2 generation workers) vs in-process.

    .venv/bin/python bench/ray_streams.py [--streams 1000] [--tokens 40] [--delay 0.05]

The scripted Ollama-protocol server runs in its own process and records when it sent each
token; both engines read the same streams (``t0 ``, ``t1 ``… at ``1/delay`` tokens/s) through a
session's ``astream()``, and the script prints, side by side: chunks delivered (and out of
order), the delay from the server's send to the reader (p50, p99), the caller's CPU per chunk,
the CPU of every process involved (caller, Ray workers and Ray's own daemons; the server is
listed apart), the per-stream batch size (deltas per sink ``flush``) and, for Ray, the items
that crossed: one per channel window, with the entries of every stream of that worker
(streams and deltas per item).
Needs Ray (``pip install 'mellea_actors[ray]'``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import contextlib

from common import (
    Arrivals,
    find_tag,
    percentile,
    proc_cpu_seconds,
    raise_open_files,
    tag,
)

from mellea_actors import start_session
from mellea_actors.backends import ModelOption
from mellea_actors.runtime import ray_transport
from mellea_actors.testing import Script, ScriptedOllamaProcess


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


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += proc_cpu_seconds(pid)
    return total


_ORIGINAL = ray_transport.RayTransport.stream_chat
_DISPATCH = ray_transport._Channel.dispatch


def _items() -> list[tuple[int, int]]:
    """Record every Ray item the channels receive: (streams in it, deltas in it)."""
    items: list[tuple[int, int]] = []
    original = _DISPATCH

    def counting(self: Any, item: Any) -> None:
        items.append((len(item), sum(len(entry[1]) for entry in item)))
        original(self, item)

    ray_transport._Channel.dispatch = counting  # type: ignore[method-assign]
    return items


def _batches() -> list[int]:
    """Record the size of every per-stream batch the caller replays into a sink (deltas per
    ``flush``; wraps RayTransport's sink use)."""
    sizes: list[int] = []
    original = _ORIGINAL

    async def counting(self: Any, request: Any, sink: Any) -> Any:
        class Counting:
            def __init__(self) -> None:
                self.n = 0

            def add(self, content: str, thinking: str) -> None:
                self.n += 1
                sink.add(content, thinking)

            def flush(self) -> None:
                sizes.append(self.n)
                self.n = 0
                sink.flush()

        return await original(self, request, Counting())

    ray_transport.RayTransport.stream_chat = counting  # type: ignore[method-assign]
    return sizes


def run(engine: str, server: ScriptedOllamaProcess, args: argparse.Namespace) -> dict[str, Any]:
    server.set_script(Script.counting(args.tokens, delay=args.delay))
    server.reset()
    kwargs: dict[str, Any] = {"engine": engine, "check": False}
    if engine == "ray":
        kwargs["ray_workers"] = 2
    m = start_session(model_id="scripted", base_url=server.base_url, **kwargs)
    sizes = _batches() if engine == "ray" else []
    items = _items() if engine == "ray" else []
    others = [p for p in _descendants(os.getpid()) if p != server.pid]

    async def consume(k: int) -> Arrivals:
        arrivals = Arrivals(args.tokens)
        mot = await m.ainstruct(
            f"stream {k} {tag(f's{k}')}", strategy=None, model_options={ModelOption.STREAM: True}
        )
        while not mot.is_computed():
            arrivals.add(await mot.astream(), time.monotonic())
        arrivals.add(await mot.astream(), time.monotonic())  # what came with the end
        return arrivals

    async def main() -> list[Arrivals]:
        return await asyncio.gather(*(consume(k) for k in range(args.streams)))

    cpu0, proc0, srv0 = time.process_time(), _cpu(others), proc_cpu_seconds(server.pid)
    wall0 = time.perf_counter()
    received = asyncio.run(main())
    wall = time.perf_counter() - wall0
    caller_cpu = time.process_time() - cpu0
    others_cpu = _cpu(others) - proc0
    server_cpu = proc_cpu_seconds(server.pid) - srv0
    m.close()
    if engine == "ray":
        ray_transport.RayTransport.stream_chat = _ORIGINAL  # type: ignore[method-assign]
        ray_transport._Channel.dispatch = _DISPATCH  # type: ignore[method-assign]
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
    return {
        "engine": engine,
        "delivered": delivered,
        "expected": args.streams * args.tokens,
        "disorder": disorder,
        "wall_s": wall,
        "p50_ms": percentile(delays, 0.5) * 1000,
        "p99_ms": percentile(delays, 0.99) * 1000,
        "caller_cpu_s": caller_cpu,
        "caller_us_per_chunk": caller_cpu / max(delivered, 1) * 1e6,
        "ray_procs_cpu_s": others_cpu,
        "total_cpu_s": caller_cpu + others_cpu,
        "total_us_per_chunk": (caller_cpu + others_cpu) / max(delivered, 1) * 1e6,
        "server_cpu_s": server_cpu,
        "batch_mean": sum(sizes) / len(sizes) if sizes else 1.0,
        "batch_max": max(sizes) if sizes else 1,
        "batches": len(sizes),
        "ray_items": len(items),
        "streams_per_item": sum(n for n, _ in items) / len(items) if items else 0.0,
        "deltas_per_item": sum(d for _, d in items) / len(items) if items else 0.0,
        "deltas_per_item_max": max((d for _, d in items), default=0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--delay", type=float, default=0.05)
    args = parser.parse_args()
    raise_open_files()
    logging.getLogger("mellea_actors").setLevel(logging.ERROR)
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    server = ScriptedOllamaProcess(record_token_times=True).start()
    try:
        rows = [run("local", server, args), run("ray", server, args)]
    finally:
        server.stop()
        ray.shutdown()
    print(
        f"\n{args.streams} streams x {args.tokens} tokens at {1 / args.delay:.0f} tokens/s; "
        f"Ray: 2 workers, window {ray_transport.WINDOW * 1000:.0f} ms / "
        f"max {ray_transport.MAX_DELTAS} deltas per item (one channel per worker)"
    )
    width = 22
    print(f"{'':{width}}" + "".join(f"{r['engine']:>16}" for r in rows))
    for key, fmt in [
        ("delivered", "{:.0f}"),
        ("expected", "{:.0f}"),
        ("disorder", "{:.0f}"),
        ("wall_s", "{:.2f}"),
        ("p50_ms", "{:.1f}"),
        ("p99_ms", "{:.1f}"),
        ("caller_cpu_s", "{:.2f}"),
        ("caller_us_per_chunk", "{:.0f}"),
        ("ray_procs_cpu_s", "{:.2f}"),
        ("total_cpu_s", "{:.2f}"),
        ("total_us_per_chunk", "{:.0f}"),
        ("server_cpu_s", "{:.2f}"),
        ("batch_mean", "{:.2f}"),
        ("batch_max", "{:.0f}"),
        ("batches", "{:.0f}"),
        ("ray_items", "{:.0f}"),
        ("streams_per_item", "{:.1f}"),
        ("deltas_per_item", "{:.1f}"),
        ("deltas_per_item_max", "{:.0f}"),
    ]:
        print(f"{key:{width}}" + "".join(f"{fmt.format(r[key]):>16}" for r in rows))


if __name__ == "__main__":
    main()
