"""stream_with_chunking on validator actors, against the scripted Ollama-protocol server.

Deterministic token sequences and faults. Waits are on events and conditions, each bounded; a
validator may sleep on purpose (slowness is the behaviour under test).

Counting convention for an early fail: "a fail on chunk k" means the chunk with 0-based index
``k`` got the "fail" verdict; it is not delivered, so exactly ``k`` chunks (0 … k-1) are.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from mellea_actors import MelleaSession, start_session
from mellea_actors.core.backend import Backend
from mellea_actors.core.base import Context
from mellea_actors.core.requirement import (
    PartialValidationResult,
    Requirement,
    ValidationResult,
)
from mellea_actors.errors import (
    AskTimeoutError,
    BackendError,
    GenerationCancelledError,
    InvalidInputError,
    RuntimeClosedError,
    SingleReaderError,
)
from mellea_actors.runtime.system import ActorSystem
from mellea_actors.stdlib.components import Instruction
from mellea_actors.stdlib.streaming import (
    ChunkEvent,
    ChunkingStrategy,
    CompletedEvent,
    ErrorEvent,
    FullValidationEvent,
    InvalidVerdictError,
    QuickCheckEvent,
    StreamChunkingResult,
    StreamEvent,
    StreamingDoneEvent,
    ValidatorError,
    ValidatorTimeoutError,
    live_stream_actors,
    stream_with_chunking,
)
from mellea_actors.testing import Script, ScriptedOllama
from tests.conftest import assert_spaced_like_source

WAIT = 10.0  # bound of every wait in these tests
TEXT = "Alpha beta.  Gamma delta!\n\nEpsilon zeta? Eta (theta). Iota kappa.  "
SENTENCES = ["Alpha beta.", "Gamma delta!", "Epsilon zeta?", "Eta (theta).", "Iota kappa."]


def long_text(n: int) -> str:
    return " ".join(f"Sentence number {i}." for i in range(n))


# -- requirements used by the tests -----------------------------------------------------------
# State shared between the caller and the validators' copies lives at class level (each
# validator holds a shallow copy: rebinding an instance attribute stays private to it).
class Recording(Requirement):
    """Says "pass" (or "fail" from chunk ``fail_at`` on); records what it saw."""

    seen: dict[str, list[str]] = {}
    validate_calls: dict[str, int] = {}

    def __init__(self, name: str, *, fail_at: int | None = None, delay: float = 0.0) -> None:
        super().__init__(f"recording {name}")
        self.name = name
        self.fail_at = fail_at
        self.delay = delay
        self.count = 0  # per copy: must stay 0 on the caller's object

    async def stream_validate(
        self, chunk: str, *, backend: Backend, ctx: Context
    ) -> PartialValidationResult:
        if self.delay:
            await asyncio.sleep(self.delay)
        Recording.seen.setdefault(self.name, []).append(chunk)
        index = self.count
        self.count += 1
        if self.fail_at is not None and index >= self.fail_at:
            return PartialValidationResult("fail", reason=f"{self.name} rejects chunk {index}")
        return PartialValidationResult("pass", reason=f"{self.name} ok {index}")

    async def validate(
        self, backend: Backend, ctx: Context, *, format: Any = None, model_options: Any = None
    ) -> ValidationResult:
        Recording.validate_calls[self.name] = Recording.validate_calls.get(self.name, 0) + 1
        return ValidationResult(True, reason=f"count={self.count}")


class FinalFails(Recording):
    async def validate(
        self, backend: Backend, ctx: Context, *, format: Any = None, model_options: Any = None
    ) -> ValidationResult:
        await super().validate(backend, ctx)
        return ValidationResult(False, reason="not good enough")


class Faulty(Requirement):
    """Misbehaves on chunk ``at``: raises, answers a non-verdict, or hangs."""

    cancelled: list[int] = []
    hanging = threading.Event()

    def __init__(self, mode: str, at: int = 1) -> None:
        super().__init__(f"faulty {mode}")
        self.mode = mode
        self.at = at
        self.count = 0

    async def stream_validate(self, chunk: str, *, backend: Backend, ctx: Context) -> Any:
        index = self.count
        self.count += 1
        if index == self.at:
            if self.mode == "raise":
                raise KeyError("boom")
            if self.mode == "invalid":
                return "pass"
            if self.mode == "hang":
                Faulty.hanging.set()
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    Faulty.cancelled.append(index)
                    raise
        return PartialValidationResult("unknown")

    async def validate(
        self, backend: Backend, ctx: Context, *, format: Any = None, model_options: Any = None
    ) -> ValidationResult:
        if self.mode == "final-raise":
            raise RuntimeError("final boom")
        return ValidationResult(True)


@pytest.fixture(autouse=True)
def _reset_recordings() -> Iterator[None]:
    Recording.seen.clear()
    Recording.validate_calls.clear()
    Faulty.cancelled.clear()
    Faulty.hanging.clear()
    yield


# -- helpers ----------------------------------------------------------------------------------
async def start_stream(session: MelleaSession, **kwargs: Any) -> StreamChunkingResult:
    """``stream_with_chunking`` of the instruction "x" on ``session``'s backend and context."""
    return await stream_with_chunking(Instruction("x"), session.backend, session.ctx, **kwargs)


