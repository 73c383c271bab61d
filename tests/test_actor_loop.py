"""LoopActor: pykka's actor surface on a shared event-loop thread."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pykka
import pytest

from mellea_actors.errors import AskTimeoutError, InvalidInputError
from mellea_actors.runtime.crossing import (
    SWITCH_INTERVAL,
    SWITCH_INTERVAL_ENV,
    CallBatch,
    Waker,
    hop,
)
from mellea_actors.runtime.loop import ActorLoop, LoopActor, actor_here, ask_async, tell_here


class Echo(LoopActor):
    kind = "echo"

    def __init__(self, actor_loop: ActorLoop, crashes: list[str] | None = None) -> None:
        super().__init__(actor_loop)
        self.crashes = crashes if crashes is not None else []
        self.seen: list[Any] = []

    def on_receive(self, message: Any) -> Any:
        if message == "raise":
            raise ValueError("boom")
        if message == "cancelled":
            raise asyncio.CancelledError("a BaseException in a handler")
        if message == "later":
            fut = self.actor_loop.loop.create_future()
            self.actor_loop.loop.call_soon(fut.set_result, "deferred")
            return fut
        if message == "never":
            return self.actor_loop.loop.create_future()
        self.seen.append(message)
        return (message, threading.current_thread().name)

    def double(self, x: int) -> int:
        return 2 * x

    def on_crash(self, exc_info: Any) -> None:
        self.crashes.append(repr(exc_info[1]))


@pytest.fixture
def actor_loop() -> Iterator[ActorLoop]:
    loop = ActorLoop(name="mellea-actors-test").start()
    yield loop
    assert loop.stop(timeout=5)


def test_tell_ask_and_proxy_run_on_the_loop_thread(actor_loop: ActorLoop) -> None:
    ref = Echo.start(actor_loop)
    reply = ref.ask("hi", timeout=5)
    assert reply == ("hi", actor_loop.thread.name)
    assert ref.proxy().double(21).get(timeout=5) == 42
    for i in range(100):
        ref.tell(i)
    assert ref.ask("last", timeout=5)[0] == "last"
    assert ref.proxy().seen.get(timeout=5) == ["hi", *range(100), "last"]  # FIFO per sender


def test_actors_do_not_take_a_thread_each(actor_loop: ActorLoop) -> None:
    before = threading.active_count()
    refs = [Echo.start(actor_loop) for _ in range(2000)]
    assert all(r.ask("x", timeout=5)[0] == "x" for r in refs[::100])
    assert threading.active_count() == before


def test_ask_failure_goes_back_and_the_actor_lives(actor_loop: ActorLoop) -> None:
    ref = Echo.start(actor_loop)
    with pytest.raises(ValueError, match="boom"):
        ref.ask("raise", timeout=5)
    assert ref.is_alive() and ref.ask("ok", timeout=5)[0] == "ok"


def test_tell_failure_crashes_only_that_actor_and_is_reported(actor_loop: ActorLoop) -> None:
    crashes: list[str] = []
    victim = Echo.start(actor_loop, crashes)
    bystander = Echo.start(actor_loop)
    victim.tell("raise")
    with contextlib.suppress(pykka.ActorDeadError):  # it may have crashed already
        victim.tell("cancelled")
    with pytest.raises(pykka.ActorDeadError):
        victim.ask("anyone?", timeout=5)  # answered, never dropped
    assert crashes == ["ValueError('boom')"]
    assert bystander.ask("still here", timeout=5)[0] == "still here"


def test_base_exception_in_a_handler_does_not_stop_other_actors(actor_loop: ActorLoop) -> None:
    crashes: list[str] = []
    victim = Echo.start(actor_loop, crashes)
    others = [Echo.start(actor_loop) for _ in range(3)]
    victim.tell("cancelled")
    with pytest.raises(pykka.ActorDeadError):
        victim.ask("x", timeout=5)
    assert len(crashes) == 1 and "CancelledError" in crashes[0]
    assert all(o.ask("y", timeout=5)[0] == "y" for o in others)


def test_deferred_replies_and_stop_answer_pending_asks(actor_loop: ActorLoop) -> None:
    ref = Echo.start(actor_loop)
    assert ref.ask("later", timeout=5) == "deferred"
    with pytest.raises(pykka.Timeout):
        ref.ask("never", timeout=0.05)
    assert ref.stop(timeout=5) is True
    with pytest.raises(pykka.ActorDeadError):
        ref.ask("after stop", timeout=5)


def test_ask_racing_stop_is_always_answered(actor_loop: ActorLoop) -> None:
    for _ in range(200):
        ref = Echo.start(actor_loop)
        future = ref.ask("x", block=False)
        ref.stop(block=False)
        late = ref.ask("y", block=False)
        assert future.get(timeout=5)[0] == "x"
        try:  # either answer is fine; pykka.Timeout (an unanswered ask) is the failure
            answer = late.get(timeout=5)[0]
        except pykka.ActorDeadError:
            answer = "dead"
        assert answer in {"y", "dead"}


async def test_awaiting_an_ask_does_not_block_the_event_loop(actor_loop: ActorLoop) -> None:
    ref = Echo.start(actor_loop)
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    replies = await asyncio.gather(*(ref.ask(i, block=False) for i in range(200)))
    stop.set()
    await task
    assert [r[0] for r in replies] == list(range(200))
    assert ticks > 0  # the loop kept running while we waited
    assert await ask_async(ref, "later", timeout=5) == "deferred"
    with pytest.raises(AskTimeoutError):
        await ask_async(ref, "never", timeout=0.05)


def test_blocking_get_on_the_loop_thread_raises_instead_of_deadlocking(
    actor_loop: ActorLoop,
) -> None:
    ref = Echo.start(actor_loop)

    async def inside() -> str:
        future = ref.ask("never", block=False)
        try:
            future.get(timeout=1)
        except RuntimeError as exc:
            return str(exc)
        return "no error"

    assert "deadlock" in actor_loop.run_sync(inside(), timeout=5)


def test_stopped_loop_rejects_work_and_its_thread_ends() -> None:
    loop = ActorLoop(name="mellea-actors-test").start()
    ref = Echo.start(loop)
    assert loop.stop(timeout=5)
    assert not loop.thread.is_alive()
    with pytest.raises(pykka.ActorDeadError):
        ref.ask("x", timeout=1)


def test_tell_here_is_handled_at_once_on_the_loop_and_queued_elsewhere(
    actor_loop: ActorLoop,
) -> None:
    ref = Echo.start(actor_loop)
    seen_at_once: list[bool] = []

    def on_loop() -> None:
        echo = ref.actor_inbox._actor  # type: ignore[attr-defined]
        before = len(echo.seen)
        tell_here(ref, "now")
        seen_at_once.append(len(echo.seen) == before + 1)  # handled before tell_here returned

    done = threading.Event()
    actor_loop.call_soon(lambda: (on_loop(), done.set()))
    assert done.wait(5.0) and seen_at_once == [True]
    tell_here(ref, "from a thread")  # queued: handled later, on the loop thread
    assert ref.ask("sync", timeout=5.0)[1] == actor_loop.thread.name
    echo = ref.actor_inbox._actor  # type: ignore[attr-defined]
    assert echo.seen == ["now", "from a thread", "sync"]
    ref.stop()
    with pytest.raises(pykka.ActorDeadError):
        tell_here(ref, "late")


class _Taker(LoopActor):
    """Takes values by a direct call (the generator's deltas path), and looks for itself with
    actor_here from inside its own handler."""

    def __init__(self, actor_loop: ActorLoop, crashes: list[str]) -> None:
        super().__init__(actor_loop)
        self.taken: list[int] = []
        self.inside: list[object] = []
        self.crashes = crashes

    def take(self, value: int) -> None:
        if value < 0:
            raise ValueError(f"cannot take {value}")
        self.taken.append(value)

    def on_receive(self, message: Any) -> Any:
        self.inside.append(actor_here(self.actor_ref))  # handling: not callable at once
        return message

    def on_crash(self, exc_info: Any) -> None:
        self.crashes.append(repr(exc_info[1]))


def test_actor_here_gives_the_actor_only_where_its_code_may_run_at_once(
    actor_loop: ActorLoop,
) -> None:
    """The generator calls the thunk actor's take_deltas directly (no message) exactly when
    tell_here would handle at once: on the actor's loop, not inside one of its handlers, not
    stopped. Elsewhere actor_here is None (the caller falls back to a queued tell). A method
    run with run_now that raises crashes the actor, as a handler would."""
    crashes: list[str] = []
    ref = _Taker.start(actor_loop, crashes)
    actor = ref.actor_inbox._actor  # type: ignore[attr-defined]
    results: list[object] = []

    def on_loop() -> None:
        here = actor_here(ref)
        results.append(here)
        if here is not None:
            here.run_now(actor.take, 7)
            results.append(list(actor.taken))  # taken before run_now returned

    done = threading.Event()
    actor_loop.call_soon(lambda: (on_loop(), done.set()))
    assert done.wait(5.0)
    assert results == [actor, [7]]
    assert actor_here(ref) is None  # this thread is not the actor's loop
    assert ref.ask("sync", timeout=5.0) == "sync"
    assert actor.inside == [None]  # from inside its own handler: not at once

    failed = threading.Event()
    actor_loop.call_soon(lambda: (actor.run_now(actor.take, -1), failed.set()))
    assert failed.wait(5.0)
    assert ref.actor_stopped.wait(5.0)
    assert crashes == ["ValueError('cannot take -1')"]
    stopped: list[object] = []
    seen = threading.Event()
    actor_loop.call_soon(lambda: (stopped.append(actor_here(ref)), seen.set()))
    assert seen.wait(5.0) and stopped == [None]


async def test_wakes_from_the_loop_are_batched_and_none_is_lost(actor_loop: ActorLoop) -> None:
    """A thousand wakers of this loop, woken by one callback on the actor loop: every one wakes
    (batched into few thread crossings), and a wake sent just before the actor loop stops is
    handed over too (flush_wakes)."""
    wakers = [Waker.for_running_loop() for _ in range(1000)]
    actor_loop.call_soon(lambda: [w.wake() for w in wakers])
    async with asyncio.timeout(5.0):
        await asyncio.gather(*(w.wait() for w in wakers))

    other = ActorLoop("mellea-actors-test-2").start()
    last = Waker.for_running_loop()
    other.call_soon(lambda: (last.wake(), other.loop.stop()))
    async with asyncio.timeout(5.0):
        await last.wait()
    assert other.stop(5.0)


def _loop_life(name: str) -> float:
    """The switch interval while a fresh ActorLoop runs (it is stopped before returning)."""
    loop = ActorLoop(name).start()
    try:
        return sys.getswitchinterval()
    finally:
        assert loop.stop(5.0)


def test_the_switch_interval_is_lowered_while_a_runtime_loop_lives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The GIL hand-over between the runtime's thread and the caller's set the p99 delay of
    1,000 streams (crossing.py); the runtime lowers the interval only if the app did not set
    one, and restores it when its last loop ends."""
    monkeypatch.delenv(SWITCH_INTERVAL_ENV, raising=False)
    before = sys.getswitchinterval()
    assert before == 0.005  # the interpreter's default, as the suite runs
    assert _loop_life("mellea-actors-switch-1") == SWITCH_INTERVAL
    assert sys.getswitchinterval() == before  # restored

    monkeypatch.setenv(SWITCH_INTERVAL_ENV, "off")
    assert _loop_life("mellea-actors-switch-2") == before
    monkeypatch.setenv(SWITCH_INTERVAL_ENV, "0.002")
    assert _loop_life("mellea-actors-switch-3") == 0.002
    assert sys.getswitchinterval() == before
    monkeypatch.setenv(SWITCH_INTERVAL_ENV, "fast")
    with pytest.raises(InvalidInputError, match=SWITCH_INTERVAL_ENV):
        ActorLoop("mellea-actors-switch-4").start()

    monkeypatch.delenv(SWITCH_INTERVAL_ENV)
    sys.setswitchinterval(0.01)  # the application chose its own: left alone
    try:
        assert _loop_life("mellea-actors-switch-5") == 0.01
    finally:
        sys.setswitchinterval(before)


class _Reentrant(LoopActor):
    """Tells itself with tell_here from inside its own handler."""

    def __init__(self, actor_loop: ActorLoop) -> None:
        super().__init__(actor_loop)
        self.depth = 0
        self.deepest = 0
        self.order: list[str] = []

    def on_receive(self, message: Any) -> Any:
        self.depth += 1
        self.deepest = max(self.deepest, self.depth)
        try:
            if message == "outer":
                tell_here(self.actor_ref, "inner")  # must be queued, not nested
            self.order.append(message)
        finally:
            self.depth -= 1
        return message


def test_tell_here_never_nests_handlers_of_one_actor(actor_loop: ActorLoop) -> None:
    ref = _Reentrant.start(actor_loop)
    done = threading.Event()
    actor_loop.call_soon(lambda: (tell_here(ref, "outer"), done.set()))
    assert done.wait(5.0)
    assert ref.ask("sync", timeout=5.0) == "sync"
    actor = ref.actor_inbox._actor  # type: ignore[attr-defined]
    assert actor.order == ["outer", "inner", "sync"]
    assert actor.deepest == 1
    ref.stop()


def test_actor_stopped_can_be_waited_for_like_pykkas_event(actor_loop: ActorLoop) -> None:
    ref = Echo.start(actor_loop)
    assert ref.actor_stopped.wait(0.01) is False  # still alive: the wait times out
    stopped = threading.Event()
    waiter = threading.Thread(target=lambda: ref.actor_stopped.wait(5.0) and stopped.set())
    waiter.start()
    ref.stop()
    waiter.join(5.0)
    assert stopped.is_set() and ref.actor_stopped.wait(0) is True


def test_a_call_batch_crosses_once_for_what_it_holds_and_keeps_the_order(
    actor_loop: ActorLoop,
) -> None:
    """What other threads submit while the loop is busy runs in one callback, in submission
    order; a callback's exception goes to the loop's handler and the others still run; a
    ``hop`` sent after a ``submit`` by the same thread runs after it."""
    loop = actor_loop.loop
    batch = CallBatch(loop)
    errors: list[BaseException] = []
    loop.call_soon_threadsafe(
        loop.set_exception_handler, lambda _loop, ctx: errors.append(ctx["exception"])
    )
    held, release, done = threading.Event(), threading.Event(), threading.Event()
    ran: list[tuple[int, int]] = []  # (item, the loop's ready-queue length when it ran)
    loop.call_soon_threadsafe(lambda: (held.set(), release.wait(5.0)))
    assert held.wait(5.0)
    ready_before = len(loop._ready)  # type: ignore[attr-defined]

    def item(k: int) -> None:
        ran.append((k, len(loop._ready)))  # type: ignore[attr-defined]
        if k == 3:
            raise ValueError("item 3 fails")

    for k in range(50):
        batch.submit(item, k)
    hop(loop, done.set)  # after the batch: sent later by the same thread
    # one crossing for the fifty: the batch's callback and the hop are all that was queued
    assert len(loop._ready) == ready_before + 2  # type: ignore[attr-defined]
    release.set()
    assert done.wait(5.0)
    assert [k for k, _ in ran] == list(range(50))
    assert len(errors) == 1 and isinstance(errors[0], ValueError)
