"""Mellea 0.8.0's streaming face — ``stream()``, ``Streamer``, ``EventStreamer``, per-requirement
chunking, ``mellea_actors.core.chunking`` — on the same engine as ``stream_with_chunking``,
against the scripted Ollama-protocol server.

Both ways of writing a streaming requirement are tested under both APIs: Mellea 0.7.0's
``stream_validate(chunk)`` override and 0.8.0's ``_stream_validate(chunk)``. Counting convention
as in test_streaming_scripted.py: "a fail on chunk k" is the 0-based chunk ``k``; exactly ``k``
chunks are delivered. Every wait is bounded; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from mellea_actors import MelleaSession
from mellea_actors.core import chunking as core_chunking
from mellea_actors.core.backend import Backend
from mellea_actors.core.base import Context
from mellea_actors.core.context_chain import SimpleContext
from mellea_actors.core.requirement import (
    PartialValidationResult,
    PartialValidationSummary,
    Requirement,
    ValidationResult,
    stream_validation_style,
)
from mellea_actors.errors import InvalidInputError, SingleReaderError, ValidatorError
from mellea_actors.stdlib import chunking as stdlib_chunking
from mellea_actors.stdlib.components import Instruction
from mellea_actors.stdlib.streaming import (
    ChunkEvent,
    CompletedEvent,
    ErrorEvent,
    EventStreamer,
    FullValidationEvent,
    QuickCheckEvent,
    Streamer,
    StreamEvent,
    StreamingDoneEvent,
    stream,
    stream_with_chunking,
)
from mellea_actors.testing import Script, ScriptedOllama
from tests.test_streaming_scripted import (
    SENTENCES,
    TEXT,
    WAIT,
    assert_nothing_left,
    long_text,
    of_type,
)


# -- requirements: the same judge, written the 0.7 way and the 0.8 way --------------------------
class _Judge(Requirement):
    """Says "pass" (or "fail" from its chunk ``fail_at`` on); records what it saw, per name."""

    seen: ClassVar[dict[str, list[str]]] = {}

    def __init__(
        self, name: str, *, fail_at: int | None = None, chunking: str | None = None
    ) -> None:
        super().__init__(f"judge {name}", chunking=chunking)
        self.name = name
        self.fail_at = fail_at
        self.count = 0  # per copy: stays 0 on the caller's object

    def judge(self, chunk: str) -> PartialValidationResult:
        _Judge.seen.setdefault(self.name, []).append(chunk)
        index = self.count
        self.count += 1
        if self.fail_at is not None and index >= self.fail_at:
            return PartialValidationResult("fail", reason=f"{self.name} rejects chunk {index}")
        return PartialValidationResult("pass", reason=f"{self.name} ok {index}")

    async def validate(
        self, backend: Backend, ctx: Context, *, format: Any = None, model_options: Any = None
    ) -> ValidationResult:
        return ValidationResult(True, reason=f"count={self.count}")


class Judge08(_Judge):
    """Mellea 0.8.0's way: override ``_stream_validate``."""

    async def _stream_validate(
        self, chunk: str, *, backend: Backend, ctx: Context
    ) -> PartialValidationResult:
        return self.judge(chunk)


class Judge07(_Judge):
    """Mellea 0.7.0's way (the seed's): override ``stream_validate``, no ``flush``."""

    async def stream_validate(  # type: ignore[override]
        self, chunk: str, *, backend: Backend, ctx: Context
    ) -> PartialValidationResult:
        return self.judge(chunk)


class Driver08(_Judge):
    """Overrides the 0.8 driver itself (``flush`` and a list of results)."""

    flushes: ClassVar[list[bool]] = []

    async def stream_validate(  # type: ignore[override]
        self, delta: str, *, backend: Backend, ctx: Context, flush: bool = False
    ) -> list[PartialValidationResult]:
        Driver08.flushes.append(flush)
        return [self.judge(delta)]


class FinalFails(Judge08):
    async def validate(
        self, backend: Backend, ctx: Context, *, format: Any = None, model_options: Any = None
    ) -> ValidationResult:
        return ValidationResult(False, reason="not good enough")


class Raises08(Judge08):
    async def _stream_validate(
        self, chunk: str, *, backend: Backend, ctx: Context
    ) -> PartialValidationResult:
        if self.count == 1:
            raise KeyError("boom")
        return self.judge(chunk)


