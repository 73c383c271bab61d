"""ModelOutputThunk on thunk actors, against the scripted Ollama-protocol server.

Deterministic token sequences and faults; the `ollama` client talks real HTTP to the server.
"""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from mellea_actors import MelleaSession, start_session
from mellea_actors.backends import ModelOption
from mellea_actors.errors import (
    BackendResponseError,
    BackendUnavailableError,
    ModelNotFoundError,
    SingleReaderError,
    StreamDroppedError,
    StreamTimeoutError,
)
from mellea_actors.helpers.async_helpers import wait_for_all_mots
from mellea_actors.runtime.restart_policy import RestartPolicy
from mellea_actors.testing import RequestRecord, Script, ScriptedOllama

STREAM = {ModelOption.STREAM: True}
TOKENS = [f"w{i} " for i in range(12)]


async def test_lazy_thunk_streams_and_concatenation_equals_value(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script(tokens=TOKENS, delay=0.01))
    mot = await scripted_session.ainstruct("anything", model_options=STREAM)
    assert not mot.is_computed()
    assert mot.value is None and "value=None" in repr(mot)  # str() would force it
    pieces = []
    while not mot.is_computed():
        pieces.append(await mot.astream())
    assert "".join(pieces) == mot.value == "".join(TOKENS)
    assert sum(1 for p in pieces if p) >= 2, "streaming should deliver text in several reads"
    assert await mot.astream() == ""  # everything was read
    assert mot.generation is not None
    assert mot.generation.finish_reason == "stop"
    assert mot.generation.usage["completion_tokens"] == len(TOKENS)
    assert mot.generation.streaming is True
    assert mot.generation.ttfb_ms is not None and mot.generation.ttfb_ms >= 0


