"""What-if probe for scenario 4's tail: where does mellea_actors' p99 delay go?

Not a scenario (``run.py`` does not run it, nothing here is a supported mode): it runs the
``many_streams`` workload (1,000 streams x 40 chunks at 20 chunks/s, phases staggered, each
stream read with an ``astream()`` loop) in a fresh process per configuration, side by side:

* ``floor`` — ``floor_client.py``, as in the bench;
* ``shipped`` — mellea_actors with default settings: the session opened in the running loop,
  so the engine is hosted on it (``engine_loop="caller"``, one thread);
* ``gc-off`` — the same with the cyclic garbage collector disabled for the measured section;
* ``freeze`` — the same with the collector on, after ``gc.freeze()`` at the end of the warm-up
  (what a service may do after its start-up: the objects of its imports and set-up are then
  never traversed again);
* ``thread`` — ``engine_loop="thread"``: the engine on a loop thread of its own (the default
  before the engine could be hosted);
* ``thread+gc-off`` — both;
* ``wake-0`` — thread, but every reader woken is handed over in the next loop iteration
  (``crossing.WAKE_COALESCE`` = 0 instead of 1 ms).

Per configuration and round: p50/p99/max of the server-send -> consumer-receive delay (matched
by tag to the server's token send times), CPU and wall of the measured section, and the cyclic
GC's collections of generation ≥ 1 that ran during it (count, longest, total ms).

    .venv/bin/python bench/whatif.py [--rounds 2] [--only floor,shipped,thread]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import find_tag, percentile, raise_open_files, receive_times, tag  # noqa: E402

CONFIGS = ("floor", "shipped", "gc-off", "freeze", "thread", "thread+gc-off", "wake-0")
N, TOKENS, PERIOD = 1000, 40, 0.05


async def _mellea_actors(base_url: str, engine_loop: Literal["caller", "thread"]) -> Any:
    import mellea_actors

    m = mellea_actors.start_session(
        model_id="scripted", base_url=base_url, check=False, engine_loop=engine_loop
    )

    async def one(prompt: str) -> Any:
        return await m.ainstruct(prompt, strategy=None, model_options={"stream": True})

    return one, receive_times


async def _floor(base_url: str) -> Any:
    # the imports of the bench's floor worker (raw_client.py imports the ollama client): the
    # cyclic collector runs its full passes far more often in a process that holds fewer
    # long-lived objects, and the floor's CPU here was ~1.6x what the bench measures without it
    import ollama  # noqa: F401
    from floor_client import FloorClient

    client = FloorClient(base_url)

    async def one(prompt: str) -> Any:
        return await client.stream(prompt)

    async def consume(stream: Any) -> list[float]:
        return [time.monotonic() async for _ in stream][:-1]  # the last object is the final one

    return one, consume


async def _run(config: str, base_url: str) -> dict[str, Any]:
    raise_open_files()
    if config == "wake-0":
        from mellea_actors.runtime import crossing

        crossing.WAKE_COALESCE = 0.0
    if config == "floor":
        one, consume = await _floor(base_url)
    else:
        engine_loop: Literal["caller", "thread"] = (
            "caller" if config in ("shipped", "gc-off", "freeze") else "thread"
        )
        one, consume = await _mellea_actors(base_url, engine_loop)
    pauses: list[tuple[int, float]] = []
    started: list[float] = []

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started.append(time.perf_counter())
        elif started and info["generation"] >= 1:
            pauses.append((info["generation"], time.perf_counter() - started.pop()))

    out: dict[str, Any] = {}
    for rep in range(2):  # a warm-up, then the measured one
        measured = rep == 1
        if measured:
            pauses.clear()
            gc.callbacks.append(on_gc)
            if config == "freeze":
                gc.collect()
                gc.freeze()
            if config.endswith("gc-off"):
                gc.disable()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        tasks = []
        for k in range(N):
            handle = await one(f"stream {k} {tag(f'r{rep}s{k}')}")
            tasks.append(asyncio.create_task(consume(handle)))
        received = await asyncio.gather(*tasks)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        if measured:
            gc.enable()
            gc.callbacks.remove(on_gc)
            out = {"cpu": cpu, "wall": wall, "received": received, "pauses": pauses}
    return out


def _child(config: str, base_url: str, out_path: str) -> None:
    result = asyncio.run(_run(config, base_url))
    Path(out_path).write_text(json.dumps(result))
    os._exit(0)  # the session is left open: its end is not measured


def _measure(config: str) -> dict[str, Any]:
    from mellea_actors.testing import Script, ScriptedOllamaProcess

    script = Script.counting(TOKENS, delay=PERIOD)
    with ScriptedOllamaProcess(record_token_times=True) as server:
        server.set_script(script)
        server.enqueue(
            *(dataclasses.replace(script, first_delay=PERIOD * k / N) for k in range(2 * N))
        )
        out_path = f"/tmp/whatif-{os.getpid()}.json"
        subprocess.run(
            [sys.executable, __file__, "--child", config, server.base_url, out_path], check=True
        )
        result = json.loads(Path(out_path).read_text())
        os.unlink(out_path)
        records = {find_tag(r.messages): r for r in server.requests}
    delays = []
    for k, times in enumerate(result["received"]):
        record = records.get(f"r1s{k}")
        if record is None:
            continue
        delays += [t - s for t, s in zip(times, record.token_times, strict=False)]
    delays.sort()
    pauses = result["pauses"]
    return {
        "chunks": len(delays),
        "p50": percentile(delays, 0.5) * 1e3,
        "p99": percentile(delays, 0.99) * 1e3,
        "max": delays[-1] * 1e3,
        "cpu": result["cpu"],
        "wall": result["wall"],
        "gc": (
            len(pauses),
            max((d for _, d in pauses), default=0.0) * 1e3,
            sum(d for _, d in pauses) * 1e3,
            sum(1 for g, _ in pauses if g == 2),
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", default=",".join(CONFIGS))
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    configs = [c for c in args.only.split(",") if c]
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown configuration(s) {sorted(unknown)}; choose from {CONFIGS}")
    print(f"{N} streams x {TOKENS} chunks at {1 / PERIOD:.0f}/s; one process per run")
    print(
        f"{'config':16} {'round':>5} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'CPU s':>6} "
        f"{'wall s':>6}  gc>=1 in window: n, longest, total ms (gen2)"
    )
    for rnd in range(args.rounds):
        for config in configs:  # interleaved: machine noise spreads over every configuration
            r = _measure(config)
            n, longest, total, gen2 = r["gc"]
            print(
                f"{config:16} {rnd + 1:>5} {r['p50']:7.2f} {r['p99']:7.2f} {r['max']:7.1f} "
                f"{r['cpu']:6.2f} {r['wall']:6.2f}  {n}, {longest:.1f}, {total:.1f} ({gen2})",
                flush=True,
            )


if __name__ == "__main__":
    main()