async def collect(result: StreamChunkingResult) -> list[StreamEvent]:
    async with asyncio.timeout(WAIT):
        return [event async for event in result.events()]


async def drain(result: StreamChunkingResult) -> list[str]:
    async with asyncio.timeout(WAIT):
        return [chunk async for chunk in result.astream()]


def error_of(events: list[StreamEvent]) -> ErrorEvent:
    """The ErrorEvent, which must come right before the final CompletedEvent."""
    event = events[-2]
    assert isinstance(event, ErrorEvent), events[-2:]
    return event


def completed_of(events: list[StreamEvent]) -> CompletedEvent:
    """The CompletedEvent, which must be the last event."""
    event = events[-1]
    assert isinstance(event, CompletedEvent), events[-1]
    return event


def of_type(events: list[StreamEvent], cls: type[StreamEvent]) -> list[Any]:
    return [e for e in events if isinstance(e, cls)]


async def stream_tasks(system: ActorSystem) -> list[str]:
    """Names of the tasks of stream and validator actors still on the runtime loop."""

    async def names() -> list[str]:
        return [
            t.get_name()
            for t in asyncio.all_tasks()
            if not t.done() and t.get_name().startswith(("stream-", "validator-"))
        ]

    return await asyncio.wrap_future(system.loop.run_coroutine(names()))


async def assert_nothing_left(session: MelleaSession) -> None:
    system = session.backend.system
    assert await stream_tasks(system) == []  # (also a round trip through the runtime loop)
    assert live_stream_actors(system) == {}
    assert system.live_thunks() == []


def request_events(session: MelleaSession, result: StreamChunkingResult) -> list[dict[str, Any]]:
    return session.backend.system.log.events(thunk=result.request_id)


# -- natural end ------------------------------------------------------------------------------
async def test_natural_end_with_a_passing_requirement(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script.from_text(TEXT, delay=0.002))
    req = Recording("a")
    result = await stream_with_chunking(
        Instruction("Write five sentences."),
        scripted_session.backend,
        scripted_session.ctx,
        requirements=[req],
    )
    assert not result.completed
    events, chunks = await asyncio.gather(collect(result), drain(result))
    await result.acomplete()

    assert chunks == SENTENCES
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["QuickCheckEvent", "ChunkEvent"] * 5 + [
        "StreamingDoneEvent",
        "FullValidationEvent",
        "CompletedEvent",
    ]
    for i in range(5):
        quick, chunk = events[2 * i], events[2 * i + 1]
        assert isinstance(quick, QuickCheckEvent) and isinstance(chunk, ChunkEvent)
        assert quick.chunk_index == chunk.chunk_index == i
        assert quick.passed and quick.attempt == chunk.attempt == 1
        assert [r.success for r in quick.results] == ["pass"]
        assert chunk.text == SENTENCES[i]
    done, full, completed = events[-3:]
    assert isinstance(done, StreamingDoneEvent) and done.full_text == TEXT
    assert isinstance(full, FullValidationEvent) and full.passed
    assert [r.reason for r in full.results] == ["count=5"]  # the validator's own copy
    assert isinstance(completed, CompletedEvent)
    assert completed.success and completed.full_text == TEXT and completed.attempts_used == 1
    assert all(a.timestamp <= b.timestamp for a, b in itertools.pairwise(events))

    assert result.completed
    assert result.full_text == TEXT  # original spacing, trailing whitespace included
    assert_spaced_like_source(result.full_text, chunks)
    assert Recording.validate_calls == {"a": 1}
    assert Recording.seen["a"] == SENTENCES
    assert result.streaming_failures == []
    assert [bool(v) for v in result.final_validations] == [True]
    assert result.as_thunk.value == TEXT and result.as_thunk.is_computed()
    assert req.count == 0 and req.fail_at is None  # the caller's object is untouched
    await assert_nothing_left(scripted_session)


