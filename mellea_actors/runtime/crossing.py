"""The one home of every hand-off between the runtime's loop thread and the rest of the world.

The runtime's actors live on one asyncio loop on one thread (:mod:`mellea_actors.runtime.loop`);
their users are coroutines on other loops (the caller's ``asyncio.run``), plain threads, or the
runtime's own loop. Every crossing goes through the primitives here, in the spirit of anyio's
``from_thread``; no other module calls ``call_soon_threadsafe``.

* :func:`hop` — run a callback on a loop, from any thread (the loop's own included).
* :func:`run_coroutine` — run a coroutine on a loop from another thread; a concurrent future.
* :func:`await_concurrent` — await a concurrent future from a coroutine of any loop.
* :func:`interrupt_behind` — the ``KeyboardInterrupt`` behind a contained error, to re-raise
  in the caller's thread.
* :func:`in_thread` — run a blocking call in a worker thread and await it (never blocks the
  awaiting loop).
* :class:`Waker` — a one-shot wake-up for *one* waiter: made by the waiter (a coroutine on any
  loop: :meth:`Waker.for_running_loop`; a plain thread: :meth:`Waker.for_thread`), woken once
  from any thread (:meth:`Waker.wake`).
* :class:`Signal` — a one-shot flag: set from one thread, awaited from any number of loops or
  waited for from threads.
* :class:`Channel` — an unbounded FIFO: one producer thread, one consumer coroutine on any loop.
* :class:`CallBatch` — callbacks for one loop from other threads, in order, with one
  ``call_soon_threadsafe`` per batch (not per call).

Guarantees, stated once:

* Nothing here blocks the producer: ``wake``/``set``/``put``/``close`` take a short lock at most
  and schedule the wake-up with one ``call_soon_threadsafe`` (a plain thread is woken through a
  ``threading.Event``).
* Wake-ups are batched per tick: what the callbacks of one loop (the runtime's) wake on another
  loop during one iteration is handed over in *one* ``call_soon_threadsafe`` per target loop,
  early in the next iteration (:class:`_WakeBatch`), so a thousand readers woken by one network
  read cost one thread crossing, not a thousand. A loop that stops hands over what is left
  (:func:`flush_wakes`, called by the runtime's loop before it closes).
* A waiter whose loop is already closed is skipped silently: nobody is left to wake.
* Every wait is cancellable, and a cancelled wait loses nothing: ``Channel.get`` only removes an
  item when it returns it; a ``Signal`` stays set.
* No lost wake-up: each primitive checks its condition and registers its waiter under one lock.

The GIL is the other half of every crossing. With the interpreter's default switch interval
(5 ms), a thread woken while the other one runs Python code waits up to 5 ms for the GIL, and
that, not the hand-over itself, set the tail of the send→receive delay (p99 10 to 20 ms for 1,000
streams, against 2 to 4 ms for a one-thread client). While a runtime loop thread lives, the switch
interval is therefore lowered to 0.5 ms (:func:`hold_switch_interval`), unless the application
set its own, and restored when the last runtime loop stops. ``MELLEA_ACTORS_SWITCH_INTERVAL``
sets another value in seconds, or ``off`` to leave the interpreter's alone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Generic, TypeVar

from mellea_actors.errors import InvalidInputError, SingleReaderError

__all__ = [
    "CallBatch",
    "Channel",
    "Signal",
    "Waker",
    "await_concurrent",
    "flush_wakes",
    "hold_switch_interval",
    "hop",
    "in_thread",
    "interrupt_behind",
    "release_switch_interval",
    "run_coroutine",
]

T = TypeVar("T")


def hop(loop: asyncio.AbstractEventLoop, callback: Callable[..., object], *args: Any) -> None:
    """Run ``callback(*args)`` on ``loop``'s thread, after what is already scheduled there.

    From the loop's own thread this is ``loop.call_soon``. Raises ``RuntimeError`` if the loop is
    closed.
    """
    if _running_loop() is loop:
        loop.call_soon(callback, *args)
    else:
        loop.call_soon_threadsafe(callback, *args)


class CallBatch:
    """Callbacks for one loop, submitted from any thread, run on it in submission order.

    ``submit`` from another thread appends to a queue, and only the first submit of a batch
    crosses (one ``call_soon_threadsafe``: one write to the loop's self-pipe, one wake-up of a
    loop that waits in ``select``). Every callback submitted before the batch runs goes with
    it. (A caller making 1,000 thunks in a row used to cross 1,000 times, each write waking the
    runtime's thread to fight for the GIL for one callback.)

    Order: callbacks of one CallBatch run in submission order; the batch as a whole runs where
    its first callback was scheduled, so a callback may run before loop callbacks scheduled
    after that one but before it was submitted — use it only for callbacks nobody on the loop
    can be waiting for yet (the start of a new thunk). An exception of a callback goes to the
    loop's exception handler, as asyncio does for ``call_soon``; the rest of the batch runs.
    From the loop's own thread, ``submit`` is ``call_soon``. Raises ``RuntimeError`` if the
    loop is closed (asyncio's).
    """

    __slots__ = ("_items", "_lock", "_loop", "_pending")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._items: deque[tuple[Callable[..., object], tuple[Any, ...]]] = deque()
        self._pending = False  # a _run is scheduled and has not taken the items yet (lock)

    def submit(self, callback: Callable[..., object], *args: Any) -> None:
        loop = self._loop
        if _running_loop() is loop:
            loop.call_soon(callback, *args)
            return
        with self._lock:  # scheduled under the lock: a submit that finds the batch pending
            # returns after the batch was scheduled, so what its thread sends next comes after
            if not self._pending:
                loop.call_soon_threadsafe(self._run)  # RuntimeError if closed: nothing queued
                self._pending = True
            self._items.append((callback, args))

    def _run(self) -> None:
        with self._lock:
            items, self._items = self._items, deque()
            self._pending = False
        while items:
            callback, args = items.popleft()
            try:
                callback(*args)
            except (SystemExit, KeyboardInterrupt):
                if items:  # what is left runs in the next iteration, as separate callbacks
                    for later, later_args in items:
                        self._loop.call_soon(later, *later_args)
                raise
            except BaseException as exc:
                self._loop.call_exception_handler(
                    {"message": f"Exception in callback {callback!r}", "exception": exc}
                )


def run_coroutine(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]
) -> concurrent.futures.Future[T]:
    """Schedule ``coro`` on ``loop`` (from a thread other than its own); its result as a
    concurrent future (``result(timeout)`` blocks the calling thread, ``cancel()`` cancels)."""
    return asyncio.run_coroutine_threadsafe(coro, loop)


async def await_concurrent(future: concurrent.futures.Future[T]) -> T:
    """Await a concurrent future (e.g. from :func:`run_coroutine`) without blocking this loop.

    Cancelling the awaiting task cancels ``future``."""
    return await asyncio.wrap_future(future)


async def in_thread(func: Callable[..., T], *args: Any) -> T:
    """Run a blocking ``func(*args)`` in a worker thread and await its result.

    Cancelling the awaiting task stops the wait, not the call (a thread cannot be interrupted).
    """
    return await asyncio.to_thread(func, *args)


def interrupt_behind(error: BaseException | None) -> KeyboardInterrupt | None:
    """The ``KeyboardInterrupt`` that user code raised on the runtime's loop behind ``error``.

    User code that runs on the runtime's loop (a validator, a chunker) may only end its own
    stream: the runtime contains what it raises, ``BaseException`` included, in an error of its
    own whose ``__cause__`` is the original. A ``KeyboardInterrupt`` must still mean something,
    so the facade re-raises it in the caller's thread, where the user can catch it.
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return error
        seen.add(id(error))
        error = error.__cause__
    return None


_running_loop = asyncio._get_running_loop
"""The loop running in this thread, or None (asyncio's own fast path: no exception)."""


SWITCH_INTERVAL_ENV = "MELLEA_ACTORS_SWITCH_INTERVAL"
SWITCH_INTERVAL = 0.0005
"""Seconds: the interpreter's switch interval while a runtime loop thread lives."""
_INTERPRETER_DEFAULT = 0.005
_switch_lock = threading.Lock()
_switch_holders = 0  # live runtime loops (guarded by _switch_lock)
_switch_set: tuple[float, float] | None = None  # (what we set, what it was), guarded likewise


def _wanted_switch_interval() -> float | None:
    raw = os.environ.get(SWITCH_INTERVAL_ENV, "").strip()
    if not raw:
        return SWITCH_INTERVAL if sys.getswitchinterval() == _INTERPRETER_DEFAULT else None
    if raw.lower() in ("off", "keep", "no", "0"):
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise InvalidInputError(
            f"{SWITCH_INTERVAL_ENV}={raw!r} must be a number of seconds in (0, 1], or 'off'"
        )
    return value


def hold_switch_interval() -> None:
    """A runtime loop thread starts: lower the switch interval (see the module docstring)."""
    global _switch_holders, _switch_set
    with _switch_lock:
        if _switch_holders == 0:
            wanted = _wanted_switch_interval()
            if wanted is not None and wanted != sys.getswitchinterval():
                _switch_set = (wanted, sys.getswitchinterval())
                sys.setswitchinterval(wanted)
                logging.getLogger("mellea_actors").debug(
                    "switch interval %.4f s -> %.4f s while the runtime runs (%s=off keeps it)",
                    _switch_set[1],
                    wanted,
                    SWITCH_INTERVAL_ENV,
                )
        _switch_holders += 1


def release_switch_interval() -> None:
    """A runtime loop thread ended: the last one restores the interval it changed."""
    global _switch_holders, _switch_set
    with _switch_lock:
        _switch_holders = max(0, _switch_holders - 1)
        if _switch_holders == 0 and _switch_set is not None:
            ours, previous = _switch_set
            _switch_set = None
            if sys.getswitchinterval() == ours:  # nobody changed it since
                sys.setswitchinterval(previous)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _settle_all(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


WAKE_COALESCE = 0.001
"""Seconds: at most one hand-over per target loop in this interval carries the *coalescable*
wake-ups (a reader woken for more text of a stream it already reads); every other wake-up —
a stream's first text, its outcome, a reply, a signal — goes in the next iteration. (1 ms: 3 ms
saved no CPU that ``bench/`` many_streams could tell from its noise, and adds to the delay of
every chunk under load.)"""


class _WakeBatch:
    """The wake-ups that one loop's callbacks sent to *other* loops, handed over in batches.

    One ``call_soon_threadsafe`` per target loop (one self-pipe write, one wake-up of the
    target's thread, one GIL hand-over) carries every reader woken since the last hand-over,
    instead of one each. A hand-over goes early in the source loop's next iteration when it
    carries a wake-up that is not coalescable, or when the last one is older than
    :data:`WAKE_COALESCE`; otherwise it waits until that interval has passed, so under load a
    thread crossing carries many wake-ups and more text of a stream is delayed by at most that
    interval. Owned by the source loop's thread (it lives in that thread's ``threading.local``);
    only that thread touches it.
    """

    __slots__ = ("_last", "_loop", "_pending", "_soon", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        self._last = 0.0
        self._soon = False  # a hand-over is scheduled for the next iteration
        self._timer: asyncio.TimerHandle | None = None  # one is scheduled for later

    def add(
        self, target: asyncio.AbstractEventLoop, future: asyncio.Future[None], coalesce: bool
    ) -> None:
        futures = self._pending.get(target)
        if futures is None:
            self._pending[target] = [future]
        else:
            futures.append(future)
        if self._soon:
            return
        loop = self._loop
        if coalesce:
            if self._timer is not None:
                return
            delay = self._last + WAKE_COALESCE - loop.time()
            if delay > 0:
                self._timer = loop.call_later(delay, self._flush)
                return
        elif self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._soon = True
        loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._last = self._loop.time()
        self._soon = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, {}
        for target, futures in pending.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody to wake
                target.call_soon_threadsafe(_settle_all, futures)


_batches = threading.local()


def flush_wakes() -> None:
    """Hand over now the wake-ups this thread's loop batched (before that loop closes)."""
    batch: _WakeBatch | None = getattr(_batches, "batch", None)
    if batch is not None:
        batch._flush()


def _wake_batch(loop: asyncio.AbstractEventLoop) -> _WakeBatch:
    batch: _WakeBatch | None = getattr(_batches, "batch", None)
    if batch is None or batch._loop is not loop:
        batch = _batches.batch = _WakeBatch(loop)
    return batch


class Waker:
    """A one-shot wake-up of one waiter, callable once from any thread.

    Made by the waiter, on its own loop (``for_running_loop``) or thread (``for_thread``); it
    then waits (``await waker.wait()`` or ``waker.wait_sync(timeout)``) while someone else holds
    the waker and calls :meth:`wake` once the awaited condition holds.
    """

    __slots__ = ("_event", "_future", "_loop")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None,
        future: asyncio.Future[None] | None,
        event: threading.Event | None,
    ) -> None:
        self._loop = loop
        self._future = future
        self._event = event

    @classmethod
    def for_running_loop(cls) -> Waker:
        """A waker for a coroutine of the running loop (call from that coroutine)."""
        loop = asyncio.get_running_loop()
        return cls(loop, loop.create_future(), None)

    @classmethod
    def for_thread(cls) -> Waker:
        """A waker for a plain thread (waits with :meth:`wait_sync`)."""
        return cls(None, None, threading.Event())

    def wake(self, coalesce: bool = False) -> None:
        """Wake the waiter (from any thread; more calls do nothing). ``coalesce``: it is woken
        for more of what it already gets (more text of a stream): a wake-up from another loop
        may then wait up to :data:`WAKE_COALESCE` to travel with others."""
        if self._event is not None:
            self._event.set()
            return
        loop, future = self._loop, self._future
        assert loop is not None and future is not None
        here = _running_loop()
        if here is loop:
            loop.call_soon(_settle, future)
        elif here is not None:  # from another loop's callback: handed over once per tick
            _wake_batch(here).add(loop, future, coalesce)
        else:
            with contextlib.suppress(RuntimeError):  # the waiter's loop is closed: nobody
                loop.call_soon_threadsafe(_settle, future)  # to wake

    async def wait(self) -> None:
        """Wait until woken (the waiter's loop only; cancellable)."""
        assert self._future is not None
        await self._future

    def __await__(self) -> Generator[Any, None, None]:
        """``await waker``: :meth:`wait` without a coroutine of its own (the hot path)."""
        assert self._future is not None
        return self._future.__await__()

    def wait_sync(self, timeout: float | None) -> bool:
        """Block until woken (the waiter's thread only); False after ``timeout`` seconds."""
        assert self._event is not None
        return self._event.wait(timeout)


class Signal:
    """A one-shot flag settable from one thread and awaitable from any loop (or thread)."""

    __slots__ = ("_event", "_lock", "_waiters")

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._waiters: list[Waker] = []

    def set(self) -> None:
        with self._lock:
            self._event.set()
            waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.wake()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        """Wait until set (cancellable)."""
        if self._event.is_set():
            return
        waker = Waker.for_running_loop()
        with self._lock:
            if self._event.is_set():
                return
            self._waiters.append(waker)
        try:
            await waker.wait()
        finally:
            with self._lock:
                if waker in self._waiters:
                    self._waiters.remove(waker)

    def wait_sync(self, timeout: float | None) -> bool:
        """Block until set; False after ``timeout`` seconds."""
        return self._event.wait(timeout)


class Channel(Generic[T]):
    """An unbounded FIFO: one producer thread, one consumer coroutine on any loop.

    ``put``/``close`` never block. ``get`` waits (cancellably; nothing is lost by a cancel) and
    raises ``StopAsyncIteration`` once the channel is closed and drained; a second coroutine
    calling ``get`` while one waits gets :class:`SingleReaderError` at once (never a lost
    wake-up, never a hang).
    """

    __slots__ = ("_closed", "_items", "_lock", "_waiter")

    def __init__(self) -> None:
        self._items: deque[T] = deque()
        self._closed = False
        self._lock = threading.Lock()
        self._waiter: Waker | None = None

    def put(self, item: T) -> None:
        with self._lock:
            self._items.append(item)
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.wake()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.wake()

    async def get(self) -> T:
        while True:
            with self._lock:
                if self._items:
                    return self._items.popleft()
                if self._closed:
                    raise StopAsyncIteration
                if self._waiter is not None:
                    raise SingleReaderError(
                        "two coroutines are iterating the same events()/astream() iterator at "
                        "once; each has a single consumer"
                    )
                waker = Waker.for_running_loop()
                self._waiter = waker
            try:
                await waker.wait()
            finally:
                with self._lock:
                    if self._waiter is waker:
                        self._waiter = None
