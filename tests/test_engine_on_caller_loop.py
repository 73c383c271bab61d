"""The engine hosted on the caller's loop (``engine_loop="caller"``, the default).

A session opened while an event loop runs gets an engine driven from that loop's own thread:
no second thread, and no GIL hand-off between the engine and the caller's coroutines. What must
still hold there (SPEC §3, §7): ``str()`` of a pending thunk waits for its value — also in the
middle of a stream, with its validators — and so does every sync method called on that thread;
timers (watchdogs, back-offs) fire; blocking inside engine code still raises; the session
outlives the loop that opened it; and closing it leaves no thread behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from mellea_actors import MelleaSession, start_session
from mellea_actors.backends import ModelOption
from mellea_actors.core.backend import Backend
from mellea_actors.core.base import Context
from mellea_actors.core.requirement import PartialValidationResult, Requirement, ValidationResult
from mellea_actors.errors import InvalidInputError, StreamTimeoutError
from mellea_actors.stdlib.components import Instruction
from mellea_actors.stdlib.streaming import stream_with_chunking
from mellea_actors.testing import Script, ScriptedOllama

STREAM = {ModelOption.STREAM: True}
TOKENS = [f"w{i} " for i in range(12)]
TEXT = "".join(TOKENS)
WAIT = 10.0
PACED = Script(tokens=TOKENS, first_delay=0.05, delay=0.01)
MODEL = "scripted"


STALL_WATCH = "mellea-actors-stall-watch"  # one per process while any loop is hosted


def _runtime_threads() -> set[str]:
    """The runtime's threads but the process-wide stall watch."""
    return {
        t.name
        for t in threading.enumerate()
        if t.name.startswith("mellea-actors") and t.name != STALL_WATCH
    }


def _join_rescues() -> None:
    """A lend's rescue thread lets go of the loop before the blocking call returns, and ends
    a moment later: wait for it (bounded) before counting threads."""
    for t in threading.enumerate():
        if t.name.endswith("-rescue"):
            t.join(WAIT)


@pytest.fixture
async def hosted(scripted: ScriptedOllama) -> AsyncIterator[MelleaSession]:
    """A session opened inside the test's running loop: its engine is hosted there."""
    m = start_session(model_id=MODEL, base_url=scripted.base_url)
    try:
        yield m
    finally:
        m.close()


class _RecordsItsThread(Requirement):
    """A stream validator that notes which thread runs it and passes every chunk."""

    def __init__(self) -> None:
        super().__init__("records its thread")
        self.threads: list[str] = []  # shared with the test (a shallow copy keeps the list)

    async def stream_validate(
        self, chunk: str, *, backend: Backend, ctx: Context
    ) -> PartialValidationResult:
        self.threads.append(threading.current_thread().name)
        return PartialValidationResult("pass")

    async def validate(self, *args: Any, **kwargs: Any) -> ValidationResult:
        return ValidationResult(True)


class _FailsAt(Requirement):
    """Says "fail" on the chunk that contains ``bad``."""

    def __init__(self, bad: str) -> None:
        super().__init__(f"never says {bad}")
        self.bad = bad

    async def stream_validate(
        self, chunk: str, *, backend: Backend, ctx: Context
    ) -> PartialValidationResult:
        if self.bad in chunk:
            return PartialValidationResult("fail", reason=f"saw {self.bad}")
        return PartialValidationResult("pass")

    async def validate(self, *args: Any, **kwargs: Any) -> ValidationResult:
        return ValidationResult(True)


async def test_a_session_opened_in_a_running_loop_runs_its_engine_on_that_loops_thread(
    scripted: ScriptedOllama,
) -> None:
    before = _runtime_threads()
    m = start_session(model_id=MODEL, base_url=scripted.base_url)
    try:
        assert m.system.loop.hosted and not m.system.loop.thread.is_alive()
        _join_rescues()  # start_session's check blocked this thread once
        assert _runtime_threads() == before  # no thread of the engine's own
        scripted.enqueue(Script.from_text("One sentence. Two sentences."))
        req = _RecordsItsThread()
        result = await stream_with_chunking(Instruction("x"), m.backend, m.ctx, requirements=[req])
        await result.acomplete(timeout=WAIT)
        assert result.completed and req.threads
        # the validator ran on this very thread: the engine and this test share it
        assert set(req.threads) == {threading.current_thread().name}
        mot = await m.ainstruct("streamed", model_options=STREAM)
        pieces = []
        while not mot.is_computed():
            pieces.append(await asyncio.wait_for(mot.astream(), WAIT))
        assert "".join(pieces) == mot.value == "Hello world."
    finally:
        m.close()
    assert not m.system.loop.thread.is_alive()