async def test_no_requirements_delivers_every_chunk_without_checks(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script.from_text(TEXT))
    result = await stream_with_chunking(
        Instruction("x"), scripted_session.backend, scripted_session.ctx
    )
    events = await collect(result)
    await result.acomplete()
    assert [e.text for e in of_type(events, ChunkEvent)] == SENTENCES
    assert of_type(events, QuickCheckEvent) == [] and of_type(events, FullValidationEvent) == []
    assert isinstance(events[-2], StreamingDoneEvent) and isinstance(events[-1], CompletedEvent)
    assert result.completed and completed_of(events).success and result.final_validations == []
    await assert_nothing_left(scripted_session)


async def test_word_chunks_across_token_boundaries(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    text = "  split across\ttokens,  one\ncharacter at a time  "
    scripted.enqueue(Script(tokens=list(text)))  # every token is one character
    req = Recording("w")
    result = await start_stream(
        scripted_session,
        requirements=[req],
        chunking="word",
    )
    chunks = await drain(result)
    await result.acomplete()
    assert chunks == text.split() == Recording.seen["w"]
    assert result.full_text == text


async def test_completed_is_false_until_the_end_and_after_a_failed_final_validation(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script.from_text(TEXT, delay=0.01))
    result = await start_stream(
        scripted_session,
        requirements=[Recording("ok"), FinalFails("final")],
    )
    states = []
    async with asyncio.timeout(WAIT):
        async for event in result.events():
            states.append((type(event).__name__, result.completed, result.done()))
    await result.acomplete()  # a failed final validation is no exception
    assert all(not completed for _, completed, _ in states)
    assert states[-1][0] == "CompletedEvent"
    assert not result.completed
    assert [bool(v) for v in result.final_validations] == [True, False]
    assert Recording.validate_calls == {"ok": 1, "final": 1}
    assert result.full_text == TEXT  # everything was delivered
    assert result.streaming_failures == []


# -- early fail -------------------------------------------------------------------------------
async def test_fail_on_chunk_k_stops_generation_and_delivers_exactly_k_chunks(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    k = 3
    text = long_text(2000)  # ~16 s at this pace: only a cancel ends it early
    scripted.enqueue(Script.from_text(text, delay=0.002))
    req = Recording("limit", fail_at=k)
    other = Recording("other")
    result = await start_stream(
        scripted_session,
        requirements=[req, other],
    )
    events, chunks = await asyncio.gather(collect(result), drain(result))
    await result.acomplete()  # a "fail" is not an exception

    expected = [f"Sentence number {i}." for i in range(k)]
    assert chunks == expected
    assert [e.text for e in of_type(events, ChunkEvent)] == expected
    quick = of_type(events, QuickCheckEvent)
    assert [q.passed for q in quick] == [True] * k + [False]
    assert quick[-1].chunk_index == k
    assert quick[-1].results[0].success == "fail"
    assert [type(e) for e in events[-2:]] == [QuickCheckEvent, CompletedEvent]
    assert not completed_of(events).success
    assert of_type(events, FullValidationEvent) == []
    assert of_type(events, StreamingDoneEvent) == []
    assert of_type(events, ErrorEvent) == []

    assert not result.completed
    assert len(result.streaming_failures) == 1
    failed_req, verdict = result.streaming_failures[0]
    assert isinstance(failed_req, Recording) and failed_req.name == "limit"
    assert failed_req is not req and req.count == 0  # the validator's copy, not the caller's
    assert verdict.success == "fail" and verdict.reason == f"limit rejects chunk {k}"
    assert result.final_validations == [] and Recording.validate_calls == {}
    assert result.full_text == text[: text.index(expected[-1]) + len(expected[-1])]

    record = await asyncio.to_thread(scripted.wait_for_disconnect, -1, WAIT)
    assert record.disconnected_at is not None
    assert record.tokens_sent < len(Script.from_text(text).tokens)
    records = request_events(scripted_session, result)
    fail = next(r for r in records if r["event"] == "verdict_fail")
    assert fail["actor"] == f"validator-{result.request_id}-0"
    assert fail["kind"] == "validator"
    assert fail["parent"] == f"stream-{result.request_id}"
    assert fail["chunk_index"] == k
    assert any(r["event"] == "generation_cancelled" for r in records)
    await assert_nothing_left(scripted_session)


async def test_no_chunk_after_the_failing_one_even_if_already_generated(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    # The whole text is generated at once; validation is slower than generation.
    scripted.enqueue(Script.from_text(long_text(200)))
    result = await start_stream(
        scripted_session,
        requirements=[Recording("slow-limit", fail_at=2, delay=0.02)],
    )
    events, chunks = await asyncio.gather(collect(result), drain(result))
    record = await asyncio.to_thread(scripted.wait_for_requests, 1, WAIT, finished=True)
    assert record[0].outcome == "completed"  # generation ended long before the fail
    assert chunks == ["Sentence number 0.", "Sentence number 1."]
    assert len(of_type(events, ChunkEvent)) == 2
    assert Recording.seen["slow-limit"] == [f"Sentence number {i}." for i in range(3)]
    assert result.full_text == "Sentence number 0. Sentence number 1."
    assert not result.completed
    await assert_nothing_left(scripted_session)


async def test_fail_order_does_not_depend_on_which_validator_answers_first(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    # The fast validator fails chunk 3 long before the slow one has cleared chunks 0-2: the
    # generation stops at once, and chunks 0-2 are still delivered once the slow one cleared them.
    scripted.enqueue(Script.from_text(long_text(2000), delay=0.002))
    result = await start_stream(
        scripted_session,
        requirements=[Recording("slow", delay=0.2), Recording("fast", fail_at=3)],
    )
    events = await collect(result)
    await result.acomplete()
    delivered = of_type(events, ChunkEvent)
    assert [e.text for e in delivered] == [f"Sentence number {i}." for i in range(3)]
    assert Recording.seen["fast"] == [f"Sentence number {i}." for i in range(4)]
    quick = of_type(events, QuickCheckEvent)[-1]
    assert quick.chunk_index == 3 and not quick.passed
    assert [r.success for r in quick.results] == ["unknown", "fail"]  # slow never judged it
    assert [type(e) for e in events[-2:]] == [QuickCheckEvent, CompletedEvent]
    assert [getattr(f[0], "name", None) for f in result.streaming_failures] == ["fast"]
    records = request_events(scripted_session, result)
    cancelled = next(r for r in records if r["event"] == "generation_cancelled")
    assert cancelled["ts"] < delivered[0].timestamp  # stopped before anything was delivered
    await assert_nothing_left(scripted_session)


async def test_fail_on_the_flushed_chunk(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script.from_text("One. Two. Three without a period"))
    result = await start_stream(
        scripted_session,
        requirements=[Recording("r", fail_at=2)],
    )
    events = await collect(result)
    await result.acomplete()
    assert [e.text for e in of_type(events, ChunkEvent)] == ["One.", "Two."]
    assert Recording.seen["r"][-1] == "Three without a period"
    assert of_type(events, StreamingDoneEvent) == []
    assert of_type(events, FullValidationEvent) == []
    assert not result.completed and result.full_text == "One. Two."
    assert len(result.streaming_failures) == 1


async def test_fail_during_a_stalled_generation_still_disconnects(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    script = Script.from_text(long_text(20), stall_after=12)  # then silent until disconnected
    scripted.enqueue(script)
    result = await start_stream(
        scripted_session,
        requirements=[Recording("r", fail_at=1)],
    )
    assert await drain(result) == ["Sentence number 0."]
    record = await asyncio.to_thread(scripted.wait_for_disconnect, -1, WAIT)
    assert record.disconnected_at is not None


# -- consumer cancel --------------------------------------------------------------------------
async def test_leaving_async_with_early_cancels_generation_and_validators(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script.from_text(long_text(2000), delay=0.002))
    got = []
    async with await start_stream(
        scripted_session,
        requirements=[Recording("r")],
    ) as result:
        async with asyncio.timeout(WAIT):
            async for chunk in result.astream():
                got.append(chunk)
                if len(got) == 2:
                    break
        assert not result.done()
    assert result.done() and result.cancelled and not result.completed
    await result.acomplete()  # a cancel is not an error
    events = await collect(result)
    assert isinstance(events[-1], CompletedEvent) and not completed_of(events).success
    assert of_type(events, ErrorEvent) == []
    assert of_type(events, StreamingDoneEvent) == []
    delivered = [e.text for e in of_type(events, ChunkEvent)]
    assert delivered[:2] == got
    assert result.full_text.endswith(delivered[-1])
    record = await asyncio.to_thread(scripted.wait_for_disconnect, -1, WAIT)
    assert record.disconnected_at is not None
    await assert_nothing_left(scripted_session)


async def test_cancel_stops_a_stream_whose_validator_is_busy(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script.from_text(long_text(2000), delay=0.002))
    result = await start_stream(
        scripted_session,
        requirements=[Faulty("hang", at=0)],
    )
    assert await asyncio.to_thread(Faulty.hanging.wait, WAIT)
    await result.cancel()
    assert result.done() and result.cancelled
    assert Faulty.cancelled == [0]  # the running stream_validate was cancelled
    assert await drain(result) == []
    record = await asyncio.to_thread(scripted.wait_for_disconnect, -1, WAIT)
    assert record.disconnected_at is not None
    await result.cancel()  # idempotent
    await assert_nothing_left(scripted_session)


# -- parallelism and isolation ----------------------------------------------------------------
async def test_slow_and_fast_validators_both_see_every_chunk_in_order(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    text = long_text(12)
    scripted.enqueue(Script.from_text(text))  # generated at once
    result = await start_stream(
        scripted_session,
        requirements=[Recording("slow", delay=0.03), Recording("fast")],
    )
    chunks = await drain(result)
    last_chunk_at = time.monotonic()
    await result.acomplete()
    expected = [f"Sentence number {i}." for i in range(12)]
    assert chunks == expected
    assert Recording.seen["slow"] == expected == Recording.seen["fast"]
    assert result.completed and Recording.validate_calls == {"slow": 1, "fast": 1}
    # the slow validator delayed delivery, not generation
    record = scripted.requests[-1]
    assert record.outcome == "completed" and record.finished_at is not None
    assert record.finished_at < last_chunk_at - 0.2


async def test_validators_run_in_parallel(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    state = {"now": 0, "max": 0}

    class Overlapping(Requirement):
        async def stream_validate(
            self, chunk: str, *, backend: Backend, ctx: Context
        ) -> PartialValidationResult:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
            try:
                await asyncio.sleep(0.05)
            finally:
                state["now"] -= 1
            return PartialValidationResult("pass")

        async def validate(self, *args: Any, **kwargs: Any) -> ValidationResult:
            return ValidationResult(True)

    scripted.enqueue(Script.from_text(long_text(3)))
    result = await start_stream(
        scripted_session,
        requirements=[Overlapping("a"), Overlapping("b"), Overlapping("c")],
    )
    await result.acomplete()
    assert result.completed
    assert state["max"] == 3  # a shallow copy shares `state` by reference


async def test_caller_requirement_untouched_and_concurrent_streams_independent(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.set_script(Script.from_text(long_text(6), delay=0.002))
    req = Recording("shared")
    before = dict(vars(req))
    results = [
        await start_stream(
            scripted_session,
            requirements=[req],
        )
        for _ in range(2)
    ]
    outs = await asyncio.gather(*(drain(r) for r in results))
    for r in results:
        await r.acomplete()
    assert outs[0] == outs[1] == [f"Sentence number {i}." for i in range(6)]
    # each validator's copy counted only its own stream's chunks
    assert [r.final_validations[0].reason for r in results] == ["count=6", "count=6"]
    assert len(Recording.seen["shared"]) == 12
    assert vars(req) == before
    await assert_nothing_left(scripted_session)


# -- consumers --------------------------------------------------------------------------------
async def test_second_iteration_raises_at_once(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script.from_text(TEXT, delay=0.005, first_delay=0.3))
    result = await stream_with_chunking(
        Instruction("x"), scripted_session.backend, scripted_session.ctx
    )
    events = result.events()
    chunks = result.astream()
    with pytest.raises(SingleReaderError, match="events"):
        result.events()
    with pytest.raises(SingleReaderError, match="astream"):
        result.astream()
    first = asyncio.create_task(anext(events))
    await asyncio.sleep(0)  # let the first consumer start waiting (nothing comes for 0.3 s)
    assert not first.done()
    with pytest.raises(SingleReaderError, match="single consumer"):
        await anext(events)  # a second coroutine on the same iterator
    async with asyncio.timeout(WAIT):
        got_events = [await first] + [e async for e in events]
        got_chunks = [c async for c in chunks]
    assert [e.text for e in of_type(got_events, ChunkEvent)] == got_chunks == SENTENCES
    with pytest.raises(SingleReaderError):
        result.events()


async def test_result_accessors_before_the_end(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script.from_text(long_text(2000), delay=0.002))
    result = await stream_with_chunking(
        Instruction("x"), scripted_session.backend, scripted_session.ctx
    )
    with pytest.raises(RuntimeError, match="acomplete"):
        result.as_thunk  # noqa: B018
    with pytest.raises(AskTimeoutError):
        await result.acomplete(timeout=0.05)
    assert not result.done() and not result.completed and result.error is None
    await result.cancel()
    assert result.as_thunk.value == result.full_text


async def test_unknown_alias_raises_before_any_request(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    with pytest.raises(ValueError, match="'sentences'"):
        await start_stream(
            scripted_session,
            chunking="sentences",
        )
    with pytest.raises(InvalidInputError, match="validator_failure"):
        await start_stream(
            scripted_session,
            validator_failure="ignore",  # type: ignore[arg-type]
        )
    with pytest.raises(InvalidInputError, match="validator_timeout"):
        await stream_with_chunking(
            Instruction("x"), scripted_session.backend, scripted_session.ctx, validator_timeout=0
        )
    assert scripted.requests == []


# -- faults -----------------------------------------------------------------------------------
async def test_raising_validator_fails_closed_by_default(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script.from_text(long_text(2000), delay=0.002))
    result = await start_stream(
        scripted_session,
        requirements=[Recording("fine"), Faulty("raise", at=1)],
    )
    events = await collect(result)
    with pytest.raises(ValidatorError, match="KeyError") as info:
        await result.acomplete()
    assert isinstance(info.value.__cause__, KeyError)
    await result.acomplete()  # raised once only

    assert [type(e) for e in events[-2:]] == [ErrorEvent, CompletedEvent]
    error = error_of(events)
    assert error.exception_type == "ValidatorError" and "faulty raise" in error.detail
    assert not completed_of(events).success and not result.completed
    assert [e.text for e in of_type(events, ChunkEvent)] == ["Sentence number 0."]
    assert len(result.streaming_failures) == 1
    assert result.streaming_failures[0][1].success == "fail"
    record = await asyncio.to_thread(scripted.wait_for_disconnect, -1, WAIT)
    assert record.disconnected_at is not None
    failed = next(
        r for r in request_events(scripted_session, result) if r["event"] == "validator_failed"
    )
    assert failed["actor"] == f"validator-{result.request_id}-1"
    assert failed["parent"] == f"stream-{result.request_id}"
    assert failed["kind"] == "validator" and failed["policy"] == "fail"
    assert failed["chunk_index"] == 1 and "KeyError" in failed["reason"]
    await assert_nothing_left(scripted_session)


async def test_raising_validator_counts_as_unknown_under_that_policy(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script.from_text(TEXT))
    result = await start_stream(
        scripted_session,
        requirements=[Faulty("raise", at=1)],
        validator_failure="unknown",
    )
    events = await collect(result)
    await result.acomplete()
    assert result.completed
    assert [e.text for e in of_type(events, ChunkEvent)] == SENTENCES
    verdict = of_type(events, QuickCheckEvent)[1].results[0]
    assert verdict.success == "unknown" and "KeyError" in (verdict.reason or "")
    failed = [
        r for r in request_events(scripted_session, result) if r["event"] == "validator_failed"
    ]
    assert len(failed) == 1 and failed[0]["policy"] == "unknown"


async def test_invalid_verdict_is_a_value_error(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script.from_text(TEXT, delay=0.005))
    result = await start_stream(
        scripted_session,
        requirements=[Faulty("invalid", at=0)],
    )
    events = await collect(result)
    with pytest.raises(ValueError, match="PartialValidationResult") as info:
        await result.acomplete()
    assert isinstance(info.value, InvalidVerdictError)
    assert error_of(events).exception_type == "InvalidVerdictError"
    assert of_type(events, ChunkEvent) == [] and result.full_text == ""


async def test_invalid_verdict_under_unknown_policy(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script.from_text(TEXT))
    result = await start_stream(
        scripted_session,
        requirements=[Faulty("invalid", at=0)],
        validator_failure="unknown",
    )
    assert await drain(result) == SENTENCES
    await result.acomplete()
    assert result.completed


@pytest.mark.parametrize("policy", ["fail", "unknown"])
async def test_validator_past_its_deadline(
    scripted: ScriptedOllama, scripted_session: MelleaSession, policy: str
) -> None:
    scripted.enqueue(Script.from_text(TEXT, delay=0.002))
    result = await start_stream(
        scripted_session,
        requirements=[Faulty("hang", at=2)],
        validator_timeout=0.2,
        validator_failure=policy,  # type: ignore[arg-type]
    )
    events = await collect(result)
    assert Faulty.cancelled == [2]  # the hanging call was cancelled at its deadline
    chunks = [e.text for e in of_type(events, ChunkEvent)]
    if policy == "fail":
        with pytest.raises(ValidatorTimeoutError) as info:
            await result.acomplete()
        assert isinstance(info.value, TimeoutError) and info.value.chunk_index == 2
        assert error_of(events).exception_type == "ValidatorTimeoutError"
        assert chunks == SENTENCES[:2] and not result.completed
        assert result.full_text == "Alpha beta.  Gamma delta!"
    else:
        await result.acomplete()
        assert chunks == SENTENCES and result.completed
        assert of_type(events, QuickCheckEvent)[2].results[0].success == "unknown"
    await assert_nothing_left(scripted_session)


async def test_final_validation_that_raises_is_an_error(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script.from_text(TEXT))
    result = await start_stream(
        scripted_session,
        requirements=[Faulty("final-raise")],
    )
    events = await collect(result)
    kinds = [type(e).__name__ for e in events[-3:]]
    assert kinds == ["StreamingDoneEvent", "ErrorEvent", "CompletedEvent"]
    with pytest.raises(ValidatorError, match="final boom"):
        await result.acomplete()
    assert not result.completed and result.full_text == TEXT


async def test_backend_error_mid_stream_keeps_the_delivered_text(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    text = "First one. Second one. Third one is cut"
    script = Script.from_text(text, error_after=6, error_message="model exploded")
    scripted.enqueue(script)
    result = await start_stream(
        scripted_session,
        requirements=[Recording("r")],
    )
    events = await collect(result)
    with pytest.raises(BackendError, match="model exploded"):
        await drain(result)  # astream raises the error after the last delivered chunk
    await result.acomplete()  # already surfaced by astream()
    assert [e.text for e in of_type(events, ChunkEvent)] == ["First one.", "Second one."]
    assert [type(e) for e in events[-2:]] == [ErrorEvent, CompletedEvent]
    assert "model exploded" in error_of(events).detail
    assert result.full_text == "First one. Second one."
    assert isinstance(result.error, BackendError)
    assert Recording.validate_calls == {}
    await assert_nothing_left(scripted_session)


async def test_dropped_connection_mid_stream(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script.from_text("Kept here. Lost there", drop_after=3))
    result = await stream_with_chunking(
        Instruction("x"), scripted_session.backend, scripted_session.ctx
    )
    events = await collect(result)
    with pytest.raises(BackendError):
        await result.acomplete()
    assert [e.text for e in of_type(events, ChunkEvent)] == ["Kept here."]
    assert error_of(events).exception_type == "StreamDroppedError"
    assert result.full_text == "Kept here."


async def test_chunker_returning_a_non_verbatim_chunk_is_reported(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    class Shouting(ChunkingStrategy):
        def split(self, accumulated_text: str) -> list[str]:
            words = accumulated_text.split()[:-1]
            return [w if i == 0 else w.upper() for i, w in enumerate(words)]

    # "Sentence " and "number " come first, then a pause: the first chunk is found and
    # delivered before the chunker sees the text that makes it misbehave.
    script = Script.from_text(long_text(2000), delay=0.002, stall_after=2, stall_for=1.0)
    scripted.enqueue(script)
    result = await start_stream(
        scripted_session,
        requirements=[Recording("r")],
        chunking=Shouting(),
    )
    events = await collect(result)
    with pytest.raises(InvalidInputError, match=r"Shouting\.split\(\)") as info:
        await result.acomplete()
    assert "verbatim" in str(info.value)
    assert error_of(events).exception_type == "InvalidInputError"
    assert [e.text for e in of_type(events, ChunkEvent)] == ["Sentence"]
    assert result.full_text == "Sentence"
    record = await asyncio.to_thread(scripted.wait_for_disconnect, -1, WAIT)
    assert record.disconnected_at is not None  # the generation was stopped
    await assert_nothing_left(scripted_session)


async def test_stopping_the_stream_actor_never_hangs_the_consumer(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script.from_text(long_text(2000), delay=0.002))
    result = await start_stream(
        scripted_session,
        requirements=[Recording("r")],
    )
    chunks = result.astream()
    async with asyncio.timeout(WAIT):
        assert await anext(chunks) == "Sentence number 0."
    assert result._actor is not None
    result._actor.stop(block=False)  # e.g. a supervisor stopping it
    events = await collect(result)
    assert of_type(events, ChunkEvent)[0].text == "Sentence number 0."
    assert error_of(events).exception_type == "RuntimeClosedError"
    assert not completed_of(events).success
    with pytest.raises(RuntimeClosedError, match="stopped before the stream ended"):
        await result.acomplete()
    record = await asyncio.to_thread(scripted.wait_for_disconnect, -1, WAIT)
    assert record.disconnected_at is not None
    await assert_nothing_left(scripted_session)


async def test_session_closed_under_a_running_stream_never_hangs(
    scripted: ScriptedOllama,
) -> None:
    scripted.enqueue(Script.from_text(long_text(2000), delay=0.002))
    session = start_session(model_id="scripted", base_url=scripted.base_url)
    try:
        result = await stream_with_chunking(
            Instruction("x"), session.backend, session.ctx, requirements=[Recording("r")]
        )
        await asyncio.to_thread(scripted.wait_for_requests, 1, WAIT)
    finally:
        await asyncio.to_thread(session.close)
    events = await collect(result)
    assert [type(e) for e in events[-2:]] == [ErrorEvent, CompletedEvent]
    with pytest.raises((RuntimeClosedError, GenerationCancelledError)):
        await result.acomplete(timeout=WAIT)
    assert not result.completed


async def test_the_actor_tree_shows_the_stream_and_its_validators(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script.from_text(long_text(200), delay=0.002))
    result = await start_stream(
        scripted_session,
        requirements=[Faulty("hang", at=0), Recording("fast")],
    )
    assert await asyncio.to_thread(Faulty.hanging.wait, WAIT)
    tree = scripted_session.system.tree()
    streams = [c for c in tree["children"] if c["kind"] == "stream"]
    assert [s["id"] for s in streams] == [f"stream-{result.request_id}"]
    assert sorted(v["id"] for v in streams[0]["children"]) == [
        f"validator-{result.request_id}-0",
        f"validator-{result.request_id}-1",
    ]
    await result.cancel()
    assert not [c for c in scripted_session.system.tree()["children"] if c["kind"] == "stream"]
    await assert_nothing_left(scripted_session)
