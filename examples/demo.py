"""The main job (`make run`): parallel, streamed and validated generation on the default Ollama.

Fires three generations at once, streams a fourth to the terminal while the others run, prints
the three results with their usage, then streams a fifth through per-sentence validation (a
validator actor that stops the generation after two sentences), and the supervision log's
summary. `start_session()` with no arguments uses OLLAMA_HOST if set, else a server on
127.0.0.1:11434, else the project's own local Ollama (provisioned from PyPI by `make run`).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter

import mellea_actors
from mellea_actors.backends import ModelOption
from mellea_actors.core.requirement import PartialValidationResult, Requirement, ValidationResult
from mellea_actors.helpers.async_helpers import wait_for_all_mots
from mellea_actors.local.server import is_ollama_reachable
from mellea_actors.stdlib.components import Instruction
from mellea_actors.stdlib.streaming import (
    ChunkEvent,
    CompletedEvent,
    QuickCheckEvent,
    stream_with_chunking,
)

TOPICS = ["mountains", "rivers", "forests"]
OPTIONS = {ModelOption.MAX_NEW_TOKENS: 64, ModelOption.TEMPERATURE: 0.7}


class AtMostSentences(Requirement):
    """Says "fail" on the sentence after the first ``limit`` (each validator has its own copy)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"The response must be at most {limit} sentences.")
        self.limit = limit
        self.seen = 0

    async def stream_validate(self, chunk: str, *, backend, ctx) -> PartialValidationResult:  # type: ignore[no-untyped-def]
        self.seen += 1
        if self.seen > self.limit:
            return PartialValidationResult("fail", reason=f"sentence {self.seen} > {self.limit}")
        return PartialValidationResult("pass")

    async def validate(self, backend, ctx, *, format=None, model_options=None) -> ValidationResult:  # type: ignore[no-untyped-def]
        return ValidationResult(True)


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

        # 4. validated streaming: each sentence is checked before it is shown
        print("--- validated stream (at most 2 sentences) ---")
        result = await stream_with_chunking(
            Instruction("Describe a busy kitchen in five sentences."),
            m.backend,
            m.ctx,
            requirements=[AtMostSentences(2)],
            chunking="sentence",
            model_options={ModelOption.MAX_NEW_TOKENS: 200},
        )
        async for event in result.events():
            if isinstance(event, ChunkEvent):
                print(f"  [{event.chunk_index}] {event.text}")
            elif isinstance(event, QuickCheckEvent) and not event.passed:
                print(f"  sentence {event.chunk_index} failed: nothing from it on is shown")
            elif isinstance(event, CompletedEvent):
                print(f"  completed={result.completed}, failures={len(result.streaming_failures)}")
        print()

        events = Counter(e["event"] for e in m.system.log.events())
        print("supervision log:", dict(events))
    print(f"done in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    asyncio.run(main())
