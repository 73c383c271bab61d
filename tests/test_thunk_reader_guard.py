"""No way of reading a thunk gets past its single-reader guard (``ThunkCell.claim_reader``).

Three ways of reading the stream of one generation: ``astream()``, a ``ReadNew`` ask to the
thunk's actor (``mot.actor_ref``), and ``iter_chunks()`` from a plain thread. While one of them
holds the claim (it waits for text: the scripted server is still silent), each other one gets
``SingleReaderError`` naming the thunk and the holder, the holder keeps its claim and reads on
unaffected. Once a holder returned, another way of reading works and nothing is lost.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pykka
import pytest

from mellea_actors import MelleaSession, start_session
from mellea_actors.backends import ModelOption
from mellea_actors.core.base import ModelOutputThunk
from mellea_actors.errors import SingleReaderError
from mellea_actors.runtime.loop import ask_async
from mellea_actors.runtime.messages import ReaderGone, ReadNew, StreamRead
from mellea_actors.testing import Script, ScriptedOllama

from .conftest import SCRIPTED_MODEL

STREAM = {ModelOption.STREAM: True}
TOKENS = [f"w{i} " for i in range(10)]
WAIT = 5.0
#: The first token comes 0.3 s after the request: the holder's wait spans the intruder's try.
SILENT_FIRST = Script(tokens=TOKENS, first_delay=0.3, delay=0.005)
PACED = Script(tokens=[f"p{i} " for i in range(20)], delay=0.02)


@pytest.fixture
def session(scripted: ScriptedOllama) -> Iterator[MelleaSession]:
    with start_session(model_id=SCRIPTED_MODEL, base_url=scripted.base_url, check=False) as m:
        yield m


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll a condition set by another thread (bounded; never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.001)


def reader_of(mot: ModelOutputThunk[Any]) -> str | None:
    assert mot.handle is not None
    return mot.handle.cell.reader


def ref_of(mot: ModelOutputThunk[Any]) -> pykka.ActorRef[Any]:
    assert mot.actor_ref is not None
    return mot.actor_ref


# -- the three ways of reading, as holders (they wait for text) and as intruders ------------------
class Holder:
    claim = ""

    async def start(self, mot: ModelOutputThunk[Any]) -> None:
        raise NotImplementedError

    async def finish(self, mot: ModelOutputThunk[Any]) -> tuple[str, bool]:
        """What this reader read, and whether it read up to the end."""
        raise NotImplementedError


class AstreamHolder(Holder):
    claim = "astream()"

    async def start(self, mot: ModelOutputThunk[Any]) -> None:
        self.task = asyncio.create_task(mot.astream())

    async def finish(self, mot: ModelOutputThunk[Any]) -> tuple[str, bool]:
        pieces = [await asyncio.wait_for(self.task, WAIT)]
        assert pieces[0], "the holder's wait returned no text"
        while not mot.is_computed():
            pieces.append(await asyncio.wait_for(mot.astream(), WAIT))
        return "".join(pieces), True


class ReadNewHolder(Holder):
    claim = "a ReadNew ask (reader 7)"

    async def start(self, mot: ModelOutputThunk[Any]) -> None:
        self.future = ref_of(mot).ask(ReadNew(0, reader=7), block=False)

    async def finish(self, mot: ModelOutputThunk[Any]) -> tuple[str, bool]:
        read: StreamRead = await asyncio.wait_for(self.future, WAIT)  # type: ignore[arg-type]
        assert read.text and read.cursor >= 1
        await mot.avalue()
        assert mot.handle is not None and mot.handle.outcome_now is not None
        assert read.text == "".join(mot.handle.outcome_now.deltas[: read.cursor])
        return read.text, False  # a ref-only reader cannot read past the actor's stop


class IterChunksHolder(Holder):
    claim = "iter_chunks()"

    async def start(self, mot: ModelOutputThunk[Any]) -> None:
        self.got: list[str] = []
        self.errors: list[BaseException] = []

        def consume() -> None:
            try:
                self.got.extend(mot.iter_chunks(timeout=WAIT))
            except BaseException as exc:
                self.errors.append(exc)

        self.thread = threading.Thread(target=consume, name="iter-chunks-holder")
        self.thread.start()

    async def finish(self, mot: ModelOutputThunk[Any]) -> tuple[str, bool]:
        await asyncio.to_thread(self.thread.join, WAIT)
        assert not self.thread.is_alive() and not self.errors, self.errors
        return "".join(self.got), True


async def intrude_astream(mot: ModelOutputThunk[Any]) -> None:
    await asyncio.wait_for(mot.astream(), WAIT)


async def intrude_read_new(mot: ModelOutputThunk[Any]) -> None:
    await ask_async(ref_of(mot), ReadNew(0, reader=9), timeout=WAIT)


async def intrude_iter_chunks(mot: ModelOutputThunk[Any]) -> None:
    def first_chunk() -> str:
        return next(iter(mot.iter_chunks(timeout=WAIT)))

    await asyncio.to_thread(first_chunk)


HOLDERS: dict[str, type[Holder]] = {
    "astream": AstreamHolder,
    "ReadNew": ReadNewHolder,
    "iter_chunks": IterChunksHolder,
}
INTRUDERS = {
    "astream": intrude_astream,
    "ReadNew": intrude_read_new,
    "iter_chunks": intrude_iter_chunks,
}
PAIRS = [(h, i) for h in HOLDERS for i in INTRUDERS if h != i]  # same-way pairs: elsewhere


@pytest.mark.parametrize(("holder", "intruder"), PAIRS, ids=[f"{h}-then-{i}" for h, i in PAIRS])
async def test_a_second_way_of_reading_gets_single_reader_error(
    scripted: ScriptedOllama, session: MelleaSession, holder: str, intruder: str
) -> None:
    scripted.enqueue(SILENT_FIRST)
    mot = await session.ainstruct("x", model_options=STREAM)
    first = HOLDERS[holder]()
    await first.start(mot)
    await wait_until(lambda: reader_of(mot) == first.claim, f"{holder} holds the claim")
    assert not mot.partial_value, "the server spoke too early: the holder is not waiting"

    with pytest.raises(SingleReaderError) as info:
        await INTRUDERS[intruder](mot)
    message = str(info.value)
    assert mot.request_id is not None and mot.request_id in message
    assert first.claim in message, f"the error does not name the holder: {message}"
    assert reader_of(mot) == first.claim, "the intruder's failed claim disturbed the holder"

    text, complete = await first.finish(mot)
    value = await mot.avalue()
    assert value == "".join(TOKENS) and not mot.cancelled
    if complete:
        assert text == value, "the holder lost or duplicated text"
    else:
        assert value.startswith(text)
    assert reader_of(mot) is None


# -- after the holder returned, the other way of reading works, nothing lost ---------------------
async def test_astream_then_iter_chunks_reads_the_rest(
    scripted: ScriptedOllama, session: MelleaSession
) -> None:
    scripted.enqueue(PACED)
    mot = await session.ainstruct("x", model_options=STREAM)
    first = await asyncio.wait_for(mot.astream(), WAIT)
    assert first and not mot.is_computed()
    rest = await asyncio.to_thread(lambda: list(mot.iter_chunks(timeout=WAIT)))
    assert rest, "nothing was left for iter_chunks(): the test shows nothing"
    assert first + "".join(rest) == mot.value == PACED.text
    assert not mot.cancelled


async def test_iter_chunks_then_astream_reads_the_rest(
    scripted: ScriptedOllama, session: MelleaSession
) -> None:
    scripted.enqueue(PACED)
    mot = await session.ainstruct("x", model_options=STREAM)

    def one_chunk() -> str:
        for chunk in mot.iter_chunks(timeout=WAIT):
            return chunk  # leaving early cancels the generation (documented)
        raise AssertionError("no chunk")

    first = await asyncio.to_thread(one_chunk)
    assert reader_of(mot) is None
    rest = []
    while not mot.is_computed():
        rest.append(await asyncio.wait_for(mot.astream(), WAIT))
    assert first + "".join(rest) == mot.value
    assert mot.cancelled and PACED.text.startswith(mot.value or "")


async def test_astream_then_read_new_from_its_cursor(
    scripted: ScriptedOllama, session: MelleaSession
) -> None:
    scripted.enqueue(PACED)
    mot = await session.ainstruct("x", model_options=STREAM)
    first = await asyncio.wait_for(mot.astream(), WAIT)
    assert mot.handle is not None
    cursor = mot.handle.cursor
    read = await ask_async(ref_of(mot), ReadNew(cursor, reader=3), timeout=WAIT)
    assert read.text and read.cursor > cursor
    value = await mot.avalue()
    assert mot.handle.outcome_now is not None
    assert first + read.text == "".join(mot.handle.outcome_now.deltas[: read.cursor])
    assert value.startswith(first + read.text) and value == PACED.text


async def test_read_new_then_astream_reads_everything(
    scripted: ScriptedOllama, session: MelleaSession
) -> None:
    scripted.enqueue(PACED)
    mot = await session.ainstruct("x", model_options=STREAM)
    read = await ask_async(ref_of(mot), ReadNew(0, reader=3), timeout=WAIT)
    assert read.text and reader_of(mot) is None
    pieces = []
    while not mot.is_computed():
        pieces.append(await asyncio.wait_for(mot.astream(), WAIT))
    assert "".join(pieces) == mot.value == PACED.text  # astream's reader has its own cursor
    assert mot.value.startswith(read.text)


async def test_a_read_new_asker_that_left_releases_the_claim(
    scripted: ScriptedOllama, session: MelleaSession
) -> None:
    scripted.enqueue(SILENT_FIRST)
    mot = await session.ainstruct("x", model_options=STREAM)
    pending = ref_of(mot).ask(ReadNew(0, reader=5), block=False)
    await wait_until(lambda: reader_of(mot) is not None, "the ReadNew ask holds the claim")
    ref_of(mot).tell(ReaderGone(reader=6))  # somebody else's reader: nothing changes
    with pytest.raises(SingleReaderError):
        await ask_async(ref_of(mot), ReadNew(0, reader=9), timeout=WAIT)
    ref_of(mot).tell(ReaderGone(reader=5))
    await wait_until(lambda: reader_of(mot) is None, "ReaderGone released the claim")
    with pytest.raises(pykka.ActorDeadError):
        await asyncio.wait_for(pending, WAIT)  # type: ignore[arg-type]
    pieces = []
    while not mot.is_computed():
        pieces.append(await asyncio.wait_for(mot.astream(), WAIT))
    assert "".join(pieces) == mot.value == "".join(TOKENS)