async def test_text_reaches_a_reader_on_the_hosting_loop_without_a_thread_crossing(
    scripted: ScriptedOllama, hosted: MelleaSession
) -> None:
    """The engine's iteration runs on the reader's thread: waking the reader is scheduling its
    task there, not a ``call_soon_threadsafe`` (a self-pipe write and one more wake-up of the
    loop) per chunk, as from an engine on another thread."""
    scripted.enqueue(Script(tokens=TOKENS, delay=0.01))
    mot = await hosted.ainstruct("x", model_options=STREAM)
    with _crossings_to(asyncio.get_running_loop()) as crossings:
        reads = []
        while not mot.is_computed():
            reads.append(await asyncio.wait_for(mot.astream(), WAIT))
    assert "".join(reads) == TEXT and len([r for r in reads if r]) >= 4
    assert crossings == []


async def test_the_seeds_first_sample_str_of_a_fresh_thunk_waits_on_the_hosted_engine(
    scripted: ScriptedOllama, hosted: MelleaSession
) -> None:
    scripted.enqueue(PACED)
    result = await hosted.ainstruct("Write a haiku about concurrency.")
    assert not result.is_computed()
    assert str(result) == TEXT  # this thread blocks; the engine goes on in a rescue thread
    assert result.is_computed() and result.value == TEXT
    assert hosted.system.loop.hosted  # taken back once the wait ended
    assert scripted.requests[-1].outcome == "completed"


async def test_str_in_the_middle_of_a_stream_loses_nothing(
    scripted: ScriptedOllama, hosted: MelleaSession
) -> None:
    scripted.enqueue(Script(tokens=TOKENS, delay=0.02))
    mot = await hosted.ainstruct("x", model_options=STREAM)
    first = await asyncio.wait_for(mot.astream(), WAIT)
    assert first and not mot.is_computed()
    assert str(mot) == TEXT  # the half-read stream goes on where it was: same connection
    assert len(scripted.requests) == 1 and scripted.requests[0].outcome == "completed"
    rest = ""
    while not mot.is_computed():
        rest += await asyncio.wait_for(mot.astream(), WAIT)
    assert first + rest == TEXT


async def test_a_fail_verdict_while_the_host_blocks_still_cancels_the_generation(
    scripted: ScriptedOllama, hosted: MelleaSession
) -> None:
    """A validated stream goes on, verdicts and all, while this thread blocks on another."""
    checked = Script.from_text("One sentence. Two sentences. Bad three. Four.", delay=0.02)
    slow = Script(tokens=TOKENS * 3, delay=0.02)  # ends well after the checked one
    scripted.set_script(
        lambda record: slow if record.messages[-1]["content"] == "slow" else checked
    )
    result = await stream_with_chunking(
        Instruction("x"), hosted.backend, hosted.ctx, requirements=[_FailsAt("Bad")]
    )
    blocker = await hosted.ainstruct("slow")
    assert str(blocker) == "".join(TOKENS * 3)  # blocks this thread until the slow one ends
    assert result.done() and not result.completed  # decided meanwhile, without this thread
    assert "Bad" not in result.full_text and result.full_text.startswith("One sentence.")
    outcomes = {r.messages[-1]["content"]: r.outcome for r in scripted.requests}
    assert outcomes == {"slow": "completed", "x": "client_disconnected"}


async def test_sync_methods_work_from_the_hosting_loops_thread(
    scripted: ScriptedOllama, hosted: MelleaSession
) -> None:
    scripted.enqueue(PACED)
    assert str(hosted.instruct("sync, inside async code")) == TEXT
    assert hosted.system.loop.hosted


async def test_sync_calls_from_another_thread_are_served_while_the_host_runs(
    scripted: ScriptedOllama, hosted: MelleaSession
) -> None:
    scripted.enqueue(PACED)
    mot = await asyncio.wait_for(asyncio.to_thread(hosted.instruct, "from a worker"), WAIT)
    assert str(mot) == TEXT
    assert hosted.system.loop.hosted


