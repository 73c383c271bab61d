"""``ThunkHandle``: the engine side of a handle on one generation — the one read API.

:meth:`ActorSystem.start_generation` returns one per generation. The facade's
``ModelOutputThunk`` holds it and translates its calls; the stream actor of
``stream_with_chunking`` reads its generation through it too. Every way of reading the stream
(``astream``, ``iter_deltas``) claims the single-reader guard of the thunk's cell
(:class:`~mellea_actors.runtime.thunk_actor.ThunkCell`) for as long as it reads, so no reader,
however it reads, gets past another (a ``ReadNew`` ask to the actor claims the same guard).

Semantics, precisely:

* ``await astream()`` returns the text after this handle's cursor, waiting until there is some
  or the generation ended; it never waits for more than "some". With ``streamed`` false the
  first call waits for the end. On an ended generation it returns what is left unread (the
  whole text on a first call), then ``""``. If the generation failed, the text received before
  the error is returned first, and the next call raises the error.
* Cancelling the task awaiting ``astream()`` loses nothing and stops nothing: the cursor moves
  only when a call returns.
* ``iter_deltas(timeout)`` blocks a plain thread per wait (``AskTimeoutError`` after
  ``timeout`` seconds without news). Leaving it before the end — early ``break``, an exception,
  a timeout — requests the cancel of the generation and returns at once.
* ``await outcome()`` / ``wait_outcome(timeout)`` wait for the end (any number of callers);
  ``cancel()`` / ``cancel_sync()`` request the cancel and wait (bounded) until the thunk ended.

Ownership: the reader state (``cursor``, ``stream_started``, ``value_returned``) belongs to the
handle. ``cursor`` is written only while the single-reader claim is held, so only by the one
reader; the two flags are monotonic (False → True once). Everything else is the cell's (written
by its actor, see :mod:`mellea_actors.runtime.thunk_actor`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any, cast

import pykka

from mellea_actors._arguments import check_timeout
from mellea_actors.errors import AskTimeoutError, RuntimeClosedError
from mellea_actors.runtime.crossing import Waker
from mellea_actors.runtime.messages import AwaitOutcome, StreamRead, ThunkOutcome, ThunkStatus
from mellea_actors.runtime.thunk_actor import ThunkCell, read_from, read_now

__all__ = ["ThunkHandle"]


def _value_of(outcome: ThunkOutcome) -> str:
    """The outcome's text, or its error raised."""
    if outcome.status is ThunkStatus.FAILED:
        assert outcome.error is not None
        raise outcome.error.with_traceback(None)
    return outcome.text