STYLES = [Judge08, Judge07]


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    _Judge.seen.clear()
    Driver08.flushes.clear()
    yield


# -- helpers ----------------------------------------------------------------------------------
async def start(session: MelleaSession, **kwargs: Any) -> Any:
    return await stream(Instruction("x"), session.backend, session.ctx, **kwargs)


async def listed(iterator: Any) -> list[Any]:
    """Everything ``iterator`` yields (a Streamer, an EventStreamer, a view), bounded."""
    async with asyncio.timeout(WAIT):
        return [item async for item in iterator]


async def disconnected(scripted: ScriptedOllama) -> None:
    record = await asyncio.to_thread(scripted.wait_for_disconnect, -1, WAIT)
    assert record.disconnected_at is not None


# -- stream(): the chunk face -------------------------------------------------------------------
@pytest.mark.parametrize("style", STYLES, ids=lambda c: c.__name__)
async def test_fail_on_the_third_chunk_delivers_two_and_disconnects(
    scripted: ScriptedOllama, scripted_session: MelleaSession, style: type[_Judge]
) -> None:
    text = long_text(2000)  # ~16 s at this pace: only a cancel ends it early
    scripted.enqueue(Script.from_text(text, delay=0.002))
    req = style("limit", fail_at=2)
    async with await start(scripted_session, requirements=[req], chunking="sentence") as s:
        assert isinstance(s, Streamer)
        chunks = await listed(s)
        assert chunks == ["Sentence number 0.", "Sentence number 1."]
        assert s.failed_early and not s.completed_normally
        assert s.failure_reason == "Streaming validation failed: limit rejects chunk 2"
        [(failed_req, verdict)] = s.streaming_failures
        assert isinstance(failed_req, style) and failed_req is not req and req.count == 0
        assert verdict.success == "fail" and verdict.reason == "limit rejects chunk 2"
        assert s.full_text == "Sentence number 0. Sentence number 1."
        assert s.mot is None and s.final_validations == []
    await disconnected(scripted)
    # judged in order (a chunk found before the cancel may be judged too: never delivered)
    assert _Judge.seen["limit"][:3] == [f"Sentence number {i}." for i in range(3)]
    await assert_nothing_left(scripted_session)


@pytest.mark.parametrize("style", STYLES, ids=lambda c: c.__name__)
async def test_natural_end_with_either_style(
    scripted: ScriptedOllama, scripted_session: MelleaSession, style: type[_Judge]
) -> None:
    scripted.enqueue(Script.from_text(TEXT, delay=0.001))
    async with await start(scripted_session, requirements=[style("a")], chunking="sentence") as s:
        assert await listed(s) == SENTENCES
    assert s.completed_normally and not s.failed_early and s.failure_reason is None
    assert s.full_text == TEXT
    assert [v.reason for v in s.final_validations] == ["count=5"]
    assert s.mot is not None and s.mot.is_computed() and s.mot.value == TEXT
    assert s.streaming_id and s.streaming_id == s.mot.request_id
    assert _Judge.seen["a"] == SENTENCES
    await assert_nothing_left(scripted_session)


async def test_default_chunking_is_the_raw_text(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script.from_text(TEXT, delay=0.001))
    async with await start(scripted_session, requirements=[Judge08("raw")]) as s:
        chunks = await listed(s)
    assert "".join(chunks) == TEXT and all(chunks)  # reads of the generation, not sentences
    assert _Judge.seen["raw"] == chunks
    assert s.completed_normally and s.full_text == TEXT


async def test_break_inside_async_with_cancels_the_generation(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script.from_text(long_text(2000), delay=0.002))
    got: list[str] = []
    async with await start(scripted_session, requirements=[Judge08("r")], chunking="sentence") as s:
        async with asyncio.timeout(WAIT):
            async for chunk in s:
                got.append(chunk)
                assert s.full_text.endswith(chunk)  # the text the consumer has taken, no more
                if len(got) == 2:
                    break
    assert got == ["Sentence number 0.", "Sentence number 1."]
    await disconnected(scripted)
    # as in Mellea 0.8.0: the consumer left before the end, so nothing "completed"
    assert not s.completed_normally and not s.failed_early and s.mot is None
    assert s.full_text == "Sentence number 0. Sentence number 1."
    assert [c async for c in s] == []  # closed: iterating again ends at once
    await s.aclose()  # idempotent
    await assert_nothing_left(scripted_session)