async def test_timers_fire_on_the_hosted_engine(
    scripted: ScriptedOllama, hosted: MelleaSession
) -> None:
    """The stream watchdog is a timer of the engine's loop: the host wakes up for it."""
    scripted.enqueue(Script(tokens=TOKENS, stall_after=2))
    mot = await hosted.ainstruct(
        "stalls", model_options={ModelOption.STREAM: True, ModelOption.STREAM_TIMEOUT: 0.3}
    )
    started = time.monotonic()
    with pytest.raises(StreamTimeoutError):
        await asyncio.wait_for(mot.avalue(), WAIT)
    assert time.monotonic() - started < 3.0


async def test_blocking_inside_engine_code_on_the_hosted_loop_still_raises(
    scripted: ScriptedOllama, hosted: MelleaSession
) -> None:
    scripted.set_script(
        lambda record: (
            Script(tokens=TOKENS, stall_after=1)
            if record.messages[-1]["content"] == "pending"
            else Script.from_text("One sentence. Two sentences.")
        )
    )
    pending = await hosted.ainstruct("pending", model_options=STREAM)
    seen: list[BaseException] = []

    class StrOfPending(_RecordsItsThread):
        async def stream_validate(
            self, chunk: str, *, backend: Backend, ctx: Context
        ) -> PartialValidationResult:
            try:
                str(pending)
            except RuntimeError as exc:
                seen.append(exc)
            return PartialValidationResult("pass")

    result = await stream_with_chunking(
        Instruction("x"), hosted.backend, hosted.ctx, requirements=[StrOfPending()]
    )
    await result.acomplete(timeout=WAIT)
    assert result.completed and seen
    assert all("loop thread" in str(exc) for exc in seen)
    await pending.cancel()


def test_the_session_outlives_the_loop_that_opened_it(scripted: ScriptedOllama) -> None:
    scripted.set_script(PACED)

    async def open_and_start() -> tuple[MelleaSession, Any]:
        m = start_session(model_id=MODEL, base_url=scripted.base_url)
        assert m.system.loop.hosted
        return m, await m.ainstruct("started on the first loop")

    m, mot = asyncio.run(open_and_start())
    try:
        # asyncio.run ended: the engine went to a thread of its own, with its work
        assert not m.system.loop.hosted and m.system.loop.thread.is_alive()
        assert str(mot) == TEXT
        assert str(m.instruct("from plain code")) == TEXT

        async def again() -> str:
            return await (await m.ainstruct("on a second loop")).avalue()

        assert asyncio.run(again()) == TEXT
    finally:
        m.close()
    assert not m.system.loop.thread.is_alive()


def test_closing_on_the_hosting_loop_leaves_no_thread_and_no_task(
    scripted: ScriptedOllama,
) -> None:
    scripted.set_script(PACED)
    before = _runtime_threads()

    async def main() -> set[asyncio.Task[Any]]:
        m = start_session(model_id=MODEL, base_url=scripted.base_url)
        mot = await m.ainstruct("left running", model_options=STREAM)
        m.close()  # a sync call on the hosting thread: cancels, stops, joins
        assert mot.is_computed() and mot.cancelled
        assert not m.system.loop.thread.is_alive()
        await asyncio.sleep(0)  # the host's watcher task was cancelled: let it end
        return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}

    assert asyncio.run(main()) == set()
    _join_rescues()
    assert _runtime_threads() == before


def test_closing_from_another_thread_while_the_host_blocks_ends_its_wait(
    scripted: ScriptedOllama,
) -> None:
    """The host's thread blocks in str() of a stalled stream (its loop lent to a rescue
    thread); another thread closes the session: the loop goes to its own thread and stops,
    the generation is cancelled, and the blocked str() returns the text it had."""
    scripted.set_script(Script(tokens=TOKENS, stall_after=2))
    closed: list[BaseException | None] = []

    def close_once_lent(m: MelleaSession) -> None:
        hosting = m.system.loop._hosting
        assert hosting is not None
        deadline = time.monotonic() + WAIT
        while hosting.state != "lent" and time.monotonic() < deadline:
            time.sleep(0.001)  # a condition polled with a deadline: nothing to wait on
        try:
            m.close()
            closed.append(None)
        except BaseException as exc:  # reported to the test below
            closed.append(exc)

    async def main() -> tuple[str, str, bool]:
        m = start_session(model_id=MODEL, base_url=scripted.base_url)
        mot = await m.ainstruct("stalls", model_options=STREAM)
        first = await asyncio.wait_for(mot.astream(), WAIT)
        closer = threading.Thread(target=close_once_lent, args=(m,), name="closer")
        closer.start()
        text = str(mot)  # blocks until the other thread's close() cancelled the generation
        closer.join(WAIT)
        return first, text, m.system.loop.thread.is_alive()

    first, text, alive = asyncio.run(main())
    assert closed == [None]
    assert text.startswith(first) and text == "".join(TOKENS[:2])
    assert not alive