class ThunkHandle:
    """The read and cancel API of one generation (see the module docstring)."""

    __slots__ = ("_cancel", "cell", "cursor", "ref", "stream_started", "streamed", "value_returned")

    def __init__(
        self,
        cell: ThunkCell,
        ref: pykka.ActorRef[Any],
        *,
        streamed: bool,
        cancel: Callable[[str, str], None],
    ) -> None:
        self.cell = cell
        self.ref = ref
        self.streamed = streamed
        self._cancel = cancel  # ``system.cancel(request_id, reason)``: thread-safe, at once
        self.cursor = 0  # deltas this handle's reader consumed
        self.stream_started = False
        self.value_returned = False

    # -- state (any thread) ---------------------------------------------------------------------
    @property
    def request_id(self) -> str:
        return self.cell.request_id

    @property
    def outcome_now(self) -> ThunkOutcome | None:
        return self.cell.outcome

    @property
    def cancelled(self) -> bool:
        outcome = self.cell.outcome
        return outcome is not None and outcome.status is ThunkStatus.CANCELLED

    def is_computed(self) -> bool:
        """True once the value is final and its reader is done with it. Never for a failed
        generation; at once for a cancelled one.

        A streamed generation (``ModelOption.STREAM``) that ended on its own counts as computed
        once its reader read it all (``astream``/``iter_chunks``) or took the value
        (``avalue``/``wait``) — not before, even if it ended long ago, as in Mellea, where a
        streamed thunk is computed by reading it. That is what lets the seed's
        ``while not mot.is_computed(): print(await mot.astream())`` print the story once even
        when the generation finished before the loop started.
        """
        outcome = self.cell.outcome
        if outcome is None or outcome.status is ThunkStatus.FAILED:
            return False
        if self.value_returned or outcome.status is ThunkStatus.CANCELLED:
            return True
        if self.stream_started:
            return self.cursor >= len(outcome.deltas)
        return not self.streamed

    # -- the outcome ----------------------------------------------------------------------------
    async def outcome(self) -> ThunkOutcome:
        """Wait for the end (from any loop, without blocking it)."""
        cell = self.cell
        outcome = cell.outcome
        if outcome is not None:
            return outcome
        try:
            result: ThunkOutcome = await self.ref.ask(AwaitOutcome(), block=False)
        except (pykka.ActorDeadError, RuntimeClosedError):
            if cell.outcome is not None:  # ended between our check and the ask
                return cell.outcome
            raise RuntimeClosedError(
                f"thunk {cell.request_id} was stopped before its generation ended "
                "(was the session closed?)"
            ) from None
        return result

    def wait_outcome(self, timeout: float | None) -> ThunkOutcome:
        """Block this (plain) thread until the end; AskTimeoutError after ``timeout`` seconds."""
        timeout = check_timeout(timeout, "timeout")
        outcome = self.cell.outcome
        if outcome is not None:
            return outcome
        try:
            return cast(ThunkOutcome, self.ref.ask(AwaitOutcome(), timeout=timeout))
        except pykka.Timeout as exc:
            raise AskTimeoutError(
                f"thunk {self.request_id} did not end within {timeout} s"
            ) from exc
        except pykka.ActorDeadError:
            outcome = self.cell.outcome
            if outcome is None:
                raise RuntimeClosedError(
                    f"thunk {self.request_id} was stopped before its generation ended"
                ) from None
            return outcome

    async def value(self) -> str:
        """Wait for the end; the full text (the generation's error raised if it failed)."""
        text = _value_of(await self.outcome())
        self.value_returned = True
        return text

    def wait_value(self, timeout: float | None) -> str:
        """Blocking :meth:`value`."""
        text = _value_of(self.wait_outcome(timeout))
        self.value_returned = True
        return text

    # -- the stream -----------------------------------------------------------------------------
    async def astream(self, who: str = "astream()") -> str:
        """The text after this handle's cursor (see the module docstring)."""
        cell = self.cell
        waker = None
        if cell.outcome is None and self.streamed and len(cell.deltas) <= self.cursor:
            waker = Waker.for_running_loop()  # likely to wait: claim and park in one step
        parked = cell.claim_reader(who, waker, self.cursor)
        try:
            self.stream_started = True
            if parked:
                await waker  # type: ignore[misc]  # parked implies a waker
            elif cell.outcome is None and not self.streamed:
                await self.outcome()
            text, end, outcome = read_now(cell, self.cursor)
        finally:
            cell.release_reader(who)  # also drops a parked waker
        self.cursor = end
        if outcome is not None and not text:
            _value_of(outcome)  # a failed generation raises once its text was read
        return text

    async def _read_next(self) -> StreamRead:
        """Wait (as the claimed reader) until there is text after the cursor or an outcome."""
        cell = self.cell
        if cell.outcome is None:
            if not self.streamed:
                await self.outcome()
            elif len(cell.deltas) <= self.cursor:
                waker = Waker.for_running_loop()
                if cell.park(waker, self.cursor):
                    try:
                        await waker
                    finally:
                        cell.unpark(waker)
        return read_from(cell, self.cursor)

    def iter_deltas(
        self, timeout: float | None, *, cancel_reason: str, who: str = "iter_chunks()"
    ) -> Iterator[str]:
        """Block-iterate the text as it arrives (see the module docstring)."""
        timeout = check_timeout(timeout, "timeout")
        cell = self.cell
        cell.claim_reader(who)
        finished = False
        try:
            self.stream_started = True
            while True:
                if cell.outcome is None and not self.streamed:
                    self.wait_outcome(timeout)
                elif cell.outcome is None and len(cell.deltas) <= self.cursor:
                    waker = Waker.for_thread()
                    if cell.park(waker, self.cursor) and not waker.wait_sync(timeout):
                        cell.unpark(waker)
                        raise AskTimeoutError(
                            f"no new text from thunk {self.request_id} within {timeout} s"
                        )
                read = read_from(cell, self.cursor)
                self.cursor = read.cursor
                if read.outcome is not None:
                    finished = True
                    if read.text:
                        yield read.text
                    _value_of(read.outcome)  # raises for a failed generation
                    return
                if read.text:
                    yield read.text
        finally:
            cell.release_reader(who)
            if not finished and cell.outcome is None:
                self._cancel(cell.request_id, cancel_reason)

    # -- cancel ---------------------------------------------------------------------------------
    def request_cancel(self, reason: str) -> None:
        """Ask for the cancel and return at once (thread-safe; no-op once ended)."""
        if self.cell.outcome is None:
            self._cancel(self.cell.request_id, reason)

    async def cancel(self, reason: str = "cancelled by the user", timeout: float = 10.0) -> None:
        """Cancel and wait until the thunk ended; AskTimeoutError after ``timeout`` seconds."""
        check_timeout(timeout, "timeout", allow_none=False)
        if self.cell.outcome is not None:
            return
        self._cancel(self.cell.request_id, reason)
        try:
            async with asyncio.timeout(timeout):
                await self.outcome()
        except TimeoutError as exc:
            raise AskTimeoutError(
                f"thunk {self.request_id} did not end within {timeout} s of its cancel"
            ) from exc

    def cancel_sync(self, reason: str = "cancelled by the user", timeout: float = 10.0) -> None:
        """Blocking :meth:`cancel`, for plain threads (AskTimeoutError after ``timeout``)."""
        check_timeout(timeout, "timeout", allow_none=False)
        if self.cell.outcome is not None:
            return
        self._cancel(self.cell.request_id, reason)
        with contextlib.suppress(RuntimeClosedError):  # stopped without an outcome: it ended
            self.wait_outcome(timeout)

    # -- async iteration (``async for delta in mot``) --------------------------------------------
    async def aiter_deltas(
        self, *, cancel_reason: str, who: str = "async for"
    ) -> AsyncGenerator[str, None]:
        """Async-iterate the text as it arrives, from any loop, as the thunk's reader for the
        whole iteration (a second reader meanwhile gets ``SingleReaderError``).

        Unlike :meth:`astream`, this owns the consumption: leaving before the end — an
        exception or a cancel of the awaiting task inside it, or ``aclose()`` of the generator —
        requests the cancel of the generation with ``cancel_reason``. The ``finally`` has no
        ``await``, so one synchronous step of ``aclose()`` runs it whole (what the facade's
        iterator does when an ``async for`` leaves it by ``break``).
        """
        cell = self.cell
        cell.claim_reader(who)
        try:
            self.stream_started = True
            while True:
                read = await self._read_next()
                self.cursor = read.cursor
                if read.text:
                    yield read.text
                if read.outcome is not None:
                    _value_of(read.outcome)  # a failed generation raises once its text was read
                    return
        finally:
            cell.release_reader(who)
            if cell.outcome is None:  # left before the end
                self._cancel(cell.request_id, cancel_reason)