async def test_making_a_thunk_lets_the_callers_other_tasks_run(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    """Regression (p99 delay, bench scenario 4): ``ainstruct`` never suspended (the generation
    runs on the runtime's loop), so a caller making many thunks in a row (~100 µs each)
    starved its own readers until the last one was made."""
    ran = asyncio.Event()

    async def reader() -> None:
        ran.set()

    task = asyncio.create_task(reader())
    mot = await scripted_session.ainstruct("anything", strategy=None)
    assert ran.is_set(), "the other task did not run during ainstruct"
    await task
    await mot.avalue()


@pytest.mark.parametrize(("every", "turns"), [(3600.0, 1), (0.0, 20)], ids=["burst", "each"])
async def test_a_burst_of_thunks_gives_the_loop_a_turn_at_most_every_yield_every(
    scripted: ScriptedOllama,
    scripted_session: MelleaSession,
    monkeypatch: pytest.MonkeyPatch,
    every: float,
    turns: int,
) -> None:
    """Regression (bench scenario 4's CPU): a turn of the caller's loop after every
    ``ainstruct`` made each start of a burst pay whole iterations of both loops alone; the
    turn comes once ``YIELD_EVERY`` seconds have passed since the last one (the first call of
    a burst always gives one). Counted with the limit set so that the burst takes less or
    more than it."""
    from mellea_actors.backends import ollama as ollama_backend

    monkeypatch.setattr(ollama_backend, "YIELD_EVERY", every)
    ran = 0
    done = False

    async def other_task() -> None:
        nonlocal ran
        while not done:
            ran += 1
            await asyncio.sleep(0)

    await asyncio.sleep(0.01)  # the last turn given is now older than 0 s
    task = asyncio.create_task(other_task())
    try:
        before = ran
        mots = [await scripted_session.ainstruct(f"q {k}", strategy=None) for k in range(20)]
        after = ran
    finally:
        done = True
        await task
    assert after - before == turns
    await wait_for_all_mots(mots)


async def test_generation_starts_before_anyone_reads(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    thunks = [await scripted_session.ainstruct(f"poem {i}") for i in range(3)]
    assert not any(t.is_computed() for t in thunks)
    # the server receives all three requests although nobody awaited a value yet
    records = await asyncio.to_thread(scripted.wait_for_requests, 3, 5.0)
    assert len(records) == 3
    await asyncio.gather(*(t.avalue() for t in thunks))
    assert all(t.is_computed() and t.value for t in thunks)


async def test_stream_false_returns_everything_in_one_call(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script(tokens=TOKENS, delay=0.005))
    mot = await scripted_session.ainstruct("x", model_options={ModelOption.STREAM: False})
    first = await mot.astream()
    assert first == "".join(TOKENS)
    assert mot.is_computed()
    assert await mot.astream() == ""


async def test_computed_thunk_first_astream_returns_whole_value(
    scripted_session: MelleaSession,
) -> None:
    mot = await scripted_session.ainstruct("x", model_options=STREAM)
    value = await mot.avalue()
    assert await mot.astream() == value
    assert await mot.astream() == ""


async def test_second_concurrent_reader_gets_a_clear_error(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script(tokens=TOKENS, first_delay=0.3))
    mot = await scripted_session.ainstruct("x", model_options=STREAM)
    first = asyncio.create_task(mot.astream())
    await asyncio.sleep(0)  # let the first reader start waiting
    with pytest.raises(SingleReaderError, match=mot.request_id or "thunk"):
        await mot.astream()
    assert await first  # the first reader is unaffected
    rest = []
    while not mot.is_computed():
        rest.append(await mot.astream())
    assert (await first) + "".join(rest) == mot.value


async def test_second_reader_from_another_thread_gets_the_error(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script(tokens=TOKENS, first_delay=0.3))
    mot = await scripted_session.ainstruct("x", model_options=STREAM)
    first = asyncio.create_task(mot.astream())
    await asyncio.sleep(0)
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            asyncio.run(mot.astream())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=other_thread)
    thread.start()
    await asyncio.to_thread(thread.join, 5)
    assert len(errors) == 1 and isinstance(errors[0], SingleReaderError)
    assert await first


async def test_concurrent_avalue_calls_all_succeed(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script(tokens=TOKENS, delay=0.005))
    mot = await scripted_session.ainstruct("x")
    values = await asyncio.gather(*(mot.avalue() for _ in range(20)))
    assert set(values) == {"".join(TOKENS)}


async def test_cancelled_reader_loses_no_text_and_generation_continues(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script(tokens=TOKENS, first_delay=0.2, delay=0.01))
    mot = await scripted_session.ainstruct("x", model_options=STREAM)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(mot.astream(), timeout=0.05)  # cancelled while waiting
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(mot.avalue(), timeout=0.05)
    pieces = []
    while not mot.is_computed():
        pieces.append(await mot.astream())
    assert "".join(pieces) == "".join(TOKENS)
    assert not mot.cancelled
    assert scripted.requests[-1].outcome == "completed"


async def test_cancel_closes_the_http_stream_even_while_ollama_is_silent(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script(tokens=TOKENS, stall_after=3))
    mot = await scripted_session.ainstruct("x", model_options=STREAM)
    got = ""
    while len(got) < len("".join(TOKENS[:3])):
        got += await mot.astream()
    await mot.cancel()
    record = await asyncio.to_thread(scripted.wait_for_disconnect, -1, 5.0)
    assert record.disconnected_at is not None
    assert mot.cancelled and mot.is_computed()
    assert mot.value == "".join(TOKENS[:3])  # the partial text is the value
    assert mot.usage is not None and mot.usage["completion_tokens"] == 3
    events = scripted_session.system.log.events(thunk=mot.request_id, event="generation_cancelled")
    assert events and events[0]["reason"]


async def test_cancelling_the_awaiting_task_does_not_stop_generation(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script(tokens=TOKENS, delay=0.01))
    mot = await scripted_session.ainstruct("x")
    task = asyncio.create_task(mot.avalue())
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await mot.avalue() == "".join(TOKENS)


# -- errors -------------------------------------------------------------------------------------
async def test_unknown_model_is_named(scripted: ScriptedOllama) -> None:
    with pytest.raises(ModelNotFoundError, match="nope"):
        start_session(model_id="nope", base_url=scripted.base_url)
    # without the up-front check, the thunk raises it, again on every read
    with start_session(model_id="nope", base_url=scripted.base_url, check=False) as m:
        mot = await m.ainstruct("x")
        for _ in range(2):
            with pytest.raises(ModelNotFoundError, match="'nope'") as info:
                await mot.avalue()
        assert info.value.__cause__ is not None
        assert not mot.is_computed()


async def test_host_down_is_named() -> None:
    with pytest.raises(BackendUnavailableError, match=r"127\.0\.0\.1:9"):
        start_session(model_id="m", base_url="http://127.0.0.1:9")
    policy = RestartPolicy(max_restarts=0)
    with start_session(
        model_id="m", base_url="http://127.0.0.1:9", check=False, restart_policy=policy
    ) as m:
        mot = await m.ainstruct("x", model_options=STREAM)
        for _ in range(2):
            with pytest.raises(BackendUnavailableError, match=r"127\.0\.0\.1:9"):
                await mot.astream()


@pytest.mark.parametrize(
    ("script", "error", "outcome"),
    [
        (
            Script(tokens=TOKENS, error_after=4, error_message="boom"),
            BackendResponseError,
            "error_line",
        ),
        (Script(tokens=TOKENS, drop_after=4), StreamDroppedError, "dropped"),
        (Script(tokens=TOKENS, stall_after=4), StreamTimeoutError, None),
    ],
    ids=["error-line", "dropped", "stall"],
)
async def test_mid_stream_errors_keep_partial_text_and_raise_every_time(
    scripted: ScriptedOllama,
    scripted_session: MelleaSession,
    script: Script,
    error: type[Exception],
    outcome: str | None,
) -> None:
    scripted.enqueue(script)
    options = {**STREAM, ModelOption.STREAM_TIMEOUT: 0.3}
    mot = await scripted_session.ainstruct("x", model_options=options)
    got = ""
    with pytest.raises(error) as info:
        while True:
            got += await mot.astream()
    partial = "".join(TOKENS[:4])
    assert got == partial  # the text before the error was delivered, nothing lost
    assert mot.partial_value == partial
    assert info.value.__cause__ is not None or error is StreamTimeoutError
    for _ in range(2):  # raised again, no hang
        with pytest.raises(error):
            await asyncio.wait_for(mot.astream(), 5)
        with pytest.raises(error):
            await asyncio.wait_for(mot.avalue(), 5)
    assert mot.error is not None and not mot.is_computed() and mot.value is None
    if outcome is not None:
        assert scripted.requests[-1].outcome == outcome
    else:  # the stall: our timeout closed the connection
        record = await asyncio.to_thread(scripted.wait_for_disconnect, -1, 5.0)
        assert record.disconnected_at is not None


async def test_error_line_message_is_in_the_error(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script(tokens=TOKENS, error_after=1, error_message="out of memory"))
    mot = await scripted_session.ainstruct("x")
    with pytest.raises(BackendResponseError, match="out of memory") as info:
        await mot.avalue()
    assert info.value.status_code == -1


async def test_wait_for_all_mots_resolves_all_then_raises_the_failure(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    def by_prompt(record: RequestRecord) -> Script:  # concurrent requests may arrive in any order
        if record.messages[-1]["content"] == "fails":
            return Script(tokens=TOKENS, error_after=2, error_message="bad")
        return Script(tokens=TOKENS, delay=0.01)

    scripted.set_script(by_prompt)
    thunks = [await scripted_session.ainstruct(p) for p in ("first", "fails", "third")]
    with pytest.raises(BackendResponseError, match="bad"):
        await wait_for_all_mots(thunks)
    assert thunks[0].is_computed() and thunks[2].is_computed()
    assert thunks[0].value == thunks[2].value == "".join(TOKENS)
    assert scripted_session.system.live_thunks() == []  # nothing left running


async def test_wait_for_all_mots_resolves_every_thunk(scripted_session: MelleaSession) -> None:
    thunks = [await scripted_session.ainstruct(f"t{i}") for i in range(3)]
    await wait_for_all_mots(thunks)
    assert all(t.is_computed() and t.value for t in thunks)


# -- blocking use ---------------------------------------------------------------------------------
def test_blocking_wait_and_iteration_from_a_plain_thread(scripted: ScriptedOllama) -> None:
    scripted.enqueue(Script(tokens=TOKENS, delay=0.005), Script(tokens=TOKENS, delay=0.005))
    with start_session(model_id="scripted", base_url=scripted.base_url) as m:
        mot = m._run(m.ainstruct("x", model_options=STREAM))
        assert mot.wait(timeout=5) == "".join(TOKENS)
        mot2 = m._run(m.ainstruct("y", model_options=STREAM))
        assert "".join(mot2.iter_chunks(timeout=5)) == "".join(TOKENS)


def test_leaving_the_blocking_iterator_early_cancels(scripted: ScriptedOllama) -> None:
    scripted.enqueue(Script(tokens=TOKENS * 10, delay=0.02))
    with start_session(model_id="scripted", base_url=scripted.base_url) as m:
        mot = m._run(m.ainstruct("x", model_options=STREAM))
        for chunk in mot.iter_chunks(timeout=5):
            assert chunk
            break
        record = scripted.wait_for_disconnect(-1, 5.0)
        assert record.disconnected_at is not None
        mot.wait(timeout=5)
        assert mot.cancelled


# -- scale: thunks are not threads -------------------------------------------------------------
async def test_thread_count_does_not_grow_with_live_thunks(scripted: ScriptedOllama) -> None:
    # the first token comes well after the last of the 2,000 starts, even on a slow machine
    # (opened in this test's loop, the engine runs on it: the starts and the engine share it)
    scripted.set_script(Script(tokens=["a", "b"], first_delay=2.0))
    with start_session(model_id="scripted", base_url=scripted.base_url) as m:
        baseline = threading.active_count()
        thunks = [await m.ainstruct(f"t{i}") for i in range(2000)]
        assert len(m.system.live_thunks()) > 1000  # most are still live, waiting for the server
        # the loop thread plus, at most, asyncio's bounded resolver pool (min(32, cpus + 4))
        bound = baseline + 1 + min(32, (os.cpu_count() or 1) + 4)
        assert threading.active_count() <= bound
        await wait_for_all_mots(thunks)
        assert all(t.value == "ab" for t in thunks)
        assert threading.active_count() <= bound


async def test_the_seed_loop_prints_a_story_that_finished_before_the_loop(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    """Regression: `while not mot.is_computed(): print(await mot.astream())` printed nothing
    when the generation had ended before the first astream(): is_computed() was already True.
    A streamed thunk is computed once its reader read it (as in Mellea)."""
    scripted.enqueue(Script(tokens=TOKENS))
    mot = await scripted_session.ainstruct("a story", model_options=STREAM)
    await asyncio.to_thread(scripted.wait_for_requests, 1, 5.0, finished=True)
    await asyncio.to_thread(
        scripted_session.system.log.wait_for, "actor_stopped", thunk=mot.request_id, timeout=5
    )
    assert mot.value == "".join(TOKENS)  # it ended …
    printed = []
    while not mot.is_computed():  # … and the seed's loop still runs
        printed.append(await mot.astream())
    assert "".join(printed) == "".join(TOKENS)
    assert mot.is_computed()


async def test_a_streamed_thunk_whose_value_was_taken_is_computed(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script(tokens=TOKENS))
    mot = await scripted_session.ainstruct("a story", model_options=STREAM)
    assert await mot.avalue() == "".join(TOKENS)
    assert mot.is_computed() and str(mot) == "".join(TOKENS)
