"""Probe: where scenario 4's delayed chunks wait — before the engine parsed them, or after.

Not a scenario (``run.py`` does not run it), and it patches one private method of the
generation supervisor (``_DeltaBatch.add``, to time each delta as the engine parses it), so it
is a diagnostic only. It runs scenario 4's workload once, cold, in a fresh process (1,000
streams x 40 chunks at 20 chunks/s, staggered, each read by an ``astream()`` loop), and times
every chunk three times: the server's send (``record_token_times``), the engine's parse, and
the reader's receive. It prints the percentiles of send -> parse (the engine did not read the
socket yet: its loop was busy) and parse -> reader (the reader's task did not run yet), the
cyclic collector's pauses, the longest engine iterations (``LoopHost._step``), and when the
chunks delayed more than 8 ms were sent (10 ms bins). ``--yield-every S`` and
``--start-burst N`` set ``backends.ollama.YIELD_EVERY`` and
``runtime.generation_supervisor.START_BURST`` in the measured process.

    .venv/bin/python bench/chunk_delays.py [--yield-every 0.0002] [--start-burst 8]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import find_tag, percentile, raise_open_files, receive_times, tag  # noqa: E402

N, TOKENS, PERIOD = 1000, 40, 0.05


def _child(base_url: str, out: str, yield_every: float | None, start_burst: int | None) -> None:
    raise_open_files()
    import mellea_actors
    from mellea_actors.backends import ollama as ollama_backend
    from mellea_actors.runtime import crossing
    from mellea_actors.runtime import generation_supervisor as supervisor

    if yield_every is not None:
        ollama_backend.YIELD_EVERY = yield_every
    if start_burst is not None:
        supervisor.START_BURST = start_burst
    parsed: dict[str, list[float]] = {}
    add = supervisor._DeltaBatch.add

    def timed_add(batch: Any, content: str, thinking: str) -> None:
        parsed.setdefault(batch._gen.request.request_id, []).append(time.monotonic())
        add(batch, content, thinking)

    supervisor._DeltaBatch.add = timed_add  # type: ignore[method-assign, assignment]
    steps: list[tuple[float, float]] = []
    step = crossing.LoopHost._step

    def timed_step(host: Any) -> None:
        began = time.monotonic()
        step(host)
        steps.append((began, time.monotonic() - began))

    crossing.LoopHost._step = timed_step  # type: ignore[method-assign, assignment]
    pauses: list[tuple[float, float, int]] = []
    began_gc = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            began_gc[0] = time.monotonic()
        elif info["generation"] >= 1:
            pauses.append((began_gc[0], time.monotonic() - began_gc[0], info["generation"]))

    gc.callbacks.append(on_gc)

    async def main() -> None:
        m = mellea_actors.start_session(model_id="scripted", base_url=base_url, check=False)
        t0 = time.monotonic()
        made = []
        for k in range(N):
            mot = await m.ainstruct(
                f"stream {k} {tag(f's{k}')}", strategy=None, model_options={"stream": True}
            )
            made.append((mot, asyncio.create_task(receive_times(mot))))
        t1 = time.monotonic()
        results = []
        for k, (mot, task) in enumerate(made):
            received = await task
            results.append({"k": k, "received": received, "parsed": parsed.get(mot.request_id, [])})
        Path(out).write_text(
            json.dumps(
                {
                    "results": results,
                    "pauses": pauses,
                    "steps": sorted(steps, key=lambda s: -s[1])[:12],
                    "t0": t0,
                    "t1": t1,
                }
            )
        )
        os._exit(0)  # the session is left open: its end is not measured

    asyncio.run(main())


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(
            sys.argv[2],
            sys.argv[3],
            None if sys.argv[4] == "-" else float(sys.argv[4]),
            None if sys.argv[5] == "-" else int(sys.argv[5]),
        )
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--yield-every", type=float, default=None)
    parser.add_argument("--start-burst", type=int, default=None)
    args = parser.parse_args()
    from mellea_actors.testing import Script, ScriptedOllamaProcess

    script = Script.counting(TOKENS, delay=PERIOD)
    with (
        tempfile.TemporaryDirectory() as tmp,
        ScriptedOllamaProcess(record_token_times=True) as server,
    ):
        server.set_script(script)
        server.enqueue(*(dataclasses.replace(script, first_delay=PERIOD * k / N) for k in range(N)))
        out = str(Path(tmp) / "delays.json")
        ye = "-" if args.yield_every is None else str(args.yield_every)
        sb = "-" if args.start_burst is None else str(args.start_burst)
        subprocess.run(
            [sys.executable, __file__, "--child", server.base_url, out, ye, sb], check=True
        )
        data = json.loads(Path(out).read_text())
        records = {find_tag(r.messages): r for r in server.requests}
    to_parse: list[float] = []
    to_reader: list[float] = []
    total: list[float] = []
    late: collections.Counter[float] = collections.Counter()
    t0 = data["t0"]
    for r in data["results"]:
        record = records.get(f"s{r['k']}")
        if record is None:
            continue
        for sent, parsed, received in zip(
            record.token_times, r["parsed"], r["received"], strict=False
        ):
            to_parse.append(parsed - sent)
            to_reader.append(received - parsed)
            total.append(received - sent)
            if received - sent > 0.008:
                late[round(sent - t0, 2)] += 1
    for name, values in (
        ("send -> parse", to_parse),
        ("parse -> reader", to_reader),
        ("send -> reader", total),
    ):
        values.sort()
        print(
            f"{name:16} p50 {percentile(values, 0.5) * 1e3:6.2f} ms  "
            f"p99 {percentile(values, 0.99) * 1e3:6.2f} ms  max {values[-1] * 1e3:6.1f} ms"
        )
    print(f"the last ainstruct returned at {data['t1'] - t0:.3f} s")
    print(
        "collector pauses, generation >= 1 (at s, ms, generation):",
        [(round(a - t0, 3), round(b * 1e3, 1), g) for a, b, g in data["pauses"]],
    )
    print(
        "longest engine iterations (at s, ms):",
        [(round(a - t0, 3), round(b * 1e3, 1)) for a, b in data["steps"]],
    )
    print("chunks delayed > 8 ms, by send time (10 ms bins):", sorted(late.items()))


if __name__ == "__main__":
    main()
