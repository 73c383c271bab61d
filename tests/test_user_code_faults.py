"""User code on the runtime's loop (validators, chunkers, requirement ``validate``) can end only
its own stream or call, whatever it raises — ``BaseException`` included — and a
``KeyboardInterrupt`` comes back in the caller's thread instead of being swallowed.

Before: a validator raising ``SystemExit``/``KeyboardInterrupt`` killed the session's loop; an
unrelated thunk ended "cancelled" with no error, later requests hung and ``close()`` took 10 s.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from typing import Any

import pytest

from mellea_actors import MelleaSession
from mellea_actors.backends import ModelOption
from mellea_actors.core.backend import Backend
from mellea_actors.core.base import Context
from mellea_actors.core.requirement import PartialValidationResult, Requirement, ValidationResult
from mellea_actors.stdlib.chunking import ChunkingStrategy
from mellea_actors.stdlib.components import Instruction
from mellea_actors.stdlib.streaming import (
    CompletedEvent,
    ErrorEvent,
    StreamEvent,
    stream_with_chunking,
)
from mellea_actors.testing import Script, ScriptedOllama

WAIT = 10.0
STREAM = {ModelOption.STREAM: True}
SENTENCES = Script.from_text("One. Two. Three. Four. Five. Six.", delay=0.005)


class _Custom(BaseException):
    """A BaseException that is neither an Exception nor a known interrupt."""


class Raising(Requirement):
    """Raises ``exc`` on its second chunk."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__("raises")
        self.exc = exc
        self.count = 0

    async def stream_validate(
        self, chunk: str, *, backend: Backend, ctx: Context
    ) -> PartialValidationResult:
        self.count += 1
        if self.count == 2:
            raise self.exc
        return PartialValidationResult("pass")

    def __deepcopy__(self, memo: dict[int, Any]) -> Raising:
        return Raising(self.exc)


async def _events(session: MelleaSession, **kwargs: Any) -> tuple[list[StreamEvent], Any]:
    result = await stream_with_chunking(Instruction("x"), session.backend, session.ctx, **kwargs)
    async with asyncio.timeout(WAIT):
        events = [e async for e in result.events()]
    return events, result


@pytest.mark.parametrize(
    "exc",
    [SystemExit(3), KeyboardInterrupt(), _Custom("odd"), GeneratorExit()],
    ids=["SystemExit", "KeyboardInterrupt", "BaseException", "GeneratorExit"],
)
async def test_a_validator_raising_a_base_exception_ends_only_its_stream(
    scripted: ScriptedOllama, scripted_session: MelleaSession, exc: BaseException
) -> None:
    bystander_script = Script(tokens=tuple(f"b{i} " for i in range(30)), delay=0.01)
    scripted.set_script(
        lambda record: bystander_script if "bystander" in str(record.messages) else SENTENCES
    )
    bystander = await scripted_session.ainstruct("bystander", model_options=STREAM)
    events, result = await _events(scripted_session, requirements=[Raising(exc)])
    error = events[-2]
    assert isinstance(error, ErrorEvent) and type(exc).__name__ in error.detail
    assert isinstance(events[-1], CompletedEvent) and not events[-1].success
    # the unrelated thunk of the same session never noticed
    assert await asyncio.wait_for(bystander.avalue(), WAIT) == bystander_script.text
    assert bystander.status == "computed" and bystander.error is None
    # the session goes on serving, and closes at once
    scripted.set_script(Script(tokens=("fine",)))
    assert await asyncio.wait_for((await scripted_session.ainstruct("after")).avalue(), WAIT)
    if isinstance(exc, KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):  # never swallowed: re-raised in the caller
            await result.acomplete(timeout=WAIT)
    else:
        with pytest.raises(Exception, match=type(exc).__name__):
            await result.acomplete(timeout=WAIT)
    started = time.monotonic()
    await asyncio.to_thread(scripted_session.close)
    assert time.monotonic() - started < 3.0


class InterruptingChunker(ChunkingStrategy):
    """Splits on spaces; raises KeyboardInterrupt once the text holds "Three"."""

    def split(self, accumulated: str) -> list[str]:
        if "Three" in accumulated:
            raise KeyboardInterrupt
        return accumulated.split(" ")[:-1]

    def flush(self, accumulated: str) -> list[str]:
        return accumulated.split(" ")


