"""Wake-ups from the runtime's loop to a reader's loop (runtime/crossing.py, ``_WakeBatch``).

More text of a stream may wait up to ``WAKE_COALESCE`` to travel with other wake-ups; anything
else — a stream's first text, its outcome, a reply — crosses in the runtime loop's next
iteration. (Regression: every wake-up waited for the interval, so a stream's first text and a
cancel's reply came ~1 ms late whenever another wake-up had just crossed.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from mellea_actors.runtime import crossing
from mellea_actors.runtime.crossing import Waker
from mellea_actors.runtime.loop import ActorLoop

WAIT = 5.0


@pytest.fixture
def runtime_loop(monkeypatch: pytest.MonkeyPatch) -> Iterator[ActorLoop]:
    # an interval far longer than the test's waits: a wake-up that waited for it times out
    monkeypatch.setattr(crossing, "WAKE_COALESCE", 60.0)
    loop = ActorLoop(name="mellea-actors-test-wakes").start()
    try:
        yield loop
    finally:
        loop.stop()


async def _woken_from(loop: ActorLoop, *, coalesce: bool) -> None:
    waker = Waker.for_running_loop()
    loop.call_soon(waker.wake, coalesce)
    async with asyncio.timeout(WAIT):
        await waker.wait()


async def test_a_first_wake_crosses_at_once_after_another(runtime_loop: ActorLoop) -> None:
    await _woken_from(runtime_loop, coalesce=False)  # a hand-over just happened
    await _woken_from(runtime_loop, coalesce=False)  # not held back by the interval


async def test_more_text_after_an_idle_interval_crosses_at_once(runtime_loop: ActorLoop) -> None:
    await _woken_from(runtime_loop, coalesce=True)  # nothing crossed before: goes now


async def test_an_urgent_wake_takes_the_waiting_ones_along(runtime_loop: ActorLoop) -> None:
    await _woken_from(runtime_loop, coalesce=False)
    held = Waker.for_running_loop()
    runtime_loop.call_soon(held.wake, True)  # within the interval: waits for company
    await _woken_from(runtime_loop, coalesce=False)  # ... which this one brings at once
    async with asyncio.timeout(WAIT):
        await held.wait()
