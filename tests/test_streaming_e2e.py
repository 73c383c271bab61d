"""stream_with_chunking end to end, against the real local Ollama (smollm2:135m).

The two seed samples' logic in-process (assertions on properties, not on model text), a "fail"
and a consumer cancel that stop the real generation, and the two example files as subprocesses.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mellea_actors import MelleaSession
from mellea_actors.core.backend import Backend
from mellea_actors.core.base import Context
from mellea_actors.core.requirement import PartialValidationResult, Requirement, ValidationResult
from mellea_actors.stdlib.components import Instruction
from mellea_actors.stdlib.streaming import (
    ChunkEvent,
    CompletedEvent,
    FullValidationEvent,
    QuickCheckEvent,
    StreamEvent,
    StreamingDoneEvent,
    live_stream_actors,
    stream_with_chunking,
)
from tests.conftest import LOCAL_MODEL, assert_spaced_like_source

pytestmark = pytest.mark.ollama

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
WAIT = 120.0


class MaxSentencesReq(Requirement):
    """The seed's requirement: fails if the model generates more than *limit* sentences."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self._limit = limit
        self._count = 0

    def format_for_llm(self) -> str:
        return f"The response must be at most {self._limit} sentences."

    async def stream_validate(
        self, chunk: str, *, backend: Backend, ctx: Context
    ) -> PartialValidationResult:
        self._count += 1
        if self._count > self._limit:
            return PartialValidationResult("fail", reason="Too many sentences")
        return PartialValidationResult("unknown")

    async def validate(
        self, backend: Backend, ctx: Context, *, format: Any = None, model_options: Any = None
    ) -> ValidationResult:
        return ValidationResult(result=True)


async def test_seed_events_sample(session: MelleaSession) -> None:
    action = Instruction("Write a two-sentence summary of the water cycle.")
    req = MaxSentencesReq(limit=3)
    result = await stream_with_chunking(
        action, session.backend, session.ctx, requirements=[req], chunking="sentence"
    )
    events: list[StreamEvent] = []
    async with asyncio.timeout(WAIT):
        async for event in result.events():
            events.append(event)
    await result.acomplete()

    completed = events[-1]
    assert isinstance(completed, CompletedEvent) and completed.success == result.completed
    chunks = [e for e in events if isinstance(e, ChunkEvent)]
    assert [c.chunk_index for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:  # each chunk right after its passing quick check
        quick = events[events.index(chunk) - 1]
        assert isinstance(quick, QuickCheckEvent) and quick.passed
        assert quick.chunk_index == chunk.chunk_index
    failed = [e for e in events if isinstance(e, QuickCheckEvent) and not e.passed]
    if failed:  # the model wrote more than 3 sentences
        assert len(chunks) == 3 and failed[0].chunk_index == 3
        assert len(result.streaming_failures) == 1 and not result.completed
        assert not any(isinstance(e, StreamingDoneEvent | FullValidationEvent) for e in events)
    else:
        done = next(e for e in events if isinstance(e, StreamingDoneEvent))
        final = next(e for e in events if isinstance(e, FullValidationEvent))
        assert final.passed and result.completed and result.full_text == done.full_text
        assert 1 <= len(chunks) <= 3
    assert chunks, "the model wrote nothing"
    assert_spaced_like_source(result.full_text, [c.text for c in chunks])
    assert req._count == 0  # the caller's requirement was not used by the validator
    assert live_stream_actors(session.backend.system) == {}


async def test_seed_astream_sample(session: MelleaSession) -> None:
    action = Instruction("Write a two-sentence summary of the water cycle.")
    req = MaxSentencesReq(limit=3)
    result = await stream_with_chunking(
        action, session.backend, session.ctx, requirements=[req], chunking="sentence"
    )
    async with asyncio.timeout(WAIT):
        chunks = [chunk async for chunk in result.astream()]
    await result.acomplete()
    assert 1 <= len(chunks) <= 3
    assert all(chunk.strip() == chunk and chunk for chunk in chunks)
    assert_spaced_like_source(result.full_text, chunks)


class MaxWords(Requirement):
    def __init__(self, limit: int) -> None:
        super().__init__(f"at most {limit} words")
        self.limit = limit
        self.count = 0

    async def stream_validate(
        self, chunk: str, *, backend: Backend, ctx: Context
    ) -> PartialValidationResult:
        self.count += 1
        if self.count > self.limit:
            return PartialValidationResult("fail", reason="too long")
        return PartialValidationResult("pass")


async def test_a_fail_cancels_the_real_generation(session: MelleaSession) -> None:
    result = await stream_with_chunking(
        Instruction("Write a long story about a dragon and a knight."),
        session.backend,
        session.ctx,
        requirements=[MaxWords(5)],
        chunking="word",
        model_options={"num_predict": 256},
    )
    async with asyncio.timeout(WAIT):
        words = [w async for w in result.astream()]
    await result.acomplete()
    assert len(words) == 5 and not result.completed
    assert len(result.streaming_failures) == 1
    log = session.backend.system.log
    cancelled = log.events(thunk=result.request_id, event="generation_cancelled")
    assert len(cancelled) == 1 and cancelled[0]["chunks"] < 256
    assert log.events(thunk=result.request_id, event="verdict_fail")


async def test_leaving_async_with_cancels_the_real_generation(session: MelleaSession) -> None:
    async with await stream_with_chunking(
        Instruction("Write a long story about a lighthouse keeper."),
        session.backend,
        session.ctx,
        chunking="word",
        model_options={"num_predict": 256},
    ) as result:
        async with asyncio.timeout(WAIT):
            async for _ in result.astream():
                break
    assert result.cancelled and not result.completed
    log = session.backend.system.log
    assert log.events(thunk=result.request_id, event="generation_cancelled")
    assert live_stream_actors(session.backend.system) == {}


def run_example(name: str, ollama_url: str) -> str:
    env = {**os.environ, "OLLAMA_HOST": ollama_url, "MELLEA_ACTORS_MODEL": LOCAL_MODEL}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc.stdout


def test_events_example_runs(ollama_url: str) -> None:
    out = run_example("06_streaming_validation_events.py", ollama_url)
    lines = out.splitlines()
    assert lines[0].startswith(" chunk[0]: ")
    assert re.fullmatch(r"completed=(True|False), failures=(0|1)", lines[-1])
    assert re.fullmatch(r" completed — success=(True|False)", lines[-2])
    success = lines[-2].endswith("True")
    assert lines[-1] == f"completed={success}, failures={0 if success else 1}"
    if success:
        assert " final: pass" in lines and any(" stream done — " in line for line in lines)
    else:
        assert any(line.startswith(" FAIL at chunk 3: ") for line in lines)


def test_astream_example_runs(ollama_url: str) -> None:
    out = run_example("07_streaming_validation_astream.py", ollama_url)
    assert out.strip(), "no chunk printed"
    assert out.endswith("\n")  # print(chunk) per chunk
