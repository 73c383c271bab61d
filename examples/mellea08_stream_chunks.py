# Mellea 0.8.0's documented use of `stream()` — the validated chunks of a `Streamer`, consumed
# inside `async with` (its docstring: `async with await stream(action, backend, ctx) as s:
# async for chunk in s: ...`) — with a requirement at its own granularity (`chunking=`).
# Mellea 0.8.0's wheel ships no samples; this one is written to that documented usage, with
# `mellea_actors` where Mellea code says `mellea`.
import asyncio

from mellea_actors.core.backend import Backend
from mellea_actors.core.base import Context
from mellea_actors.core.chunking import WordChunking
from mellea_actors.core.requirement import PartialValidationResult, Requirement
from mellea_actors.stdlib.components import Instruction
from mellea_actors.stdlib.streaming import stream


class MaxWords(Requirement):
    """Fails once the answer passes *limit* words; judges words while the stream is cut into
    sentences."""

    def __init__(self, limit: int) -> None:
        super().__init__(description=f"Use at most {limit} words.", chunking=WordChunking())
        self._limit = limit
        self._count = 0

    async def _stream_validate(
        self, chunk: str, *, backend: Backend, ctx: Context
    ) -> PartialValidationResult:
        self._count += 1
        if self._count > self._limit:
            return PartialValidationResult("fail", reason=f"more than {self._limit} words")
        return PartialValidationResult("unknown")


async def main() -> None:
    from mellea_actors.stdlib.session import start_session

    m = start_session()
    action = Instruction("Describe the moon in three short sentences.")

    async with await stream(
        action, m.backend, m.ctx, requirements=[MaxWords(limit=30)], chunking="sentence"
    ) as streamer:
        async for sentence in streamer:
            print(f"  SENTENCE: {sentence!r}")

    if streamer.failed_early:
        print(f"Stopped early: {streamer.failure_reason}")
    else:
        print(f"Completed normally: {streamer.completed_normally}")
    print(f"Full text: {streamer.full_text!r}")


asyncio.run(main())
