"""The one home of every hand-off between the runtime's loop thread and the rest of the world.

The runtime's actors live on one asyncio loop (:mod:`mellea_actors.runtime.loop`), run on a
thread of its own or hosted on the caller's loop; their users are coroutines on other loops
(the caller's ``asyncio.run``), plain threads, or the runtime's own loop. Every crossing goes
through the primitives here, in the spirit of anyio's ``from_thread``; no other module calls
``call_soon_threadsafe``.

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
* :class:`LoopHost` — a loop of the runtime run from the caller's running loop, on its thread
  (the engine with no thread of its own); lent to a rescue thread while that thread blocks,
  released to a thread of its own when the caller's loop ends.
* :class:`blocking` — the one wrapper of every blocking wait of the runtime: it lends the
  loops that the waiting thread hosts, so that no wait can block the loop it waits for
  (:func:`wait_event`: a ``threading.Event`` waited for inside it).

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

The GIL is the other half of every crossing (and the reason for :class:`LoopHost`, which removes
the crossing between the engine and the coroutines of the loop that hosts it). With the
interpreter's default switch interval (5 ms), a thread woken while the other one runs Python code
waits up to 5 ms for the GIL, and that, not the hand-over itself, set the tail of the send→receive
delay (p99 10 to 20 ms for 1,000 streams, against 2 to 4 ms for a one-thread client). While a
runtime loop thread lives, the switch interval is therefore lowered to 0.5 ms
(:func:`hold_switch_interval`), unless the application set its own, and restored when the last
runtime loop stops. ``MELLEA_ACTORS_SWITCH_INTERVAL`` sets another value in seconds, or ``off`` to
leave the interpreter's alone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import select
import sys
import threading
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Generic, TypeVar

from mellea_actors.errors import InvalidInputError, SingleReaderError

__all__ = [
    "CallBatch",
    "Channel",
    "LoopHost",
    "Signal",
    "Waker",
    "await_concurrent",
    "blocking",
    "flush_wakes",
    "hold_switch_interval",
    "hop",
    "in_thread",
    "interrupt_behind",
    "release_switch_interval",
    "run_coroutine",
    "wait_event",
]

T = TypeVar("T")


def hop(loop: asyncio.AbstractEventLoop, callback: Callable[..., object], *args: Any) -> None:
    """Run ``callback(*args)`` on ``loop``'s thread, after what is already scheduled there.

    From the loop's own thread this is ``loop.call_soon``; from the thread that hosts the loop
    (:class:`LoopHost`) too, plus a wake-up of the host (no self-pipe write). Raises
    ``RuntimeError`` if the loop is closed.
    """
    if _running_loop() is loop:
        loop.call_soon(callback, *args)
    elif not _host_call_soon(loop, callback, args):
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
    From the loop's own thread, ``submit`` is ``call_soon``; from the thread that hosts it, the
    same plus a wake-up of the host (see :func:`hop`). Raises ``RuntimeError`` if the loop is
    closed (asyncio's).
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
        if _host_call_soon(loop, callback, args):  # no crossing to batch: the host's thread
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

_thread_hosts = threading.local()
"""Per thread: ``hosts``, the :class:`LoopHost` s it hosts (lent by :class:`blocking`), and
``stepping``, the host loop while one of them runs an iteration (else None)."""


def _host_call_soon(
    loop: asyncio.AbstractEventLoop, callback: Callable[..., object], args: Any
) -> bool:
    """``loop.call_soon(callback, *args)`` if this thread hosts ``loop`` now (see
    :meth:`LoopHost.call_soon`); False, with nothing done, otherwise."""
    hosts: list[LoopHost] | None = getattr(_thread_hosts, "hosts", None)
    if hosts:
        for host in hosts:
            if host._inner is loop:
                return host.call_soon(callback, args)
    return False


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
        elif loop is getattr(_thread_hosts, "stepping", None):
            # from an iteration of a loop hosted by the waiter's own loop, on its thread: the
            # waiter's task is scheduled now (what its loop's call_soon does), no crossing
            if not future.done():
                future.set_result(None)
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
        return wait_event(self._event, timeout)


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
        return wait_event(self._event, timeout)


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


# -- one loop driven from another's thread ------------------------------------------------------
_set_running_loop = asyncio._set_running_loop

_HOSTED, _LENT, _BORROWED = "hosted", "lent", "borrowed"
_RETURNING, _RELEASED = "returning", "released"

STALL_CHECK = 0.01
"""Seconds between two looks of the stall watch (:class:`_StallWatch`) at the hosted loops: a
loop that had work waiting at one look, and that its host has not run since the look before
it, is run on a rescue thread if it still has work and still was not run at the next look (so
after one to two of these: work that had *just* arrived at an idle host is not a stall)."""


class LoopHost:
    """Runs the event loop ``inner`` from the callbacks of a running loop ``host``, on the
    host's thread: the runtime's engine on the caller's own loop, with no second thread.

    ``inner`` is a selector loop of its own (its actors, transports and timers stay bound to
    it); the host watches ``inner``'s selector (``add_reader`` on its descriptor) and wakes at
    ``inner``'s next timer, and each wake-up runs exactly one iteration of ``inner``
    (``inner.stop(); inner.run_forever()``: asyncio's documented one-pass with a zero timeout),
    with ``inner`` as the running loop for that iteration. So the engine's code and the
    caller's coroutines take turns on one thread, and no GIL changes hands between them.

    States (``_state``, changed under ``_cond``), and who runs ``inner`` in each:

    * **hosted** — the host's thread, one iteration per wake-up (:meth:`_step`), holding
      ``_cond``'s lock for the iteration.
    * **borrowed** — a rescue thread too, started by the *stall watch* (one daemon thread per
      process while any loop is hosted, :class:`_StallWatch`) when ``inner`` has work waiting
      and its host did not run it for :data:`STALL_CHECK` seconds or more: the host's thread
      blocks in code that is not the runtime's (``Thread.join``, a sync executor's ``map`` over
      calls of this session, ``time.sleep``) or runs a long callback. The engine goes on
      meanwhile (the calls that the host waits for included: no deadlock), and the host's next
      wake-up takes the loop back (:meth:`_step`).
    * **lent** (then **returning**, while the take-back waits for the rescue thread to let go) —
      a *rescue thread*, for as long as the host's thread blocks in a call of the runtime. A
      blocking call on the host's thread (``str()`` of a pending thunk, a sync method,
      ``close()``) would block the very loop that must produce its answer; every blocking wait
      of the runtime is made inside :func:`blocking`, which lends the loops this thread hosts
      (:meth:`lend`) and takes them back when the wait ends (:meth:`_take_back`). Work in flight
      — a stream half read, a validator's verdict, a retry's back-off — simply goes on there:
      nothing is restarted or moved but the thread that runs the loop.
    * **released** — for good, to the owner's own thread (``on_release``, called once): when
      the host loop ends (its ``asyncio.run`` cancels every task, the watcher task
      :meth:`_watch` among them), when :meth:`release` is called (the owner stops), or when a
      lend ends and the host can no longer run it (closed). From then on it is a loop thread
      like any other.

    Thread rules: :meth:`lend` and the take-back are called on the host's thread only, outside
    an iteration of ``inner``; :meth:`release` from any thread (inside an iteration it waits
    until that iteration ends). The host-side registrations (reader, timer, watcher) are
    touched on the host's thread only; from another thread their removal is scheduled there.
    """

    __slots__ = (
        "_bind",
        "_cond",
        "_fd",
        "_host",
        "_inner",
        "_on_release",
        "_registered",
        "_release_wanted",
        "_rescue_done",
        "_rescuer",
        "_seen_steps",
        "_soon",
        "_state",
        "_stepping",
        "_steps",
        "_suspect",
        "_thread",
        "_timer",
        "_watcher",
        "name",
    )

    def __init__(
        self,
        inner: asyncio.AbstractEventLoop,
        selector_fd: int,
        host: asyncio.AbstractEventLoop,
        *,
        bind: Callable[[bool], None],
        on_release: Callable[[], None],
        name: str,
    ) -> None:
        """Start hosting (call on the host's thread, while ``host`` runs). ``bind(True)`` /
        ``bind(False)`` is called on a thread before / after it runs ``inner``."""
        if _running_loop() is not host:
            raise RuntimeError("a LoopHost is made on its host loop's thread, while it runs")
        self.name = name
        self._inner = inner
        self._host = host
        self._fd = selector_fd
        self._bind = bind
        self._on_release = on_release
        self._thread = threading.current_thread()
        self._cond = threading.Condition()  # an RLock: a release inside an iteration re-enters
        self._state = _HOSTED
        self._stepping = False  # an iteration runs on the host's thread (under _cond)
        self._rescue_done = True  # the rescue thread of the current lend has let go (_cond)
        self._rescuer: threading.Thread | None = None  # that thread, while it runs (_cond)
        self._release_wanted = False  # release() was called inside the rescue's iteration
        self._soon = False  # a step is scheduled with host.call_soon (host thread)
        self._steps = 0  # iterations run by the host (host thread; read by the stall watch)
        self._seen_steps = -1  # what the stall watch saw at its last look (stall watch only)
        self._suspect = False  # that look saw work waiting and no iteration (stall watch only)
        self._timer: asyncio.TimerHandle | None = None  # the host's wake-up at inner's next timer
        host.add_reader(selector_fd, self._step)
        self._registered = True
        self._watcher: asyncio.Task[None] | None = host.create_task(
            self._watch(), name=f"{name}-host-watch"
        )
        _hosts_here().append(self)
        _stall_watch.add(self)
        self._arm()

    @property
    def state(self) -> str:
        return self._state

    @property
    def thread(self) -> threading.Thread:
        """The host's thread."""
        return self._thread

    # -- hosted: one iteration per wake-up (host thread) -----------------------------------------
    def call_soon(self, callback: Callable[..., object], args: tuple[Any, ...]) -> bool:
        """From the host's thread, between two iterations, while hosted: schedule ``callback``
        on ``inner`` and wake the host for its next iteration — what ``call_soon_threadsafe``
        does, without its self-pipe write (a syscall, and a read of it by the iteration). Safe
        without asyncio's thread-safe path: nothing else runs ``inner`` while it is hosted (a
        rescue thread needs ``_cond``, held here). False, with nothing done, in any other
        state (the caller crosses as usual). Raises ``RuntimeError`` if ``inner`` is closed."""
        with self._cond:
            if self._state is not _HOSTED or self._stepping:
                return False
            self._inner.call_soon(callback, *args)
            self._step_soon()
        return True

    def _step_soon(self) -> None:
        """Run an iteration of ``inner`` in the host's next turn (once, however often asked)."""
        if not self._soon:
            self._soon = True
            self._host.call_soon(self._on_soon)

    def _on_soon(self) -> None:
        self._soon = False
        self._step()

    def _on_timer(self) -> None:
        self._timer = None
        self._step()

    def _step(self) -> None:
        inner = self._inner
        with self._cond:
            if self._state is _BORROWED and self._return_from_rescue():  # the stall watch ran
                self._state = _HOSTED  # it while this thread was busy: back here
            if self._state is not _HOSTED:  # released (lent or returning: this thread blocks)
                if self._state is _RELEASED:
                    self._unregister()
                return
            if self._stepping:  # a step inside a step (an inner callback ran the host's)
                return
            self._steps += 1
            outer = _running_loop()
            _set_running_loop(None)  # run_forever refuses to start under a running loop
            self._stepping = True
            self._bind(True)
            _thread_hosts.stepping = outer  # Waker.wake settles this loop's waiters directly
            try:
                inner.stop()  # set before run_forever: one pass, zero timeout (documented)
                inner.run_forever()
            finally:
                _thread_hosts.stepping = None
                self._bind(False)
                self._stepping = False
                _set_running_loop(outer)
            if self._state is not _HOSTED:  # released from inside that iteration
                self._unregister()
                self._on_release()
                return
        self._arm()

    def _arm(self) -> None:
        """After an iteration: wake the host again when ``inner`` has more to do. Reads two
        fields asyncio's ``BaseEventLoop`` has kept since 3.4 — the ready queue and the timer
        heap — and writes neither (no public API tells a loop's next deadline)."""
        inner: Any = self._inner
        host = self._host
        if inner._ready:
            self._step_soon()
            return
        scheduled = inner._scheduled
        if scheduled:
            when = scheduled[0].when()
            timer = self._timer
            if timer is not None:
                if timer.when() <= when:
                    return
                timer.cancel()
            self._timer = host.call_at(when, self._on_timer)

    async def _watch(self) -> None:
        """Lives as long as the host loop serves tasks: ``asyncio.run`` cancels it at its end,
        and the loop goes to a thread of its own before the host closes."""
        try:
            await self._host.create_future()
        finally:
            self._watcher = None
            self.release()

    def _unregister(self) -> None:
        """Drop the host-side registrations (host thread; idempotent)."""
        if not self._registered:
            return
        self._registered = False
        with contextlib.suppress(ValueError):
            _hosts_here().remove(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        watcher, self._watcher = self._watcher, None
        if self._host.is_closed():
            return
        with contextlib.suppress(Exception):  # the host is closing: nothing left to drop
            self._host.remove_reader(self._fd)
        if watcher is not None:
            watcher.cancel()

    # -- borrowed: the host's thread is busy (stall watch thread) ----------------------------------
    def _look(self) -> None:
        """The stall watch's look: borrow ``inner`` if the host ran no iteration during the
        last two intervals and ``inner`` had work waiting (its ready queue, a due timer, a
        ready descriptor) at the last look and still has now. One look that sees work is not
        enough: the work may have come a moment ago to a host that was idle (a chunk arriving
        at a loop waiting in ``select``), and the host's thread may simply not have had the GIL
        back yet; borrowing then would cost a thread start and two hand-overs for nothing."""
        steps = self._steps
        seen, self._seen_steps = self._seen_steps, steps
        suspect, self._suspect = self._suspect, False
        if steps != seen or self._state is not _HOSTED:
            return
        if not self._cond.acquire(blocking=False):  # an iteration runs: not stalled
            return
        try:
            if self._state is not _HOSTED or self._stepping or self._steps != steps:
                return
            if not self._has_work():
                return
            if not suspect:  # work waits, since at most one interval: look again next time
                self._suspect = True
                return
            self._start_rescue(_BORROWED)
        finally:
            self._cond.release()
        with contextlib.suppress(RuntimeError):  # the host's next iteration takes it back
            self._host.call_soon_threadsafe(self._on_soon)

    def _has_work(self) -> bool:
        inner: Any = self._inner  # the fields _arm reads; only an iteration writes them, and
        if inner._ready:  # none runs (the caller holds _cond)
            return True
        scheduled = inner._scheduled
        if scheduled and scheduled[0].when() <= inner.time() - STALL_CHECK:  # a host wakes a
            return True  # little late for a timer (epoll's milliseconds): overdue is later
        try:
            readable, _, _ = select.select([self._fd], [], [], 0)
        except (OSError, ValueError):  # closed under our feet: nothing to run
            return False
        return bool(readable)

    # -- lent: the host's thread blocks ------------------------------------------------------------
    def lend(self) -> Callable[[], None] | None:
        """The host's thread is about to block: run ``inner`` on a rescue thread until the
        returned take-back is called (None: nothing to lend — not hosted, or called inside an
        iteration, where blocking is refused before it gets here)."""
        with self._cond:
            if self._stepping or threading.current_thread() is not self._thread:
                return None
            if self._state is _BORROWED:  # already on a rescue thread: now until the wait ends
                self._state = _LENT
                return self._take_back
            if self._state is not _HOSTED:
                return None
            self._start_rescue(_LENT)
        return self._take_back

    def _start_rescue(self, state: str) -> None:
        """Under ``_cond``, hosted: go to ``state`` (lent or borrowed), run by a rescue thread."""
        self._state = state
        self._rescue_done = False
        self._rescuer = threading.Thread(
            target=self._rescue, name=f"{self.name}-rescue", daemon=True
        )
        self._rescuer.start()

    def _rescue(self) -> None:
        inner = self._inner
        self._bind(True)
        try:
            # a stray stop() ends one run_forever, not the lend
            while (self._state is _LENT or self._state is _BORROWED) and not self._release_wanted:
                inner.run_forever()
        finally:
            self._bind(False)
            flush_wakes()
            with self._cond:
                self._rescue_done = True
                self._rescuer = None
                self._cond.notify_all()
                released_here = self._release_wanted
                if released_here:
                    self._state = _RELEASED
        if released_here:  # release() came from inside this thread's iteration
            with contextlib.suppress(RuntimeError):
                self._host.call_soon_threadsafe(self._unregister)
            self._on_release()

    def _stop_rescue(self) -> None:
        """Under ``_cond``, state no longer lent: wait until the rescue thread let go."""
        with contextlib.suppress(RuntimeError):  # closed: the rescue thread is ending anyway
            self._inner.call_soon_threadsafe(self._inner.stop)
        self._cond.wait_for(lambda: self._rescue_done)

    def _return_from_rescue(self) -> bool:
        """Under ``_cond``, lent or borrowed (host thread): stop the rescue thread and wait until
        it let go. True: the loop is back (``returning``; the caller says what next); False:
        released meanwhile. An interrupted wait (Ctrl-C) leaves it borrowed (the host's next
        iteration tries again) or, if the rescue thread had let go, hosted."""
        self._state = _RETURNING  # still not hosted: nothing may run inner but the rescue
        try:
            self._stop_rescue()
        except BaseException:  # interrupted: the rescue thread runs on, or it is back here
            if self._state is _RETURNING:
                self._state = _HOSTED if self._rescue_done else _BORROWED
            raise
        return self._state is _RETURNING

    def _take_back(self) -> None:
        """The host's thread's wait ended (host thread)."""
        with self._cond:
            if self._state is _LENT and not self._release_wanted:
                self._return_from_rescue()
            if self._state is not _RETURNING:  # released meanwhile (its releaser hands over)
                self._cond.wait_for(lambda: self._rescue_done)
                self._unregister()
                return
            usable = self._host.is_running()  # else nobody would watch it after this wait
            self._state = _HOSTED if usable else _RELEASED
            if usable:
                self._soon = False
                self._on_soon()  # catch up at once: the host did not watch while it blocked
                return
            self._unregister()
        self._on_release()

    # -- released: for good --------------------------------------------------------------------
    def release(self) -> None:
        """Hand ``inner`` to its owner's thread for good (any thread; idempotent)."""
        with self._cond:
            state = self._state
            if state is _RELEASED or self._release_wanted:
                return
            lent = state is _LENT or state is _RETURNING or state is _BORROWED
            if lent and threading.current_thread() is self._rescuer:
                self._release_wanted = True  # inside the rescue's iteration: it ends there
                self._inner.stop()  # and the rescue thread hands the loop over
                return
            self._state = _RELEASED
            if self._stepping:  # inside an iteration on this thread: _step finishes the job
                return
            if lent:
                self._stop_rescue()
        if threading.current_thread() is self._thread:
            self._unregister()
        else:
            with contextlib.suppress(RuntimeError):  # the host is closed: nothing to drop
                self._host.call_soon_threadsafe(self._unregister)
        self._on_release()


class _StallWatch:
    """One daemon thread per process, while any loop is hosted: every :data:`STALL_CHECK`
    seconds it looks at each hosted loop (:meth:`LoopHost._look`), and borrows one whose host
    ran no iteration since the last look while it had work waiting. Ends when no loop is
    hosted; started again by the next."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hosts: list[LoopHost] = []  # guarded by _lock
        self._thread: threading.Thread | None = None  # guarded by _lock

    def add(self, host: LoopHost) -> None:
        with self._lock:
            self._hosts.append(host)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="mellea-actors-stall-watch", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        wait = threading.Event().wait  # never set: a sleep that is not time.sleep's
        while True:
            wait(STALL_CHECK)
            with self._lock:
                self._hosts = [h for h in self._hosts if h.state is not _RELEASED]
                hosts = list(self._hosts)
                if not hosts:
                    self._thread = None
                    return
            for host in hosts:
                host._look()


_stall_watch = _StallWatch()


def _hosts_here() -> list[LoopHost]:
    hosts: list[LoopHost] | None = getattr(_thread_hosts, "hosts", None)
    if hosts is None:
        hosts = _thread_hosts.hosts = []
    return hosts


def wait_event(event: threading.Event, timeout: float | None) -> bool:
    """``event.wait(timeout)`` made inside :class:`blocking` (not entered when already set)."""
    if event.is_set():
        return True
    with blocking():
        return event.wait(timeout)


class blocking:
    """Wrap every blocking wait of the runtime (``with blocking(): event.wait(t)``): on a
    thread that hosts runtime loops (:class:`LoopHost`), they are lent to a rescue thread for
    the wait, so that the wait can end. Elsewhere it does nothing."""

    __slots__ = ("_backs",)

    def __enter__(self) -> None:
        hosts = getattr(_thread_hosts, "hosts", None)
        backs: list[Callable[[], None]] = []
        for host in list(hosts or ()):
            back = host.lend()
            if back is not None:
                backs.append(back)
        self._backs = backs

    def __exit__(self, *exc: object) -> None:
        for back in self._backs:
            back()
