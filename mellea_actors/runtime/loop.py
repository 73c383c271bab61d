"""The shared event loop, and the pykka actor type whose mailbox it serves.

pykka's only actor type, ``ThreadingActor``, spends one OS thread per actor; a service with
10,000 pending generations cannot afford that. :class:`LoopActor` keeps pykka's whole public
surface (``ActorRef.tell``/``ask``/``stop``/``proxy``, pykka futures with ``get(timeout=…)``) but
its mailbox is a callback queue on an :class:`ActorLoop`: one asyncio event loop serving any
number of actors, on a daemon thread of its own or hosted on the caller's running loop (see
:class:`ActorLoop`). The same loop runs the Ollama I/O.

Invariants (the whole engine relies on them). "The loop's thread" is the thread that runs an
iteration of the loop at that moment — its own thread, or, hosted, the caller's loop thread or
a rescue thread, never two at once (:class:`~mellea_actors.runtime.crossing.LoopHost`):

* Every handler of a LoopActor, and every piece of state it owns, runs on its ActorLoop's
  thread. Two handlers of one actor never overlap; messages from one sender arrive in order.
* Handlers must not block. Long work is an asyncio task the actor owns; it reports back with
  messages. A handler may return an ``asyncio.Future`` or a coroutine: the asker's reply is then
  set when it completes (a *deferred reply*); the actor goes on receiving meanwhile.
* A handler exception in an ``ask`` goes back to the asker (the actor lives on, as in pykka). In a
  ``tell`` it crashes the actor: the actor stops, ``on_failure`` runs, and the crash is reported
  through :meth:`LoopActor.on_crash` (the supervisor's hook). A ``BaseException`` that is not an
  ``Exception`` (e.g. ``asyncio.CancelledError``) is contained the same way: it never stops other
  actors (pykka's ``ThreadingActor`` would stop every actor in the process).
* A message that reaches a stopped actor is answered with ``pykka.ActorDeadError``, never dropped,
  so an ``ask`` racing ``stop()`` cannot hang.
* The same-loop fast path (:func:`tell_here`): a sender that runs on the actor's own loop thread
  (the generator handing over the deltas of one network read, a stream actor cancelling its
  generation) has its ``tell`` handled at once instead of queued, unless that actor is already
  handling a message up the stack (then it is queued: handlers never nest within one actor).
  The handler still runs on the loop thread, alone. Order: a message handled at once overtakes
  any earlier one of the same sender that had to be queued, so a sender whose messages must stay
  in order queues all the rest once one was queued (the generator does: ``deltas_queued``).
* Blocking on a pykka future from an ActorLoop thread raises instead of deadlocking; on the
  thread that hosts the loop (outside its iterations) the loop runs on a rescue thread for as
  long as the wait lasts. From an event loop, ``await future`` never blocks: the reply is
  handed over by a :class:`~mellea_actors.runtime.crossing.Waker` (every thread crossing
  lives in :mod:`mellea_actors.runtime.crossing`).

LoopActors are *not* put in pykka's process-global ``ActorRegistry`` (its unregister is O(n), and
its ``stop_all`` would reach into sessions); the runtime keeps its own registry.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import itertools
import selectors
import sys
import threading
import uuid
from collections.abc import Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import pykka
from pykka import ActorDeadError

from mellea_actors._compat import (
    ActorStop,
    Envelope,
    ThreadingFuture,
    future_condition,
    future_has_get_hook,
    future_is_set,
    handle_receive,
)
from mellea_actors.errors import AskTimeoutError, RuntimeClosedError
from mellea_actors.runtime.crossing import (
    LoopHost,
    Waker,
    blocking,
    flush_wakes,
    hold_switch_interval,
    hop,
    in_thread,
    release_switch_interval,
    run_coroutine,
    wait_event,
)

if TYPE_CHECKING:
    from types import TracebackType

    ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]

__all__ = [
    "ActorLoop",
    "LoopActor",
    "LoopFuture",
    "actor_here",
    "ask_async",
    "current_actor_loop",
    "tell_here",
]

T = TypeVar("T")

_local = threading.local()


def current_actor_loop() -> ActorLoop | None:
    """The ActorLoop whose thread is running this code, or None."""
    return getattr(_local, "actor_loop", None)


class ActorLoop:
    """One asyncio event loop serving many :class:`LoopActor` mailboxes: on a daemon thread of
    its own, or *hosted* on the caller's running loop.

    * **Own thread** (``host=None``): the thread is a daemon so that a process never hangs at
      exit because of it; sessions stop their loop explicitly (``stop()``), and an ``atexit``
      hook of the runtime stops what is left.
    * **Hosted** (``host=`` the caller's running loop, made on that loop's thread): this loop
      is a selector loop of its own, run one iteration at a time from the host's callbacks on
      the host's thread (:class:`~mellea_actors.runtime.crossing.LoopHost`): the engine and the
      caller's coroutines share one thread, and no GIL changes hands between them. While that
      thread blocks in a call of the runtime (``str()`` of a pending thunk, a sync method), the
      loop runs on a rescue thread; when the host loop ends, or at ``stop()``, it moves to a
      thread of its own for good. "The loop's thread" below means whichever thread runs an
      iteration of it at that moment (:func:`current_actor_loop`): the invariants hold on it.
    """

    def __init__(
        self, name: str = "mellea-actors", *, host: asyncio.AbstractEventLoop | None = None
    ) -> None:
        self.name = name
        self._host_loop = host
        self._hosting: LoopHost | None = None  # while hosted, lent, or released from hosting
        self._selector_fd = -1
        if host is None:
            self._loop = asyncio.new_event_loop()
        else:
            selector = selectors.DefaultSelector()
            self._selector_fd = selector.fileno()  # EpollSelector / KqueueSelector
            self._loop = asyncio.SelectorEventLoop(selector)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._ready = threading.Event()
        self._closed = False
        self._closed_reason = "is closed"
        self._thread_id: int | None = None
        self.callback_context = contextvars.Context()
        """The context the runtime's own done callbacks run in (``add_done_callback(…,
        context=…)``): asyncio otherwise copies the current context for each callback (a
        tracked object per callback, two per generation). Only this loop's thread enters it,
        one callback at a time (asyncio never runs a callback inside another); those callbacks
        read and set no context variable. Not for tasks: a task's context is its own."""

    # -- lifecycle -------------------------------------------------------------------------
    @staticmethod
    def host_here() -> asyncio.AbstractEventLoop | None:
        """The loop that may host one made now: this thread's running loop if it has
        ``add_reader`` (not Windows' proactor), on a platform whose default selector has a
        descriptor to watch (epoll, kqueue), called from code outside any runtime loop; else
        None."""
        host = asyncio._get_running_loop()
        if host is None or current_actor_loop() is not None:
            return None
        if not hasattr(selectors.DefaultSelector, "fileno"):
            return None
        if isinstance(host, getattr(asyncio, "ProactorEventLoop", ())):
            return None
        return host

    @property
    def hosted(self) -> bool:
        """Whether the caller's loop runs this loop now (lent to a rescue thread included)."""
        hosting = self._hosting
        return hosting is not None and hosting.state != "released"

    def start(self, timeout: float = 10.0) -> ActorLoop:
        """Start serving: on the host loop (call on its thread, while it runs) or on the
        thread, returning once the loop runs (raises AskTimeoutError after timeout)."""
        if self._host_loop is not None:
            self._hosting = LoopHost(
                self._loop,
                self._selector_fd,
                self._host_loop,
                bind=self._bind,
                on_release=self._start_thread,
                name=self.name,
            )
            return self
        self._start_thread()
        if not self._ready.wait(timeout):
            raise AskTimeoutError(f"actor loop {self.name!r} did not start within {timeout} s")
        return self

    def _bind(self, running: bool) -> None:
        """LoopHost: a thread starts (True) or stops (False) running this loop."""
        _local.actor_loop = self if running else None

    def _start_thread(self) -> None:
        hold_switch_interval()  # released when the thread ends (crossing.py says why)
        try:
            self._thread.start()
        except BaseException:
            release_switch_interval()
            raise

    def _run(self) -> None:
        _local.actor_loop = self
        self._thread_id = threading.get_ident()
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(self._ready.set)
        try:
            while True:
                try:
                    self._loop.run_forever()
                    if self._closed:  # stop(); not a stray stop() of a hosted iteration
                        break
                except BaseException as exc:
                    # A callback or task let a KeyboardInterrupt/SystemExit out (asyncio
                    # re-raises those from run_forever). It may end only what raised it: say so
                    # and serve the other actors on.
                    if self._closed:
                        break
                    print(
                        f"mellea_actors: {exc!r} escaped a task on the runtime loop "
                        f"{self.name!r}; the loop goes on",
                        file=sys.stderr,
                    )
        finally:
            # Cancel what is left and let it run its cleanup (closing HTTP streams), bounded.
            tasks = [t for t in asyncio.all_tasks(self._loop) if not t.done()]
            for task in tasks:
                task.cancel()
            if tasks:
                gathered = asyncio.gather(*tasks, return_exceptions=True)
                with contextlib.suppress(Exception):
                    self._loop.run_until_complete(asyncio.wait_for(gathered, 5.0))
            with contextlib.suppress(Exception):
                self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            flush_wakes()  # readers on other loops woken by the last callbacks
            self._loop.close()
            release_switch_interval()

    def abandon(self, reason: str) -> None:
        """Mark the loop closed without stopping it: in a forked child, whose copy of the loop
        has no thread. Every later call raises RuntimeClosedError with ``reason``."""
        self._closed = True
        self._closed_reason = reason

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the loop (pending tasks are cancelled) and join the thread; True if it ended.

        A hosted loop first goes to its own thread (:meth:`LoopHost.release`), which then
        cancels, cleans up and closes as an own-thread loop does."""
        if self._closed:
            return not self._thread.is_alive()
        if self._hosting is not None:
            self._hosting.release()  # starts the thread (or, inside an iteration, right after)
        self._closed = True
        with contextlib.suppress(RuntimeError):
            hop(self._loop, self._loop.stop)
        if self._thread.ident is not None and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    @property
    def thread(self) -> threading.Thread:
        """The loop's own thread (not started while the loop is hosted)."""
        return self._thread

    def in_loop_thread(self) -> bool:
        """Whether the caller runs on this loop: on its own thread, or inside an iteration of
        it run by its host or a rescue thread."""
        return current_actor_loop() is self

    # -- scheduling ------------------------------------------------------------------------
    def call_soon(self, callback: Callable[..., object], *args: Any) -> None:
        """Run ``callback(*args)`` on the loop thread, after everything already scheduled.

        Thread-safe. Raises RuntimeClosedError once the loop was stopped.
        """
        if self._closed and not self.in_loop_thread():
            raise RuntimeClosedError(f"actor loop {self.name!r} {self._closed_reason}")
        try:
            hop(self._loop, callback, *args)
        except RuntimeError as exc:  # loop closed under our feet
            raise RuntimeClosedError(f"actor loop {self.name!r} {self._closed_reason}") from exc

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
        """A task on this loop (call on the loop thread) whose outcome is always retrieved.

        Its owner may still await or inspect it. An exception nobody else looked at never turns
        into asyncio's "Task exception was never retrieved": a runtime-closed or dead-actor
        error (a shutdown race) is dropped, anything else is printed with its traceback.
        """
        task = self._loop.create_task(coro, name=name)
        task.add_done_callback(_retrieve_outcome, context=self.callback_context)
        return task

    def run_coroutine(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run a coroutine on the loop; returns a concurrent future (thread-safe)."""
        if self._closed:
            coro.close()
            raise RuntimeClosedError(f"actor loop {self.name!r} {self._closed_reason}")
        return run_coroutine(self._loop, coro)

    def refuse_blocking_call(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Raise (after closing ``coro``, which then never ran) if a blocking call on this loop
        cannot be made now: RuntimeClosedError once the loop is closed, RuntimeError on the
        loop's own thread (it would deadlock)."""
        if self._closed:
            coro.close()
            raise RuntimeClosedError(f"actor loop {self.name!r} {self._closed_reason}")
        if self.in_loop_thread():
            coro.close()
            raise RuntimeError(
                "a blocking call was made on the mellea_actors loop thread; "
                "use the async method (await it) instead"
            )

    def run_sync(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine on the loop and block this thread until it is done.

        Works from any thread but the loop's own (which would deadlock: RuntimeError), also from
        a thread whose own event loop is running. On timeout the coroutine is cancelled and
        AskTimeoutError is raised; if this thread's wait is interrupted (``KeyboardInterrupt``)
        the coroutine is cancelled too, and the interrupt goes on. A ``KeyboardInterrupt`` or
        ``SystemExit`` raised by the coroutine is re-raised here, in the calling thread.
        """
        self.refuse_blocking_call(coro)
        future = self.run_coroutine(_carry_interrupts(coro))
        try:
            with blocking():  # on the host's thread, the loop runs elsewhere meanwhile
                return future.result(timeout)
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise AskTimeoutError(f"no result within {timeout} s") from exc
        except _Carried as carried:  # raised by the coroutine: re-raised here, where it means
            raise carried.interrupt from None  # something
        except BaseException:  # e.g. Ctrl-C in this thread while it waited: stop the work too
            future.cancel()
            raise


def _retrieve_outcome(task: asyncio.Task[Any]) -> None:
    if task.cancelled():
        return
    exc = task.exception()  # retrieved: asyncio will not warn about it
    if exc is not None and not isinstance(exc, ActorDeadError | RuntimeClosedError):
        import traceback

        print(f"mellea_actors: task {task.get_name()!r} failed:", file=sys.stderr)
        traceback.print_exception(exc, file=sys.stderr)


class _Carried(Exception):
    """Carries a KeyboardInterrupt/SystemExit out of a coroutine run by ``run_sync``."""

    def __init__(self, interrupt: BaseException) -> None:
        super().__init__(repr(interrupt))
        self.interrupt = interrupt


async def _carry_interrupts(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro``; a KeyboardInterrupt/SystemExit it raises leaves as a :class:`_Carried`
    (asyncio would otherwise re-raise it out of the loop and stop every actor)."""
    try:
        return await coro
    except (KeyboardInterrupt, SystemExit) as exc:
        raise _Carried(exc) from None


class LoopFuture(ThreadingFuture[T]):
    """A pykka future that can also be awaited from any event loop without blocking it.

    ``get(timeout=…)`` blocks as pykka's does (from plain threads). ``await future`` registers a
    callback that wakes the awaiting coroutine through a :class:`Waker`.
    """

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[Callable[[LoopFuture[T]], None]] = []  # guarded by the condition

    def set(self, value: Any | None = None) -> None:
        super().set(value)
        self._fire()

    def set_exception(self, exc_info: Any = None) -> None:
        if exc_info is None:
            exc_info = sys.exc_info()
        super().set_exception(exc_info)
        self._fire()

    def done(self) -> bool:
        return future_is_set(self) or future_has_get_hook(self)

    def _fire(self) -> None:
        with future_condition(self):
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)

    def add_done_callback(self, callback: Callable[[LoopFuture[T]], None]) -> None:
        """Call ``callback(self)`` once a value or exception is set (at once if it is)."""
        with future_condition(self):
            if not future_is_set(self):
                self._callbacks.append(callback)
                return
        callback(self)

    def get(self, *, timeout: float | None = None) -> Any:
        if not self.done() and current_actor_loop() is not None:
            raise RuntimeError(
                "blocking on an actor future from the mellea_actors loop thread would deadlock; "
                "await it instead"
            )
        if self.done():
            return super().get(timeout=timeout)
        with blocking():  # on the host's thread, the loop runs elsewhere meanwhile
            return super().get(timeout=timeout)

    def __await__(self) -> Generator[Any, None, T]:
        if future_has_get_hook(self):  # a converted future (e.g. from ActorRef.stop())
            return (yield from in_thread(self.get).__await__())
        if not future_is_set(self):
            waker = Waker.for_running_loop()
            self.add_done_callback(lambda _: waker.wake())
            yield from waker.wait().__await__()
        return self.get(timeout=0)


async def ask_async(ref: pykka.ActorRef[Any], message: Any, timeout: float | None = None) -> Any:
    """Ask an actor from a coroutine without blocking its event loop.

    Raises AskTimeoutError after ``timeout`` seconds (the reply, if it comes later, is dropped);
    cancelling the awaiting task abandons the reply the same way.
    """
    future = ref.ask(message, block=False)
    try:
        if timeout is None:
            return await future
        async with asyncio.timeout(timeout):
            return await future
    except TimeoutError as exc:
        raise AskTimeoutError(
            f"{ref} did not answer {type(message).__name__} in {timeout} s"
        ) from exc


_URN_PREFIX = uuid.uuid4().hex[:20]
_urn_numbers = itertools.count(1)


def _next_urn() -> str:
    """A unique ``urn:uuid:`` per actor: a random per-process prefix and a counter."""
    tail = f"{next(_urn_numbers):012x}"
    p = _URN_PREFIX
    return f"urn:uuid:{p[:8]}-{p[8:12]}-{p[12:16]}-{p[16:20]}-{tail}"


class _StoppedFlag:
    """``actor_stopped``: what pykka uses of its ``threading.Event`` (``set``/``is_set``),
    without a lock per actor. Set once, on the loop thread; read from any thread (a bool
    assignment is atomic). A ``threading.Event`` is made only for a ``wait`` (rarely used):
    ``wait`` publishes it before it reads the flag and ``set`` sets the flag before it reads
    the event, so one of the two always sees the other."""

    __slots__ = ("_event", "_set")

    def __init__(self) -> None:
        self._set = False
        self._event: threading.Event | None = None

    def set(self) -> None:
        self._set = True
        event = self._event
        if event is not None:
            event.set()

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        if self._event is None:
            with _flag_events_lock:
                if self._event is None:
                    self._event = threading.Event()
        if self._set:
            return True
        return wait_event(self._event, timeout)


_flag_events_lock = threading.Lock()


def actor_here(ref: pykka.ActorRef[Any]) -> LoopActor | None:
    """The actor behind ``ref`` when the caller may run its code at once — the caller runs on
    the actor's loop thread, the actor is not handling a message up the stack, and it has not
    stopped — else None. The test :func:`tell_here` makes; for a sender whose message would
    only carry arguments to one method of the actor (the generator's deltas, once per network
    read), it then calls :meth:`LoopActor.run_now` with them instead of building the message.
    The same ordering rule holds: once one of its messages had to be queued, a sender whose
    messages must stay in order queues all the rest (``tell``)."""
    inbox = ref.actor_inbox
    actor = inbox._actor if inbox.__class__ is _LoopInbox else None
    if (
        actor is None
        or actor._handling
        or actor.actor_stopped._set  # type: ignore[attr-defined]
        or current_actor_loop() is not actor.actor_loop
    ):
        return None
    return actor


def tell_here(ref: pykka.ActorRef[Any], message: Any) -> None:
    """``ref.tell(message)``, handled at once when the caller runs on the actor's loop thread
    and the actor is not handling a message right now (a handler of its own, up the stack);
    queued as usual otherwise. A message handled at once overtakes an earlier queued one of the
    same sender (see the module docstring).

    Raises ``pykka.ActorDeadError`` like ``tell`` when the actor is gone."""
    actor = actor_here(ref)
    if actor is None:  # elsewhere, from inside the actor's own handler, or stopped (tell raises)
        ref.tell(message)
    else:
        actor.receive_now(message)


def _refuse(envelope: Envelope[Any], why: str) -> None:
    """An envelope no actor will handle: its asker gets ``ActorDeadError``; a tell raises it."""
    error = ActorDeadError(why)
    if envelope.reply_to is None:
        raise error from None
    envelope.reply_to.set_exception((ActorDeadError, error, None))


class _LoopInbox:
    """The mailbox of a LoopActor: each envelope becomes one callback on the actor loop."""

    __slots__ = ("_actor",)

    def __init__(self) -> None:
        self._actor: LoopActor | None = None

    def put(self, envelope: Envelope[Any], /) -> None:
        actor = self._actor
        if actor is None:  # stopped: its inbox let go of it (see ``LoopActor._let_go``)
            _refuse(envelope, "the actor has stopped")
            return
        try:
            actor.actor_loop.call_soon(actor._deliver, envelope)
        except RuntimeClosedError:
            _refuse(envelope, f"{actor} is gone: its loop is closed")

    def get(self) -> Envelope[Any]:  # pragma: no cover - pykka's thread loop only
        raise RuntimeError("a LoopActor's inbox is served by its ActorLoop")

    def empty(self) -> bool:  # pragma: no cover - pykka's thread loop only
        return True


class LoopActor(pykka.Actor):
    """A pykka actor served by an :class:`ActorLoop` instead of a thread of its own.

    Subclasses implement ``on_receive`` (and/or methods for proxies) as usual, plus optionally
    ``on_start`` / ``on_stop`` / ``on_failure``. All of them run on the loop thread. Start with
    ``MyActor.start(actor_loop, …)``: the first constructor argument is the ActorLoop.
    """

    kind: ClassVar[str] = "actor"

    def __init__(self, actor_loop: ActorLoop, *_args: Any, **_kwargs: Any) -> None:
        # pykka's Actor.__init__ sets these four fields; done here without its per-actor
        # uuid4() (a getrandom syscall) and threading.Event (a Condition and a lock): an actor
        # per generation makes both part of every request's cost.
        self.actor_urn = _next_urn()
        inbox = _LoopInbox()
        self.actor_inbox = inbox
        self.actor_stopped = _StoppedFlag()  # type: ignore[assignment]
        self._handling = False  # a handler of this actor runs (loop thread only)
        self._actor_ref = pykka.ActorRef(self)
        self.actor_loop = actor_loop
        inbox._actor = self

    # pykka's hooks for actor implementations -----------------------------------------------
    @staticmethod
    def _create_actor_inbox() -> _LoopInbox:
        return _LoopInbox()

    @staticmethod
    def _create_future() -> LoopFuture[Any]:
        return LoopFuture()

    @classmethod
    def start(cls, *args: Any, **kwargs: Any) -> pykka.ActorRef[Any]:
        """Create the actor and schedule its ``on_start`` on the loop; thread-safe.

        Messages sent right after ``start()`` returns are handled after ``on_start``.
        """
        obj = cls(*args, **kwargs)
        obj._start_actor_loop()
        return obj.actor_ref

    def _start_actor_loop(self) -> None:
        self.actor_loop.call_soon(self._run_on_start)

    def begin(self) -> None:
        """Run ``on_start`` now, on the loop thread: for an actor made with its constructor
        (not :meth:`start`) by code that is already on the loop."""
        self._run_on_start()

    # the mailbox, served on the loop thread ------------------------------------------------
    def _run_on_start(self) -> None:
        try:
            self.on_start()
        except BaseException:
            self._crash(sys.exc_info())  # type: ignore[arg-type]

    def _deliver(self, envelope: Envelope[Any]) -> None:
        reply_to = envelope.reply_to
        if self.actor_stopped.is_set():
            if reply_to is not None:
                if isinstance(envelope.message, ActorStop):
                    reply_to.set(None)
                else:
                    reply_to.set_exception(
                        (ActorDeadError, ActorDeadError(f"{self} stopped before handling it"), None)
                    )
            return
        self._handling = True
        try:
            response = handle_receive(self, envelope.message)
        except BaseException as exc:
            if reply_to is not None:
                reply_to.set_exception()
                self.on_ask_failure(envelope.message, exc)
                if not isinstance(exc, Exception):  # contained: treat as a crash of this actor
                    self._crash(sys.exc_info())  # type: ignore[arg-type]
            else:
                self._crash(sys.exc_info())  # type: ignore[arg-type]
            return
        finally:
            self._handling = False
        if reply_to is None:
            if asyncio.iscoroutine(response):
                self._spawn(response, None)
            return
        if isinstance(response, asyncio.Future):
            response.add_done_callback(lambda f: _copy_outcome(f, reply_to))
        elif asyncio.iscoroutine(response):
            self._spawn(response, reply_to)
        else:
            reply_to.set(response)

    def receive_now(self, message: Any) -> None:
        """Handle a tell now (see :func:`tell_here`): the same as its delivery through the
        mailbox — a handler exception crashes the actor — without pykka's dispatch of proxy
        and stop messages, which a tell from the runtime never is."""
        response = self.run_now(self.on_receive, message)
        if response is not None and asyncio.iscoroutine(response):
            self._spawn(response, None)

    def run_now(self, method: Callable[..., Any], *args: Any) -> Any:
        """Run one of this actor's own methods now, as a handler runs (an exception crashes the
        actor; None is returned then); only after :func:`actor_here` returned this actor."""
        self._handling = True
        try:
            return method(*args)
        except BaseException:
            self._crash(sys.exc_info())  # type: ignore[arg-type]
            return None
        finally:
            self._handling = False

    def _spawn(self, coro: Coroutine[Any, Any, Any], reply_to: pykka.Future[Any] | None) -> None:
        task = self.actor_loop.loop.create_task(coro)

        def _done(t: asyncio.Task[Any]) -> None:
            if reply_to is not None:
                _copy_outcome(t, reply_to)
            elif not t.cancelled() and t.exception() is not None:
                exc = t.exception()
                assert exc is not None
                self._crash((type(exc), exc, exc.__traceback__))

        task.add_done_callback(_done)

    def stop_now(self) -> None:
        """Stop at once, from a handler of this actor (loop thread): ``on_stop`` runs before this
        returns, and every message still queued is answered with ``ActorDeadError``.

        ``stop()`` / ``ActorRef.stop()`` instead queue the stop behind earlier messages.
        """
        self._stop()

    def _stop(self) -> None:
        if self.actor_stopped.is_set():
            return
        self.actor_stopped.set()
        try:
            self.on_stop()
        except BaseException:
            self.on_crash(sys.exc_info())  # type: ignore[arg-type]
        self._let_go()

    def _crash(self, exc_info: ExcInfo) -> None:
        if self.actor_stopped.is_set():
            return
        self.actor_stopped.set()
        with contextlib.suppress(BaseException):  # a failing hook must not hide the crash
            self.on_failure(*exc_info)
        try:
            self.on_crash(exc_info)
        finally:
            self._let_go()

    def _let_go(self) -> None:
        """Break the actor ↔ inbox cycle once the actor has stopped, so that the actor, and
        what it holds, is freed by reference counting as soon as nothing else holds it, not by
        the cyclic collector (whose full pass is the tail of a burst of many streams;
        docs/hot_path.md). A message put in afterwards is answered with ``ActorDeadError``, as
        ``_deliver`` answers one queued before the stop."""
        inbox = self.actor_inbox
        if inbox.__class__ is _LoopInbox:
            inbox._actor = None

    # hooks for the runtime -----------------------------------------------------------------
    def on_crash(self, exc_info: ExcInfo) -> None:
        """Called on the loop thread after the actor crashed (it is already stopped).

        The runtime's actors override this to report to their supervisor; the default prints
        the traceback to stderr so that no crash is ever silent.
        """
        import traceback

        traceback.print_exception(*exc_info, file=sys.stderr)

    def on_ask_failure(self, message: Any, exc: BaseException) -> None:
        """Called when a handler raised while answering an ``ask`` (the asker gets the error)."""


def _copy_outcome(source: asyncio.Future[Any], target: pykka.Future[Any]) -> None:
    if source.cancelled():
        err = ActorDeadError("the actor dropped its deferred reply (it stopped)")
        target.set_exception((ActorDeadError, err, None))
        return
    exc = source.exception()
    if exc is not None:
        target.set_exception((type(exc), exc, exc.__traceback__))
    else:
        target.set(source.result())
