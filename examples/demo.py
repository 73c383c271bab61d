"""The main job (`make run`): parallel and streamed generation on the embedded default Ollama.

Fires three generations at once, streams a fourth to the terminal while the others run, then
prints the three results with their usage and the supervision log's summary. `start_session()`
with no arguments uses OLLAMA_HOST if set, else a server on 127.0.0.1:11434, else the project's
own local Ollama (provisioned from PyPI by `make run`).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter

import mellea_actors
from mellea_actors.backends import ModelOption
from mellea_actors.helpers.async_helpers import wait_for_all_mots
from mellea_actors.local.server import is_ollama_reachable

TOPICS = ["mountains", "rivers", "forests"]
OPTIONS = {ModelOption.MAX_NEW_TOKENS: 64, ModelOption.TEMPERATURE: 0.7}


async def main() -> None:
    host = os.environ.get("OLLAMA_HOST")
    if host and not is_ollama_reachable(host):
        print(f"OLLAMA_HOST={host} does not answer: using the project's local Ollama instead")
        del os.environ["OLLAMA_HOST"]
    started = time.perf_counter()
    with mellea_actors.start_session(model_options=OPTIONS) as m:
        print(f"model {m.backend.model_id} at {m.backend.base_url}\n")

        # 1. fire three generations; each thunk returns at once, generation runs in the background
        poems = [await m.ainstruct(f"Write a short poem about {topic}.") for topic in TOPICS]
        print(f"3 generations started; computed yet? {[p.is_computed() for p in poems]}")

        # 2. meanwhile, stream a fourth one chunk by chunk
        story = await m.ainstruct(
            "Write a short story about a robot learning to cook.",
            model_options={ModelOption.STREAM: True},
        )
        print("\n--- streamed story ---")
        while not story.is_computed():
            print(await story.astream(), end="", flush=True)
        print("\n")

        # 3. resolve the three poems (already running in parallel)
        await wait_for_all_mots(poems)
        for topic, poem in zip(TOPICS, poems, strict=True):
            usage = poem.usage or {}
            print(f"--- {topic} ({usage.get('completion_tokens')} tokens) ---\n{poem.value}\n")

        events = Counter(e["event"] for e in m.system.log.events())
        print("supervision log:", dict(events))
    print(f"done in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    asyncio.run(main())
