"""Probe: where scenario 4's client CPU goes — the streams' starts and ends, or their chunks.

Not a scenario (``run.py`` does not run it). As scenario 4 measures it — a fresh process, the
first run in it (no warm-up), 1,000 streams paced at 20 chunks/s with staggered phases, each
read by an ``astream()`` loop into :class:`~common.Arrivals` — for ``--tokens`` chunks a stream,
interleaved with the floor (``floor_client.py``, the bench's ``gather`` of one task per stream).
Run it for 2 and for 40 chunks: the difference divided by 38,000 is the CPU of one chunk, what
is left at 2 chunks is mostly the start and end of a stream.

Per run: the client's CPU (every thread), split for mellea_actors at the moment the last
``ainstruct`` returned (``create``: the burst of starts, with the chunks that arrived
meanwhile). ``--yield-every S`` sets ``mellea_actors.backends.ollama.YIELD_EVERY`` in the
mellea_actors runs (see its docstring) to measure that trade pairwise.

    .venv/bin/python bench/stream_cost.py [--tokens 40] [--pairs 4] [--yield-every 0.001]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import Arrivals, raise_open_files, tag  # noqa: E402

N, PERIOD = 1000, 0.05


async def _ours(base_url: str, tokens: int, yield_every: float | None) -> dict[str, float]:
    import mellea_actors
    from mellea_actors.backends import ModelOption
    from mellea_actors.backends import ollama as ollama_backend

    if yield_every is not None:
        ollama_backend.YIELD_EVERY = yield_every
    m = mellea_actors.start_session(model_id="scripted", base_url=base_url, check=False)
    stream = {ModelOption.STREAM: True}

    async def consume(mot: Any) -> Arrivals:
        arrivals = Arrivals(tokens)
        while not mot.is_computed():
            arrivals.add(await mot.astream(), time.monotonic())
        return arrivals

    cpu0 = time.process_time()
    tasks = []
    for k in range(N):
        mot = await m.ainstruct(f"stream {k} {tag(f's{k}')}", strategy=None, model_options=stream)
        tasks.append(asyncio.create_task(consume(mot)))
    cpu1 = time.process_time()
    await asyncio.gather(*tasks)
    cpu2 = time.process_time()
    return {"create": cpu1 - cpu0, "cpu": cpu2 - cpu0}


async def _floor(base_url: str, tokens: int) -> dict[str, float]:
    # What the bench's floor worker has imported too (raw_client.py imports the ollama client):
    # the cyclic collector's full passes come rarer the more long-lived objects a process
    # holds, and the floor's CPU for this workload is ~1.2 s with these imports, ~2.0 s without.
    import ollama  # noqa: F401
    from floor_client import FloorClient

    client = FloorClient(base_url)

    async def one(k: int) -> Arrivals:
        arrivals = Arrivals(tokens)
        async for part in await client.stream(f"stream {k} {tag(f's{k}')}"):
            content = part.get("message", {}).get("content") or ""
            if content:
                arrivals.add(content, time.monotonic())
        return arrivals

    cpu0 = time.process_time()
    await asyncio.gather(*(one(k) for k in range(N)))
    return {"cpu": time.process_time() - cpu0}


def _child(variant: str, base_url: str, tokens: int, yield_every: float | None) -> None:
    raise_open_files()
    if variant == "floor":
        result = asyncio.run(_floor(base_url, tokens))
    else:
        result = asyncio.run(_ours(base_url, tokens, yield_every))
    print(json.dumps(result), flush=True)
    os._exit(0)  # the session is left open: its end is not measured


def _run(variant: str, tokens: int, yield_every: float | None) -> dict[str, float]:
    from mellea_actors.testing import Script, ScriptedOllamaProcess

    script = Script.counting(tokens, delay=PERIOD)
    with ScriptedOllamaProcess(record_token_times=True) as server:  # as scenario 4 runs it
        server.set_script(script)
        server.enqueue(*(dataclasses.replace(script, first_delay=PERIOD * k / N) for k in range(N)))
        args = [sys.executable, __file__, "--child", variant, server.base_url, str(tokens)]
        if yield_every is not None:
            args.append(str(yield_every))
        out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        variant, base_url, tokens = sys.argv[2], sys.argv[3], int(sys.argv[4])
        _child(variant, base_url, tokens, float(sys.argv[5]) if len(sys.argv) > 5 else None)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--yield-every", type=float, default=None)
    args = parser.parse_args()
    floor: list[float] = []
    ours: list[float] = []
    print(f"{N:,} streams x {args.tokens} chunks at 20/s; cold, one process per run")
    for pair in range(args.pairs):  # interleaved: machine noise spreads over both
        f = _run("floor", args.tokens, None)
        o = _run("mellea_actors", args.tokens, args.yield_every)
        floor.append(f["cpu"])
        ours.append(o["cpu"])
        print(
            f"pair {pair + 1}: floor CPU {f['cpu']:.3f} s; mellea_actors CPU {o['cpu']:.3f} s "
            f"(of which until the last ainstruct returned {o['create']:.3f} s); "
            f"ratio {o['cpu'] / f['cpu']:.2f}",
            flush=True,
        )
    fm, om = statistics.median(floor), statistics.median(ours)
    print(f"median: floor {fm:.3f} s, mellea_actors {om:.3f} s, ratio {om / fm:.2f}")


if __name__ == "__main__":
    main()