async def test_cancelling_the_consuming_task_cancels_the_generation(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script.from_text(long_text(20), stall_after=4))  # then silent
    s = await start(scripted_session, chunking="sentence")
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in s:
            first.set()

    task = asyncio.create_task(consume())
    async with asyncio.timeout(WAIT):
        await first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await disconnected(scripted)


async def test_dropping_an_unclosed_streamer_cancels_the_generation(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script.from_text(long_text(2000), delay=0.002))
    s = await start(scripted_session, chunking="sentence")
    async with asyncio.timeout(WAIT):
        assert await s.__anext__() == "Sentence number 0."
    del s
    gc.collect()
    await disconnected(scripted)


async def test_two_loops_at_once_raise(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script.from_text(long_text(20), stall_after=2))
    async with await start(scripted_session, chunking="sentence") as s:
        waiting = asyncio.create_task(s.__anext__())
        await asyncio.sleep(0)  # one turn: the first loop runs until it waits for a chunk
        assert not waiting.done()
        with pytest.raises(SingleReaderError):
            await s.__anext__()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting


async def test_an_error_ends_the_loop_with_the_error(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script.from_text(TEXT, delay=0.001))
    got: list[str] = []
    with pytest.raises(ValidatorError, match="boom"):
        async with await start(
            scripted_session, requirements=[Raises08("x")], chunking="sentence"
        ) as s:
            async with asyncio.timeout(WAIT):
                async for chunk in s:
                    got.append(chunk)
    assert got == SENTENCES[:1]
    # a raise is an error, not a failed requirement (as in Mellea 0.8.0)
    assert not s.failed_early and s.streaming_failures == [] and not s.completed_normally
    assert s.full_text == SENTENCES[0]


