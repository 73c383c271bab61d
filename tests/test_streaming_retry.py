"""stream_with_chunking's opt-in "retry from scratch" (``max_retries``), on the scripted server.

A generation that fails with a transient backend error after text was delivered is never
retried silently: by default the reader gets the error; with ``max_retries=n`` the stream starts
again from scratch, announced by a ``RetryEvent``. Deterministic scripts; no sleeps; every wait
bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from mellea_actors import MelleaSession
from mellea_actors.core.backend import Backend
from mellea_actors.core.base import Context
from mellea_actors.core.requirement import (
    PartialValidationResult,
    Requirement,
    ValidationResult,
)
from mellea_actors.errors import (
    BackendError,
    BackendResponseError,
    InvalidInputError,
    StreamDroppedError,
    ValidatorError,
)
from mellea_actors.stdlib.components import Instruction
from mellea_actors.stdlib.streaming import (
    ChunkEvent,
    ChunkingStrategy,
    CompletedEvent,
    ErrorEvent,
    FullValidationEvent,
    QuickCheckEvent,
    RetryEvent,
    StreamChunkingResult,
    StreamEvent,
    StreamingDoneEvent,
    live_stream_actors,
    stream_with_chunking,
)
from mellea_actors.testing import Script, ScriptedOllama

WAIT = 10.0  # bound of every wait in these tests

# Attempt 1 is cut after 5 tokens ("One alpha. Two beta. Three "): two complete sentences.
FIRST = "One alpha. Two beta. Three gamma. Four delta. "
FIRST_DROPPED = Script.from_text(FIRST, drop_after=5)
FIRST_CHUNKS = ["One alpha.", "Two beta."]
SECOND = "Fresh start here. Second try works.  "
SECOND_CHUNKS = ["Fresh start here.", "Second try works."]
SECOND_DROPPED = Script.from_text(SECOND + "And more. ", drop_after=4)  # 1 sentence, then cut
THIRD = "Third time lucky. "
GOOD = Script.from_text(THIRD)  # queued after the scripted faults: a wrong retry would succeed


class Counting(Requirement):
    """Passes (or fails from chunk ``fail_at`` on); counts on its copy, records at class level."""

    seen: list[tuple[int, str]] = []  # (id of the copy, chunk)
    validate_calls: list[tuple[int, int]] = []  # (id of the copy, chunks it saw)

    def __init__(self, name: str, *, fail_at: int | None = None) -> None:
        super().__init__(f"counting {name}")
        self.name = name
        self.fail_at = fail_at
        self.count = 0  # per copy: stays 0 on the caller's object

    async def stream_validate(
        self, chunk: str, *, backend: Backend, ctx: Context
    ) -> PartialValidationResult:
        Counting.seen.append((id(self), chunk))
        index = self.count
        self.count += 1
        if self.fail_at is not None and index >= self.fail_at:
            return PartialValidationResult("fail", reason=f"{self.name} rejects chunk {index}")
        return PartialValidationResult("pass")

    async def validate(
        self, backend: Backend, ctx: Context, *, format: Any = None, model_options: Any = None
    ) -> ValidationResult:
        Counting.validate_calls.append((id(self), self.count))
        return ValidationResult(True, reason=f"count={self.count}")


class Raising(Requirement):
    async def stream_validate(
        self, chunk: str, *, backend: Backend, ctx: Context
    ) -> PartialValidationResult:
        raise KeyError("validator boom")


class GrowingOnly(ChunkingStrategy):
    """Words; stateful: it assumes the text only grows (a reused instance would raise)."""

    def __init__(self) -> None:
        self.longest = 0

    def split(self, accumulated_text: str) -> list[str]:
        if len(accumulated_text) < self.longest:
            raise RuntimeError("the text shrank: this chunker instance was reused")
        self.longest = len(accumulated_text)
        words = accumulated_text.split()
        return words if accumulated_text[-1:].isspace() else words[:-1]


@pytest.fixture(autouse=True)
def _reset_counting() -> Iterator[None]:
    Counting.seen.clear()
    Counting.validate_calls.clear()
    yield


# -- helpers ----------------------------------------------------------------------------------
async def collect(result: StreamChunkingResult) -> list[StreamEvent]:
    async with asyncio.timeout(WAIT):
        return [event async for event in result.events()]


async def drain(result: StreamChunkingResult) -> list[str]:
    async with asyncio.timeout(WAIT):
        return [chunk async for chunk in result.astream()]


def of_type(events: list[StreamEvent], cls: type[StreamEvent]) -> list[Any]:
    return [e for e in events if isinstance(e, cls)]


def log_events(session: MelleaSession, event: str) -> list[dict[str, Any]]:
    return [r for r in session.backend.system.log.events() if r["event"] == event]


async def assert_nothing_left(session: MelleaSession) -> None:
    system = session.backend.system

    async def names() -> list[str]:
        return [
            t.get_name()
            for t in asyncio.all_tasks()
            if not t.done() and t.get_name().startswith(("stream-", "validator-"))
        ]

    assert await asyncio.wrap_future(system.loop.run_coroutine(names())) == []
    assert live_stream_actors(system) == {}
    assert system.live_thunks() == []


def assert_no_retry(result: StreamChunkingResult, events: list[StreamEvent]) -> None:
    assert of_type(events, RetryEvent) == []
    assert {getattr(e, "attempt", 1) for e in events} == {1}
    assert isinstance(events[-1], CompletedEvent) and events[-1].attempts_used == 1
    assert len(result.request_ids) == 1 and result.attempt == 1


async def start(
    session: MelleaSession, requirements: list[Requirement] | None = None, **kwargs: Any
) -> StreamChunkingResult:
    return await stream_with_chunking(
        Instruction("Write sentences."),
        session.backend,
        session.ctx,
        requirements=requirements,
        **kwargs,
    )


# -- default: no retry ------------------------------------------------------------------------
async def test_default_drop_after_delivered_text_is_an_error_without_retry(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script.from_text("Kept here. Lost there", drop_after=3), GOOD)
    result = await start(scripted_session, [Counting("a")])
    events = await collect(result)
    with pytest.raises(StreamDroppedError):
        await result.acomplete()

    assert [type(e) for e in events] == [
        QuickCheckEvent,
        ChunkEvent,
        ErrorEvent,
        CompletedEvent,
    ]
    assert events[1].text == "Kept here."  # type: ignore[attr-defined]
    assert events[2].exception_type == "StreamDroppedError"  # type: ignore[attr-defined]
    assert not events[3].success  # type: ignore[attr-defined]
    assert_no_retry(result, events)
    assert len(scripted.requests) == 1
    assert log_events(scripted_session, "stream_retry") == []
    assert len(log_events(scripted_session, "generation_started")) == 1
    await assert_nothing_left(scripted_session)


# -- a retry that succeeds --------------------------------------------------------------------
async def test_transient_drop_is_retried_from_scratch(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(FIRST_DROPPED, Script.from_text(SECOND), GOOD)
    req = Counting("a")
    before = dict(vars(req))
    result = await start(scripted_session, [req], max_retries=1)
    events, chunks = await asyncio.gather(collect(result), drain(result))
    await result.acomplete()  # no error: the retry succeeded

    kinds = [type(e).__name__ for e in events]
    assert kinds == ["QuickCheckEvent", "ChunkEvent"] * 2 + ["RetryEvent"] + [
        "QuickCheckEvent",
        "ChunkEvent",
    ] * 2 + ["StreamingDoneEvent", "FullValidationEvent", "CompletedEvent"]
    retry_at = kinds.index("RetryEvent")
    for attempt, expected, part in (
        (1, FIRST_CHUNKS, events[:retry_at]),
        (2, SECOND_CHUNKS, events[retry_at + 1 : -3]),
    ):
        delivered = of_type(part, ChunkEvent)
        assert [e.text for e in delivered] == expected
        assert [e.chunk_index for e in delivered] == [0, 1]
        quick = of_type(part, QuickCheckEvent)
        assert [q.chunk_index for q in quick] == [0, 1] and all(q.passed for q in quick)
        assert {e.attempt for e in delivered + quick} == {attempt}
    retry = events[retry_at]
    assert isinstance(retry, RetryEvent) and retry.attempt == 2
    assert retry.reason.startswith("StreamDroppedError: ") and "\n" not in retry.reason
    done, full, completed = events[-3:]
    assert isinstance(done, StreamingDoneEvent) and done.attempt == 2
    assert done.full_text == SECOND
    assert isinstance(full, FullValidationEvent) and full.attempt == 2 and full.passed
    assert isinstance(completed, CompletedEvent)
    assert completed.success and completed.attempts_used == 2 and completed.full_text == SECOND

    # astream() cannot tell the attempts apart: the abandoned attempt's chunks come first
    assert chunks == FIRST_CHUNKS + SECOND_CHUNKS
    assert result.completed and result.attempt == 2
    assert result.full_text == SECOND and result.as_thunk.value == SECOND
    assert result.streaming_failures == []
    # validate() once per requirement, on the final attempt's fresh copy (it saw 2 chunks only)
    assert [r.reason for r in result.final_validations] == ["count=2"]
    assert len(Counting.validate_calls) == 1 and Counting.validate_calls[0][1] == 2
    copies = list(dict.fromkeys(copy for copy, _ in Counting.seen))
    assert len(copies) == 2 and id(req) not in copies
    assert Counting.validate_calls[0][0] == copies[1]
    assert [c for copy, c in Counting.seen if copy == copies[1]] == SECOND_CHUNKS
    assert vars(req) == before and req.count == 0  # the caller's object is untouched

    records = scripted.requests
    assert len(records) == 2
    assert records[0].outcome == "dropped" and records[1].outcome == "completed"
    assert records[0].messages == records[1].messages  # the same action and context
    first_id, second_id = result.request_ids
    assert first_id == result.request_id and second_id != first_id
    [logged] = log_events(scripted_session, "stream_retry")
    assert logged["actor"] == f"stream-{result.request_id}" and logged["kind"] == "stream"
    assert logged["thunk"] == second_id and logged["attempt"] == 2
    assert logged["reason"] == retry.reason
    [ended] = log_events(scripted_session, "stream_ended")
    assert ended["thunk"] == second_id and ended["attempts"] == 2 and ended["success"]
    await assert_nothing_left(scripted_session)


async def test_two_retries_and_a_fresh_copy_of_a_stateful_chunker(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(FIRST_DROPPED, SECOND_DROPPED, GOOD)
    chunker = GrowingOnly()
    result = await start(scripted_session, [Counting("a")], chunking=chunker, max_retries=2)
    events = await collect(result)
    await result.acomplete()

    retries = of_type(events, RetryEvent)
    assert [r.attempt for r in retries] == [2, 3]
    by_attempt: dict[int, list[str]] = {}
    for e in of_type(events, ChunkEvent):
        by_attempt.setdefault(e.attempt, []).append(e.text)
    assert by_attempt == {
        1: ["One", "alpha.", "Two", "beta.", "Three"],
        2: ["Fresh", "start", "here.", "Second"],
        3: ["Third", "time", "lucky."],
    }
    completed = events[-1]
    assert isinstance(completed, CompletedEvent)
    assert completed.success and completed.attempts_used == 3 and result.full_text == THIRD
    assert len(scripted.requests) == 3 and len(set(result.request_ids)) == 3
    assert chunker.longest == len("One alpha. Two beta. Three ")  # only attempt 1 used it
    await assert_nothing_left(scripted_session)


# -- retries exhausted ------------------------------------------------------------------------
async def test_retries_exhausted_end_with_the_last_error(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(FIRST_DROPPED, SECOND_DROPPED, GOOD)
    result = await start(scripted_session, [Counting("a")], max_retries=1)
    events = await collect(result)
    with pytest.raises(StreamDroppedError) as info:
        await result.acomplete()

    kinds = [type(e).__name__ for e in events]
    assert kinds == ["QuickCheckEvent", "ChunkEvent"] * 2 + ["RetryEvent"] + [
        "QuickCheckEvent",
        "ChunkEvent",
        "ErrorEvent",
        "CompletedEvent",
    ]
    last_chunk, error, completed = events[-3:]
    assert isinstance(last_chunk, ChunkEvent) and last_chunk.attempt == 2
    assert last_chunk.text == SECOND_CHUNKS[0]
    assert isinstance(error, ErrorEvent) and error.exception_type == "StreamDroppedError"
    assert error.detail == str(info.value)
    assert isinstance(completed, CompletedEvent)
    assert not completed.success and completed.attempts_used == 2
    assert completed.full_text == result.full_text == SECOND_CHUNKS[0]
    assert not result.completed and result.final_validations == []
    assert len(scripted.requests) == 2
    failed = [
        r for r in log_events(scripted_session, "generation_failed") if r["thunk"] is not None
    ]
    assert [r["thunk"] for r in failed] == result.request_ids  # the last error is attempt 2's
    assert len(log_events(scripted_session, "stream_retry")) == 1
    await assert_nothing_left(scripted_session)


# -- never retried ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "script",
    [
        Script.from_text(FIRST, error_after=5, error_message="model exploded"),  # error line
        Script(status=400, error_message="bad request"),  # HTTP 4xx
    ],
    ids=["error-line", "http-400"],
)
async def test_non_transient_backend_error_is_not_retried(
    scripted: ScriptedOllama, scripted_session: MelleaSession, script: Script
) -> None:
    scripted.enqueue(script, GOOD)
    result = await start(scripted_session, [Counting("a")], max_retries=2)
    events = await collect(result)
    with pytest.raises(BackendResponseError) as info:
        await result.acomplete()
    assert not info.value.transient
    assert [type(e) for e in events[-2:]] == [ErrorEvent, CompletedEvent]
    assert not result.completed
    assert_no_retry(result, events)
    assert len(scripted.requests) == 1
    assert log_events(scripted_session, "stream_retry") == []
    await assert_nothing_left(scripted_session)


async def test_validator_fault_is_not_retried(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script.from_text(FIRST), GOOD)
    result = await start(scripted_session, [Raising("r")], max_retries=2)
    events = await collect(result)
    with pytest.raises(ValidatorError, match="validator boom"):
        await result.acomplete()
    assert [type(e) for e in events[-2:]] == [ErrorEvent, CompletedEvent]
    assert_no_retry(result, events)
    assert len(scripted.requests) == 1
    await assert_nothing_left(scripted_session)


async def test_fail_verdict_is_not_retried(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script.from_text(FIRST), GOOD)
    result = await start(scripted_session, [Counting("a", fail_at=1)], max_retries=2)
    events = await collect(result)
    await result.acomplete()  # a "fail" is a verdict, not an error
    assert [type(e) for e in events] == [
        QuickCheckEvent,
        ChunkEvent,
        QuickCheckEvent,
        CompletedEvent,
    ]
    assert not events[2].passed  # type: ignore[attr-defined]
    assert of_type(events, ErrorEvent) == []
    assert not result.completed and len(result.streaming_failures) == 1
    assert result.full_text == FIRST_CHUNKS[0]
    assert_no_retry(result, events)
    assert len(scripted.requests) == 1
    await assert_nothing_left(scripted_session)


async def test_fail_verdict_before_a_transient_error_wins(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    # Both sentences are found before the drop; the "fail" on the second one ends the run.
    scripted.enqueue(FIRST_DROPPED, GOOD)
    result = await start(scripted_session, [Counting("a", fail_at=1)], max_retries=2)
    events = await collect(result)
    await result.acomplete()
    assert [e.text for e in of_type(events, ChunkEvent)] == FIRST_CHUNKS[:1]
    assert of_type(events, ErrorEvent) == []
    assert_no_retry(result, events)
    assert len(scripted.requests) == 1


# -- cancel during the retried attempt ----------------------------------------------------------
async def test_cancel_during_the_second_attempt(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    long = " ".join(f"Sentence number {i}." for i in range(2000))  # only a cancel ends it early
    scripted.enqueue(FIRST_DROPPED, Script.from_text(long, delay=0.002))
    result = await start(scripted_session, [Counting("a")], max_retries=1)
    seen: list[StreamEvent] = []
    async with asyncio.timeout(WAIT):
        async for event in result.events():
            seen.append(event)
            if isinstance(event, ChunkEvent) and event.attempt == 2:
                await result.cancel()
    assert result.cancelled and not result.completed
    await result.acomplete()  # a cancel is no error
    completed = seen[-1]
    assert isinstance(completed, CompletedEvent)
    assert not completed.success and completed.attempts_used == 2
    assert of_type(seen, ErrorEvent) == []
    assert result.full_text.startswith("Sentence number 0.")
    record = await asyncio.to_thread(scripted.wait_for_disconnect, 1, WAIT)
    assert record.disconnected_at is not None
    await assert_nothing_left(scripted_session)


# -- arguments ----------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [-1, "2", True, 1.0, None])
async def test_bad_max_retries_is_refused_before_any_request(
    scripted: ScriptedOllama, scripted_session: MelleaSession, bad: Any
) -> None:
    with pytest.raises(InvalidInputError, match="max_retries"):
        await start(scripted_session, [Counting("a")], max_retries=bad)
    assert scripted.requests == []
    assert live_stream_actors(scripted_session.backend.system) == {}


async def test_explicit_zero_retries_without_requirements(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(FIRST_DROPPED, GOOD)
    result = await start(scripted_session, max_retries=0)
    events = await collect(result)
    with pytest.raises(BackendError):
        await result.acomplete()
    assert [e.text for e in of_type(events, ChunkEvent)] == FIRST_CHUNKS
    assert_no_retry(result, events)
    assert len(scripted.requests) == 1
