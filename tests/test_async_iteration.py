"""``async for delta in mot`` (Mellea 0.8): owning the consumption of a thunk.

The iteration yields the deltas (their concatenation is the value) and is the thunk's single
reader for its whole life. Leaving it before the end — ``break``, an exception, the consuming
task cancelled (inside ``__anext__`` or in the loop body, as an ASGI server does when its client
leaves) — cancels the generation: the scripted server records the disconnect within
milliseconds, with the garbage collector disabled (the close is deterministic). ``async with
mot:`` and ``mot.aclose()`` cancel an unfinished generation. ``astream()`` keeps polling
semantics: a cancelled call loses nothing and stops nothing.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from mellea_actors import MelleaSession
from mellea_actors.backends import ModelOption
from mellea_actors.core.base import ModelOutputThunk
from mellea_actors.errors import BackendResponseError, SingleReaderError
from mellea_actors.testing import RequestRecord, Script, ScriptedOllama

STREAM = {ModelOption.STREAM: True}
TOKENS = [f"w{i} " for i in range(12)]
TEXT = "".join(TOKENS)
WAIT = 10.0
#: A leave is "prompt" if the server sees the disconnect within this many seconds of it.
PROMPT = 0.5
#: Long and paced: still generating when the consumer leaves.
LONG = Script(tokens=TOKENS * 20, delay=0.01)
#: Silent after two tokens, until the client leaves.
STALLS = Script(tokens=TOKENS, stall_after=2)
#: Nothing for 0.3 s: a reader that started waits through another one's attempt.
SILENT_FIRST = Script(tokens=TOKENS, first_delay=0.3, delay=0.005)


@pytest.fixture
def no_gc() -> Iterator[None]:
    """Reference counting only: what closes the stream cannot be the garbage collector."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def disconnect_of(scripted: ScriptedOllama) -> RequestRecord:
    record = await asyncio.to_thread(scripted.wait_for_disconnect, -1, WAIT)
    assert record.disconnected_at is not None  # (the outcome is recorded just after)
    return record


async def assert_prompt_cancel(
    scripted: ScriptedOllama, mot: ModelOutputThunk[Any], left_at: float
) -> None:
    record = await disconnect_of(scripted)
    assert record.disconnected_at is not None
    assert record.disconnected_at - left_at < PROMPT
    value = await asyncio.wait_for(mot.avalue(), WAIT)
    assert mot.cancelled and mot.is_computed() and value == mot.value
    assert mot.handle is not None and mot.handle.cell.reader is None  # the claim was released


async def started(
    scripted: ScriptedOllama, session: MelleaSession, script: Script, options: Any = STREAM
) -> ModelOutputThunk[Any]:
    """A generation of ``script`` (streamed unless ``options`` says otherwise)."""
    scripted.enqueue(script)
    return await session.ainstruct("x", model_options=options)


async def first_delta(mot: ModelOutputThunk[Any]) -> str:
    """Start an iteration, take one delta and break (the iterator is dropped by the loop)."""
    async for delta in mot:
        return delta
    raise AssertionError("no delta")


# -- reading --------------------------------------------------------------------------------
@pytest.mark.parametrize("options", [STREAM, {}], ids=["streamed", "not-streamed"])
async def test_async_for_yields_deltas_whose_concatenation_is_the_value(
    scripted: ScriptedOllama, scripted_session: MelleaSession, options: dict[Any, Any]
) -> None:
    mot = await started(scripted, scripted_session, Script(tokens=TOKENS, delay=0.01), options)
    assert not mot.is_computed()
    async with asyncio.timeout(WAIT):
        deltas = [delta async for delta in mot]
    assert "".join(deltas) == mot.value == TEXT
    assert all(deltas)
    assert (len(deltas) >= 2) if options else (deltas == [TEXT])
    assert mot.is_computed() and not mot.cancelled
    assert [d async for d in mot] == []  # a later iteration goes on from the cursor: the end
    assert await mot.astream() == ""
    assert scripted.requests[-1].outcome == "completed"