async def test_a_chunker_raising_keyboard_interrupt_ends_only_its_stream(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.set_script(SENTENCES)
    events, result = await _events(scripted_session, chunking=InterruptingChunker())
    assert isinstance(events[-2], ErrorEvent) and "KeyboardInterrupt" in events[-2].detail
    with pytest.raises(KeyboardInterrupt):
        await result.acomplete(timeout=WAIT)
    assert await asyncio.wait_for((await scripted_session.ainstruct("after")).avalue(), WAIT)


def test_a_requirement_validate_raising_keyboard_interrupt_in_a_sync_call(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    """A sync method runs its coroutine on the runtime's loop: a KeyboardInterrupt there is
    re-raised in the calling thread, and the loop lives on."""

    def interrupting(ctx: Context) -> ValidationResult:
        raise KeyboardInterrupt

    scripted.set_script(Script(tokens=("fine",)))
    with pytest.raises(KeyboardInterrupt):
        scripted_session.validate(Requirement("x", validation_fn=interrupting), output="text")
    assert scripted_session.instruct("still works").value == "fine"


def test_ctrl_c_during_a_sync_instruct_cancels_its_generation(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    """Regression: Ctrl-C caught in a REPL during m.instruct() left Ollama generating: the
    thunk never reached the caller, so nothing could cancel it."""
    scripted.set_script(Script(tokens=tuple(f"t{i} " for i in range(200)), delay=0.05))

    main = threading.main_thread().ident
    assert main == threading.get_ident()

    def press_ctrl_c() -> None:
        scripted.wait_for_requests(1, WAIT)
        assert main is not None
        signal.pthread_kill(main, signal.SIGINT)  # what Ctrl-C does: SIGINT to the main thread

    presser = threading.Thread(target=press_ctrl_c, daemon=True)
    presser.start()
    with pytest.raises(KeyboardInterrupt):
        scripted_session.instruct("a long story")
    presser.join(WAIT)
    record = scripted.wait_for_disconnect(0, WAIT)
    assert record.disconnected_at is not None and record.tokens_sent < 200
    cancelled = scripted_session.system.log.wait_for("generation_cancelled", timeout=WAIT)
    assert "interrupted" in (cancelled["reason"] or "")


class SleepsSync(Requirement):
    """A plain-def stream_validate that blocks its thread (time.sleep) on the second chunk."""

    def __init__(self, seconds: float) -> None:
        super().__init__("sleeps")
        self.seconds = seconds
        self.count = 0

    def _judge(self) -> PartialValidationResult:
        self.count += 1
        if self.count == 2:
            time.sleep(self.seconds)
        return PartialValidationResult("pass")

    def stream_validate(  # type: ignore[override]
        self, chunk: str, *, backend: Backend, ctx: Context
    ) -> PartialValidationResult:
        return self._judge()


class SleepsAsync(SleepsSync):
    """An async stream_validate that blocks the loop anyway (time.sleep, not asyncio.sleep)."""

    async def stream_validate(  # type: ignore[override]
        self, chunk: str, *, backend: Backend, ctx: Context
    ) -> PartialValidationResult:
        return self._judge()


async def test_a_blocking_sync_validator_stalls_no_other_stream_and_misses_its_deadline(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    """Regression: a blocking (synchronous) stream_validate froze every stream of the session
    and validator_timeout was never enforced for it (a 0.6 s check passed a 0.5 s deadline)."""
    bystander_script = Script(tokens=tuple(f"b{i} " for i in range(60)), delay=0.02)
    scripted.set_script(
        lambda record: bystander_script if "bystander" in str(record.messages) else SENTENCES
    )
    bystander = await scripted_session.ainstruct("bystander", model_options=STREAM)
    result = await stream_with_chunking(
        Instruction("x"),
        scripted_session.backend,
        scripted_session.ctx,
        requirements=[SleepsSync(1.5)],
        validator_timeout=0.5,
    )
    gaps: list[float] = []
    last = time.monotonic()
    while not bystander.is_computed():
        await asyncio.wait_for(bystander.astream(), WAIT)
        now = time.monotonic()
        gaps.append(now - last)
        last = now
    async with asyncio.timeout(WAIT):
        events = [e async for e in result.events()]
    error = events[-2]
    assert isinstance(error, ErrorEvent) and error.exception_type == "ValidatorTimeoutError"
    assert max(gaps) < 0.5, f"another stream stalled {max(gaps):.2f} s"
    started = time.monotonic()
    await asyncio.to_thread(scripted_session.close)
    assert time.monotonic() - started < 3.0


async def test_the_deadline_holds_for_an_async_validator_that_blocks_the_loop(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.set_script(SENTENCES)
    result = await stream_with_chunking(
        Instruction("x"),
        scripted_session.backend,
        scripted_session.ctx,
        requirements=[SleepsAsync(0.6)],
        validator_timeout=0.5,
    )
    async with asyncio.timeout(WAIT):
        events = [e async for e in result.events()]
    error = events[-2]
    assert isinstance(error, ErrorEvent) and error.exception_type == "ValidatorTimeoutError"
