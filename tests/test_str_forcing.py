"""``str(thunk)`` forces the thunk (SPEC §3): it waits for the value and returns it.

From the caller's loop (blocking it is fine: the generation runs on the runtime's own loop
thread), from another thread whose own loop is running, and raising the generation's error if
it failed. On the runtime's loop thread (inside an async validator) it raises at once instead
of deadlocking. ``repr`` never blocks; ``value`` stays None until the end.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from mellea_actors import MelleaSession
from mellea_actors.backends import ModelOption
from mellea_actors.core.backend import Backend
from mellea_actors.core.base import Context, ModelOutputThunk
from mellea_actors.core.requirement import PartialValidationResult, Requirement, ValidationResult
from mellea_actors.errors import BackendResponseError
from mellea_actors.stdlib.components import Instruction
from mellea_actors.stdlib.streaming import stream_with_chunking
from mellea_actors.testing import RequestRecord, Script, ScriptedOllama

STREAM = {ModelOption.STREAM: True}
TOKENS = [f"w{i} " for i in range(12)]
TEXT = "".join(TOKENS)
WAIT = 10.0
#: Paced so that the generation is still running when str() is called.
PACED = Script(tokens=TOKENS, first_delay=0.1, delay=0.01)


async def test_str_of_a_pending_thunk_waits_and_returns_the_full_text(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(PACED)
    mot = await scripted_session.ainstruct("Write a haiku about concurrency.")
    assert not mot.is_computed() and mot.value is None
    assert str(mot) == TEXT  # blocks this loop until the end: the generation is elsewhere
    assert mot.value == TEXT and mot.is_computed()
    assert f"{mot}" == format(mot, "") == TEXT
    assert f"{mot:>{len(TEXT) + 2}}" == "  " + TEXT
    assert scripted.requests[-1].outcome == "completed"


async def test_str_looks_at_a_streamed_value_without_taking_it(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    """The seed's streaming loop still prints the whole story after a str() (e.g. a log line)."""
    scripted.enqueue(PACED)
    mot = await scripted_session.ainstruct("x", model_options=STREAM)
    assert str(mot) == TEXT
    assert not mot.is_computed()  # a streamed thunk is computed once its reader read it
    pieces = []
    while not mot.is_computed():
        pieces.append(await mot.astream())
    assert "".join(pieces) == mot.value == TEXT


async def test_str_from_a_thread_whose_own_loop_is_running(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(PACED)
    mot = await scripted_session.ainstruct("x")

    async def in_other_loop() -> tuple[str, bool]:
        asyncio.get_running_loop()  # a loop is running in this thread
        return str(mot), mot.is_computed()

    text, computed = await asyncio.wait_for(asyncio.to_thread(asyncio.run, in_other_loop()), WAIT)
    assert text == TEXT and computed


async def test_str_of_a_failed_thunk_raises_its_error_every_time(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script(tokens=TOKENS, first_delay=0.1, error_after=3, error_message="boom"))
    mot = await scripted_session.ainstruct("x", model_options=STREAM)
    for _ in range(2):
        with pytest.raises(BackendResponseError, match="boom"):
            str(mot)
    with pytest.raises(BackendResponseError, match="boom"):
        f"{mot}"
    assert mot.value is None and mot.partial_value == "".join(TOKENS[:3])
    assert "failed" in repr(mot)


async def test_repr_never_blocks_and_value_stays_none(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script(tokens=TOKENS, stall_after=2))  # silent until the client leaves
    mot = await scripted_session.ainstruct("x", model_options=STREAM)
    got = ""
    while got != "".join(TOKENS[:2]):  # both tokens before the stall have arrived
        got += await asyncio.wait_for(mot.astream(), WAIT)
    started = time.monotonic()
    text = repr(mot)
    assert time.monotonic() - started < 0.5
    assert "streaming" in text and "value=None" in text
    assert mot.value is None and not mot.is_computed()
    await mot.cancel()
    assert str(mot) == mot.value == "".join(TOKENS[:2])  # a cancelled thunk: its partial text


def test_manual_thunks_stringify_without_a_generation() -> None:
    assert str(ModelOutputThunk("done")) == "done" == f"{ModelOutputThunk('done')}"
    assert str(ModelOutputThunk()) == ""


class _StrOfAThunk(Requirement):
    """An async validator (it runs on the runtime's loop thread) calling str() on thunks."""

    def __init__(self, pending: ModelOutputThunk[Any], ended: ModelOutputThunk[Any]) -> None:
        super().__init__("str of a thunk")
        self.pending = pending
        self.ended = ended
        self.seen: list[Any] = []  # shared with the test (a shallow copy keeps the list)

    async def stream_validate(
        self, chunk: str, *, backend: Backend, ctx: Context
    ) -> PartialValidationResult:
        started = time.monotonic()
        try:
            str(self.pending)
        except RuntimeError as exc:
            self.seen.append((exc, time.monotonic() - started))
        self.seen.append(str(self.ended))  # an ended thunk: no wait, no error
        return PartialValidationResult("pass")

    async def validate(self, *args: Any, **kwargs: Any) -> ValidationResult:
        return ValidationResult(True)


async def test_str_on_the_runtime_loop_thread_raises_at_once(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    def by_prompt(record: RequestRecord) -> Script:  # concurrent requests, any order
        prompt = record.messages[-1]["content"]
        if prompt == "pending":
            return Script(tokens=TOKENS, stall_after=1)
        if prompt == "ended":
            return Script(tokens=["done"])
        return Script.from_text("One sentence. Two sentences.")

    scripted.set_script(by_prompt)
    pending = await scripted_session.ainstruct("pending", model_options=STREAM)
    ended = await scripted_session.ainstruct("ended")
    assert await ended.avalue() == "done"
    req = _StrOfAThunk(pending, ended)
    result = await stream_with_chunking(
        Instruction("x"), scripted_session.backend, scripted_session.ctx, requirements=[req]
    )
    await result.acomplete(timeout=WAIT)
    assert result.completed
    errors = [item for item in req.seen if isinstance(item, tuple)]
    assert len(errors) == 2  # one per chunk
    for exc, elapsed in errors:
        assert "loop thread" in str(exc) and "avalue()" in str(exc)
        assert pending.request_id is not None and pending.request_id in str(exc)
        assert elapsed < 0.5
    assert [item for item in req.seen if isinstance(item, str)] == ["done", "done"]
    assert not pending.is_computed()
    await pending.cancel()
