"""Probe: what the start of a generation costs, hosted on the caller's loop and on a thread.

Not a scenario (``run.py`` does not run it): 1,000 ``ainstruct(..., stream=True)`` calls in a
row against the scripted server (its own process), then until each thunk has its first text.
Per configuration and repetition: the wall of the calls, the wall until every first text, and
the process's CPU over both, per stream.

    .venv/bin/python bench/start_cost.py [--n 1000] [--reps 3] [caller thread]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Literal

import mellea_actors
from mellea_actors.backends import ModelOption
from mellea_actors.testing import Script, ScriptedOllamaProcess

STREAM = {ModelOption.STREAM: True}


async def _probe(
    base_url: str, engine_loop: Literal["caller", "thread"], n: int, reps: int
) -> None:
    m = mellea_actors.start_session(
        model_id="scripted", base_url=base_url, check=False, engine_loop=engine_loop
    )
    try:
        warm = await m.ainstruct("warm up", strategy=None, model_options=STREAM)
        await warm.avalue()
        rows = []
        for rep in range(reps):
            cpu0, wall0 = time.process_time(), time.perf_counter()
            mots = [
                await m.ainstruct(f"start {rep} {k}", strategy=None, model_options=STREAM)
                for k in range(n)
            ]
            called = time.perf_counter()
            await asyncio.gather(*(mot.astream() for mot in mots))
            first, cpu = time.perf_counter(), time.process_time()
            rows.append(
                f"calls {(called - wall0) / n * 1e6:4.0f} us, to first text "
                f"{(first - wall0) / n * 1e6:4.0f} us, CPU {(cpu - cpu0) / n * 1e6:4.0f} us"
            )
            await asyncio.gather(*(mot.avalue() for mot in mots))
        print(f"{engine_loop:7} per stream: " + "; ".join(rows), flush=True)
    finally:
        m.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "engine_loops", nargs="*", default=["caller", "thread"], choices=["caller", "thread"]
    )
    args = parser.parse_args()
    with ScriptedOllamaProcess(Script(tokens=("x ",) * 3)) as server:
        for engine_loop in args.engine_loops:
            asyncio.run(_probe(server.base_url, engine_loop, args.n, args.reps))


if __name__ == "__main__":
    main()