async def test_async_for_of_a_failed_generation_yields_its_text_then_raises(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    mot = await started(
        scripted, scripted_session, Script(tokens=TOKENS, error_after=4, error_message="boom")
    )
    got: list[str] = []
    with pytest.raises(BackendResponseError, match="boom"):
        async with asyncio.timeout(WAIT):
            async for delta in mot:
                got.append(delta)
    assert "".join(got) == "".join(TOKENS[:4]) == mot.partial_value
    with pytest.raises(BackendResponseError):  # raised again, no hang
        async with asyncio.timeout(WAIT):
            _ = [d async for d in mot]


async def test_async_for_of_a_manual_thunk_yields_its_value() -> None:
    assert [d async for d in ModelOutputThunk("done")] == ["done"]
    assert [d async for d in ModelOutputThunk("")] == []


async def test_a_second_concurrent_iteration_raises_single_reader_error(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    mot = await started(scripted, scripted_session, SILENT_FIRST)
    it = aiter(mot)
    first = asyncio.ensure_future(anext(it))
    assert mot.handle is not None
    async with asyncio.timeout(WAIT):
        while mot.handle.cell.reader is None:  # the first iteration claimed the thunk
            await asyncio.sleep(0)
    assert not first.done()
    with pytest.raises(SingleReaderError, match=mot.request_id or "?"):
        async for _ in mot:
            pass
    with pytest.raises(SingleReaderError):
        await mot.astream()
    assert mot.handle.cell.reader == "async for"  # the holder kept its claim
    async with asyncio.timeout(WAIT):
        rest = [await first] + [d async for d in it]
    assert "".join(rest) == TEXT and not mot.cancelled


# -- leaving before the end cancels ---------------------------------------------------------
async def test_break_cancels_the_generation_promptly(
    scripted: ScriptedOllama, scripted_session: MelleaSession, no_gc: None
) -> None:
    mot = await started(scripted, scripted_session, LONG)
    async with asyncio.timeout(WAIT):
        async for delta in mot:
            assert delta
            break
    left_at = time.monotonic()
    assert mot.handle is not None and mot.handle.cell.reader is None  # released at the break
    await assert_prompt_cancel(scripted, mot, left_at)
    events = scripted_session.system.log.events(thunk=mot.request_id, event="generation_cancelled")
    assert events and "async for" in events[0]["reason"]


async def test_return_from_inside_the_loop_cancels(
    scripted: ScriptedOllama, scripted_session: MelleaSession, no_gc: None
) -> None:
    mot = await started(scripted, scripted_session, LONG)
    assert await asyncio.wait_for(first_delta(mot), WAIT)
    await assert_prompt_cancel(scripted, mot, time.monotonic())


async def test_an_exception_in_the_loop_body_cancels(
    scripted: ScriptedOllama, scripted_session: MelleaSession, no_gc: None
) -> None:
    mot = await started(scripted, scripted_session, LONG)
    with pytest.raises(ValueError, match="consumer broke"):
        async with asyncio.timeout(WAIT):
            async for _ in mot:
                raise ValueError("consumer broke")
    await assert_prompt_cancel(scripted, mot, time.monotonic())


async def test_cancelling_the_consumer_while_it_waits_for_a_delta_cancels(
    scripted: ScriptedOllama, scripted_session: MelleaSession, no_gc: None
) -> None:
    mot = await started(scripted, scripted_session, STALLS)
    got: list[str] = []
    two = asyncio.Event()

    async def consume() -> None:
        async for delta in mot:
            got.append(delta)
            if len("".join(got)) >= len("".join(TOKENS[:2])):
                two.set()  # next: waiting inside __anext__ (the server is silent)

    task = asyncio.create_task(consume())
    await asyncio.wait_for(two.wait(), WAIT)
    assert mot.handle is not None
    async with asyncio.timeout(WAIT):
        while mot.handle.cell.waker is None:  # parked, waiting for the next delta
            await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await assert_prompt_cancel(scripted, mot, time.monotonic())
    assert mot.value == "".join(TOKENS[:2]) == "".join(got)


async def test_cancelling_the_consumer_in_the_loop_body_cancels_as_asgi_does(
    scripted: ScriptedOllama, scripted_session: MelleaSession, no_gc: None
) -> None:
    """A streaming response: the body is an async generator over the thunk, the server's task
    awaits ``send`` for each piece and is cancelled when the HTTP client leaves."""
    mot = await started(scripted, scripted_session, LONG)
    sending = asyncio.Event()
    client_gone = asyncio.Event()  # never set: the client does not read any more

    async def body() -> AsyncIterator[str]:
        async for delta in mot:
            yield delta

    async def send(piece: str) -> None:
        sending.set()
        await client_gone.wait()

    async def respond() -> None:
        async for piece in body():
            await send(piece)

    task = asyncio.create_task(respond())
    await asyncio.wait_for(sending.wait(), WAIT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await assert_prompt_cancel(scripted, mot, time.monotonic())


async def test_aclose_of_a_kept_iterator_cancels(
    scripted: ScriptedOllama, scripted_session: MelleaSession, no_gc: None
) -> None:
    mot = await started(scripted, scripted_session, LONG)
    it: Any = aiter(mot)
    assert await asyncio.wait_for(anext(it), WAIT)
    await it.aclose()
    await assert_prompt_cancel(scripted, mot, time.monotonic())
    await it.aclose()  # idempotent


# -- async with / aclose on the thunk ----------------------------------------------------------
async def test_thunk_aclose_cancels_an_unfinished_generation(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    mot = await started(scripted, scripted_session, STALLS)
    assert await asyncio.wait_for(mot.astream(), WAIT)
    await mot.aclose()
    assert mot.cancelled and mot.status == "cancelled"  # aclose() waited for the end
    await disconnect_of(scripted)
    await mot.aclose()  # no-op once ended


async def test_leaving_async_with_cancels_an_unfinished_generation(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    mot = await started(scripted, scripted_session, STALLS)
    async with mot as same:
        assert same is mot
        assert await asyncio.wait_for(mot.astream(), WAIT)
    assert mot.cancelled and mot.status == "cancelled"
    await disconnect_of(scripted)


async def test_async_with_around_a_full_iteration_cancels_nothing(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    mot = await started(scripted, scripted_session, Script(tokens=TOKENS, delay=0.005))
    async with asyncio.timeout(WAIT), mot:
        text = "".join([d async for d in mot])
    assert text == mot.value == TEXT and not mot.cancelled
    assert scripted.requests[-1].outcome == "completed"


# -- astream() polls: cancelling a call loses nothing, stops nothing ----------------------------
async def test_cancelled_astream_calls_lose_nothing_then_async_for_takes_the_rest(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    mot = await started(scripted, scripted_session, Script(tokens=TOKENS, first_delay=0.2))
    for _ in range(3):  # polls that give up (each cancelled while it waits)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(mot.astream(), timeout=0.01)
    assert mot.handle is not None and mot.handle.cell.reader is None
    async with asyncio.timeout(WAIT):
        first = await mot.astream()
        rest = [d async for d in mot]  # owning the rest of the consumption
    assert first + "".join(rest) == mot.value == TEXT
    assert not mot.cancelled and scripted.requests[-1].outcome == "completed"