async def test_blocking_the_hosting_thread_outside_the_runtime_does_not_stall_the_engine(
    scripted: ScriptedOllama, hosted: MelleaSession
) -> None:
    """The host's thread joins a worker that makes sync calls on the session (or a sync
    executor maps them): the engine is borrowed by a rescue thread while the host is stuck, so
    the calls it waits for complete, and the host's next iteration takes the engine back."""
    scripted.set_script(PACED)
    texts: list[str] = []

    def worker() -> None:
        texts.extend(str(hosted.instruct(f"from a worker {k}")) for k in range(2))

    thread = threading.Thread(target=worker, name="worker")
    thread.start()
    thread.join(WAIT)  # blocks this loop's thread in code that is not the runtime's
    assert not thread.is_alive() and texts == [TEXT, TEXT]
    hosting = hosted.system.loop._hosting
    assert hosting is not None
    steps = hosting._steps  # iterations run by this thread
    mot = await hosted.ainstruct("after")
    assert await asyncio.wait_for(mot.avalue(), WAIT) == TEXT
    assert hosting._steps > steps  # taken back: this thread runs the engine again


async def test_engine_loop_thread_keeps_a_thread_of_its_own(scripted: ScriptedOllama) -> None:
    with start_session(model_id=MODEL, base_url=scripted.base_url, engine_loop="thread") as m:
        assert not m.system.loop.hosted and m.system.loop.thread.is_alive()
        scripted.enqueue(PACED)
        assert await (await m.ainstruct("x")).avalue() == TEXT


def test_a_bad_engine_loop_is_refused_by_name(
    scripted: ScriptedOllama, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(InvalidInputError, match="engine_loop 'nope'"):
        start_session(model_id=MODEL, base_url=scripted.base_url, engine_loop="nope")  # type: ignore[arg-type]
    monkeypatch.setenv("MELLEA_ACTORS_ENGINE_LOOP", "sideways")
    with pytest.raises(InvalidInputError, match="MELLEA_ACTORS_ENGINE_LOOP 'sideways'"):
        start_session(model_id=MODEL, base_url=scripted.base_url)
    assert scripted.requests == []  # refused before any request


def test_the_environment_chooses_a_thread(
    scripted: ScriptedOllama, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MELLEA_ACTORS_ENGINE_LOOP", "thread")

    async def main() -> bool:
        with start_session(model_id=MODEL, base_url=scripted.base_url) as m:
            return m.system.loop.hosted

    assert asyncio.run(main()) is False


async def test_starting_generations_on_the_hosting_loop_writes_no_self_pipe(
    scripted: ScriptedOllama, hosted: MelleaSession
) -> None:
    """Regression: each ``ainstruct`` on the thread that hosts the engine crossed to it with
    ``call_soon_threadsafe`` (a self-pipe write, read back by one more iteration), as from
    another thread; now it schedules on the engine's loop directly and wakes the host."""
    scripted.set_script(Script(tokens=TOKENS))
    with _crossings_to(hosted.system.loop.loop) as crossings:
        mots = [await hosted.ainstruct(f"x {k}", model_options=STREAM) for k in range(5)]
        values = [await asyncio.wait_for(mot.avalue(), WAIT) for mot in mots]
    assert values == [TEXT] * 5
    assert crossings == []


@contextlib.contextmanager
def _crossings_to(loop: asyncio.AbstractEventLoop) -> Iterator[list[object]]:
    """The callbacks handed to ``loop`` with ``call_soon_threadsafe`` while inside."""
    crossings: list[object] = []
    original = loop.call_soon_threadsafe

    def counted(callback: Any, *args: Any, **kwargs: Any) -> Any:
        crossings.append(callback)
        return original(callback, *args, **kwargs)

    loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
    try:
        yield crossings
    finally:
        del loop.call_soon_threadsafe  # the instance attribute: back to the class's method