async def test_unknown_alias_raises_before_any_request(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    with pytest.raises(ValueError, match="'sentences'"):
        await start(scripted_session, chunking="sentences")
    assert scripted.requests == []


# -- stream(as_events=True) ---------------------------------------------------------------------
async def test_events_in_order_at_a_natural_end(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script.from_text(TEXT, delay=0.001))
    async with await start(
        scripted_session, requirements=[Judge08("a")], chunking="sentence", as_events=True
    ) as s:
        assert isinstance(s, EventStreamer)
        events = await listed(s)
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["QuickCheckEvent", "ChunkEvent"] * 5 + [
        "StreamingDoneEvent",
        "FullValidationEvent",
        "CompletedEvent",
    ]
    for i in range(5):
        quick, chunk = events[2 * i], events[2 * i + 1]
        assert quick.chunk_index == chunk.chunk_index == i and quick.passed
        [summary] = quick.results
        assert isinstance(summary, PartialValidationSummary)  # 0.8's result type
        assert summary.success == "pass" and summary.failure is None
        assert [r.reason for r in summary.results] == [f"a ok {i}"]
        assert chunk.text == SENTENCES[i] and chunk.attempt == 1
    done, full, completed = events[-3:]
    assert done.full_text == TEXT and full.passed
    assert completed.success and completed.full_text == TEXT and completed.attempts_used == 1
    assert s.completed_normally and s.full_text == TEXT and s.mot is not None


async def test_events_of_a_fail(scripted: ScriptedOllama, scripted_session: MelleaSession) -> None:
    scripted.enqueue(Script.from_text(long_text(2000), delay=0.002))
    async with await start(
        scripted_session,
        requirements=[Judge07("limit", fail_at=2), Judge08("other")],
        chunking="sentence",
        as_events=True,
    ) as s:
        events = await listed(s)
    assert [type(e) for e in events[-2:]] == [QuickCheckEvent, CompletedEvent]
    quick = events[-2]
    assert not quick.passed and quick.chunk_index == 2
    assert quick.results[0].success == "fail" and quick.results[0].reason == "limit rejects chunk 2"
    assert not events[-1].success
    assert len(of_type(events, ChunkEvent)) == 2
    assert (
        s.failed_early and s.failure_reason == "Streaming validation failed: limit rejects chunk 2"
    )
    assert [getattr(r, "name", None) for r, _ in s.streaming_failures] == ["limit"]
    await disconnected(scripted)


async def test_a_failed_final_validation_still_completes_successfully(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script.from_text(TEXT))
    async with await start(
        scripted_session, requirements=[FinalFails("f")], chunking="sentence", as_events=True
    ) as s:
        events = await listed(s)
    full = of_type(events, FullValidationEvent)[0]
    assert not full.passed
    assert events[-1].success  # 0.8: "completed normally", the final validations aside
    assert s.completed_normally and [bool(v) for v in s.final_validations] == [False]
    # the 0.7 API keeps its own meaning of success
    scripted.enqueue(Script.from_text(TEXT))
    result = await stream_with_chunking(
        Instruction("x"),
        scripted_session.backend,
        scripted_session.ctx,
        requirements=[FinalFails("g")],
    )
    old = await listed(result.events())
    assert not old[-1].success and not result.completed


async def test_events_of_an_error_then_the_error(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script.from_text(TEXT, delay=0.001))
    got: list[StreamEvent] = []
    with pytest.raises(ValidatorError, match="boom"):
        async with await start(
            scripted_session, requirements=[Raises08("x")], chunking="sentence", as_events=True
        ) as s:
            async with asyncio.timeout(WAIT):
                async for event in s:
                    got.append(event)
    assert [type(e) for e in got[-2:]] == [ErrorEvent, CompletedEvent]
    assert got[-2].exception_type == "ValidatorError" and not got[-1].success


async def test_break_out_of_the_events_cancels_the_generation(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script.from_text(long_text(2000), delay=0.002))
    async with await start(scripted_session, chunking="sentence", as_events=True) as s:
        async with asyncio.timeout(WAIT):
            async for event in s:
                if isinstance(event, ChunkEvent) and event.chunk_index == 1:
                    break
    await disconnected(scripted)
    rest = await listed(s)  # its own iterator: the cancelled run's last events
    assert isinstance(rest[-1], CompletedEvent) and not rest[-1].success
    assert not s.completed_normally


# -- per-requirement chunking -------------------------------------------------------------------
async def test_each_requirement_chunks_at_its_own_granularity(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    text = "One two three. Four five six. Seven"
    scripted.enqueue(Script(tokens=list(text), delay=0.0005))  # one character per token
    sentences = Judge08("sentences", chunking="sentence")
    words = Judge07("words", chunking="word")  # a 0.7-style judge re-chunks the same way
    async with await start(scripted_session, requirements=[sentences, words], as_events=True) as s:
        events = await listed(s)
    assert _Judge.seen["sentences"] == ["One two three.", "Four five six.", "Seven"]
    assert _Judge.seen["words"] == text.split()
    deltas = of_type(events, ChunkEvent)
    assert "".join(e.text for e in deltas) == text
    # the residual round (the fragments the chunkers held back): no ChunkEvent of its own
    quick = of_type(events, QuickCheckEvent)
    last = quick[-1]
    assert last.chunk_index == len(deltas) and last.passed
    assert [len(r.results) for r in last.results] == [1, 1]  # "Seven" for each
    assert [type(e) for e in events[-3:]] == [
        StreamingDoneEvent,
        FullValidationEvent,
        CompletedEvent,
    ]
    assert s.completed_normally and s.full_text == text


async def test_a_word_requirement_fails_mid_sentence(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    class NoBanned(Requirement):
        def __init__(self) -> None:
            super().__init__("no banned word", chunking="word")

        async def _stream_validate(
            self, chunk: str, *, backend: Backend, ctx: Context
        ) -> PartialValidationResult:
            if chunk.strip(".,").lower() == "blockchain":
                return PartialValidationResult("fail", reason=f"banned word: {chunk!r}")
            return PartialValidationResult("unknown")

    text = "The ocean is wide. Its blockchain is deep. " + long_text(2000)
    scripted.enqueue(Script.from_text(text, delay=0.002))
    async with await start(scripted_session, requirements=[NoBanned()]) as s:
        chunks = await listed(s)
    delivered = "".join(chunks)  # raw deltas (reads), the one completing "blockchain" withheld
    # the reads before the one completing "blockchain" (how many: up to the network)
    assert "The ocean is wide. Its ".startswith(delivered)
    assert s.failed_early and s.failure_reason == (
        "Streaming validation failed: banned word: 'blockchain'"
    )
    await disconnected(scripted)


async def test_a_requirement_chunker_sees_the_source_text_not_joined_chunks(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    # The stream's sentence chunks drop the separators; the word-level requirement is fed the
    # source text, so "delta!" and "Epsilon" stay apart (joined chunks would give "delta!Epsilon").
    scripted.enqueue(Script.from_text(TEXT))
    async with await start(
        scripted_session, requirements=[Judge08("w", chunking="word")], chunking="sentence"
    ) as s:
        assert await listed(s) == SENTENCES
    assert _Judge.seen["w"] == TEXT.split()


async def test_a_fail_on_the_held_back_fragment_is_a_fail_on_flush(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script.from_text("One. Two. Three without a period"))
    req = Judge08("s", fail_at=2, chunking="sentence")
    async with await start(scripted_session, requirements=[req], as_events=True) as s:
        events = await listed(s)
    assert "".join(e.text for e in of_type(events, ChunkEvent)) == (
        "One. Two. Three without a period"
    )  # every raw delta was delivered; the residual round failed
    assert of_type(events, StreamingDoneEvent) == []
    assert s.failed_early and not s.completed_normally
    assert s.failure_reason == "Streaming validation failed on flush: s rejects chunk 2"


async def test_a_stream_flush_chunk_flushes_the_requirement_too(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script.from_text("Alpha beta. Gamma delta"))
    req = Judge08("w", chunking="word")
    async with await start(scripted_session, requirements=[req], chunking="sentence") as s:
        assert await listed(s) == ["Alpha beta.", "Gamma delta"]
    assert _Judge.seen["w"] == ["Alpha", "beta.", "Gamma", "delta"]


async def test_a_driver_override_is_called_with_flush(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script.from_text("One. Two. Three"))
    req = Driver08("d")
    assert stream_validation_style(req) == "driver"
    async with await start(scripted_session, requirements=[req], chunking="sentence") as s:
        assert await listed(s) == ["One.", "Two.", "Three"]
    assert Driver08.flushes == [False, False, True]


# -- 0.8-style requirements under stream_with_chunking ------------------------------------------
async def test_a_mellea08_requirement_under_stream_with_chunking(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    text = long_text(2000)
    scripted.enqueue(Script.from_text(text, delay=0.002))
    result = await stream_with_chunking(
        Instruction("x"),
        scripted_session.backend,
        scripted_session.ctx,
        requirements=[Judge08("limit", fail_at=2)],
    )
    async with asyncio.timeout(WAIT):
        events = [e async for e in result.events()]
    await result.acomplete()
    assert [e.text for e in of_type(events, ChunkEvent)] == [
        "Sentence number 0.",
        "Sentence number 1.",
    ]
    quick = of_type(events, QuickCheckEvent)
    assert all(isinstance(r, PartialValidationResult) for q in quick for r in q.results)  # 0.7
    assert quick[-1].results[0].reason == "limit rejects chunk 2"
    [(failed, verdict)] = result.streaming_failures
    assert isinstance(failed, Judge08) and verdict.reason == "limit rejects chunk 2"
    await disconnected(scripted)


async def test_own_chunking_under_stream_with_chunking_hides_the_residual_round(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script.from_text(TEXT))
    result = await stream_with_chunking(
        Instruction("x"),
        scripted_session.backend,
        scripted_session.ctx,
        requirements=[Judge08("w", chunking="word")],
    )
    events, chunks = await asyncio.gather(listed(result.events()), listed(result.astream()))
    await result.acomplete()
    assert chunks == SENTENCES and all(type(c) is str for c in chunks)
    assert _Judge.seen["w"] == TEXT.split()  # "kappa." was held back, then judged
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["QuickCheckEvent", "ChunkEvent"] * 5 + [  # 0.7's order, nothing extra
        "StreamingDoneEvent",
        "FullValidationEvent",
        "CompletedEvent",
    ]
    assert result.completed


# -- isolation ----------------------------------------------------------------------------------
async def test_a_requirement_with_a_lock_and_a_shared_list(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    class Locking(Requirement):
        def __init__(self, lock: threading.Lock, log: list[str]) -> None:
            super().__init__("locking", chunking="sentence")
            self.lock = lock
            self.log = log
            self.count = 0

        async def _stream_validate(
            self, chunk: str, *, backend: Backend, ctx: Context
        ) -> PartialValidationResult:
            with self.lock:
                self.log.append(chunk)
            self.count += 1
            return PartialValidationResult("pass")

        async def validate(self, *args: Any, **kwargs: Any) -> ValidationResult:
            return ValidationResult(True, reason=f"count={self.count}")

    lock, log = threading.Lock(), []
    req = Locking(lock, log)
    scripted.enqueue(Script.from_text(TEXT))
    async with await start(scripted_session, requirements=[req]) as s:
        await listed(s)
    assert log == SENTENCES  # the caller's list, through the caller's lock
    assert [v.reason for v in s.final_validations] == ["count=5"]
    assert req.count == 0 and req.lock is lock and "_chunker" not in vars(req)
    copied = copy.copy(req)
    assert copied.lock is lock and copied.log is log and copied.chunking is req.chunking


# -- the requirement API and core.chunking, directly ---------------------------------------------
def test_chunking_names_are_the_07_objects() -> None:
    assert core_chunking.ChunkingStrategy is stdlib_chunking.ChunkingStrategy
    assert core_chunking.SentenceChunking is stdlib_chunking.SentenceChunker
    assert core_chunking.WordChunking is stdlib_chunking.WordChunker
    assert core_chunking.ParagraphChunking is stdlib_chunking.ParagraphChunker
    assert core_chunking.resolve_chunking_strategy(None) is None
    assert isinstance(core_chunking.resolve_chunking_strategy("word"), core_chunking.WordChunking)
    with pytest.raises(ValueError, match="'nope'"):
        core_chunking.resolve_chunking_strategy("nope")


@pytest.mark.parametrize("cut", [1, 2, 3, 7])
def test_chunker_gives_the_same_chunks_in_any_slicing(cut: int) -> None:
    text = "Dr. Smith arrived. It was 3.14 p.m. and late! Then\n\nsilence"
    whole = core_chunking.SentenceChunking()
    expected = whole.split(text) + whole.flush(text)
    chunker = core_chunking.Chunker(core_chunking.SentenceChunking())
    got: list[str] = []
    for i in range(0, len(text), cut):
        got += chunker.feed(text[i : i + cut])
    got += chunker.flush()
    assert got == expected and chunker.flush() == expected[-1:]  # flush: the same list again


def test_chunker_checks_the_strategy() -> None:
    class Mutating(core_chunking.ChunkingStrategy):
        def split(self, text: str) -> list[str]:
            return [w.upper() for w in text.split()[:-1]]

    chunker = core_chunking.Chunker(Mutating())
    with pytest.raises(InvalidInputError, match="verbatim"):
        chunker.feed("one two three")


async def test_stream_validate_answers_each_version_its_way() -> None:
    backend: Any = None
    ctx = SimpleContext()
    plain = Requirement("x")
    assert (await plain.stream_validate("A.", backend=backend, ctx=ctx)).success == "unknown"
    listed = await plain.stream_validate("A.", backend=backend, ctx=ctx, flush=False)
    assert [r.success for r in listed] == ["unknown"]
    assert [
        r.success for r in await plain.stream_validate("", backend=backend, ctx=ctx, flush=True)
    ] == ["unknown"]

    words = Judge08("direct", chunking="word")
    first = await words.stream_validate("one tw", backend=backend, ctx=ctx, flush=False)
    assert [r.reason for r in first] == ["direct ok 0"]
    rest = await words.stream_validate("o three", backend=backend, ctx=ctx, flush=True)
    assert [r.reason for r in rest] == ["direct ok 1", "direct ok 2"]
    assert _Judge.seen["direct"] == ["one", "two", "three"]
    # without flush (0.7's call): one result, combined
    again = Judge08("again", chunking="word", fail_at=1)
    one = await again.stream_validate("a b c ", backend=backend, ctx=ctx)
    assert isinstance(one, PartialValidationResult) and one.reason == "again rejects chunk 1"
    assert await again.stream_flush(backend=backend, ctx=ctx) == []  # nothing held back

    summary = PartialValidationSummary.from_results(rest)
    assert summary.success == "pass" and summary.failure is None and summary.reason is None
    assert PartialValidationSummary.from_results([]).success == "unknown"


def test_styles_are_told_apart() -> None:
    assert stream_validation_style(Requirement("x")) == "mellea08"
    assert stream_validation_style(Judge08("a")) == "mellea08"
    assert stream_validation_style(Judge07("a")) == "mellea07"
    assert stream_validation_style(Driver08("a")) == "driver"


def test_requirement_chunking_argument() -> None:
    assert Requirement("x").chunking is None
    assert isinstance(
        Requirement("x", chunking="paragraph").chunking, core_chunking.ParagraphChunking
    )
    strategy = core_chunking.WordChunking()
    assert Requirement("x", chunking=strategy).chunking is strategy
    with pytest.raises(InvalidInputError, match="'lines'"):
        Requirement("x", chunking="lines")
