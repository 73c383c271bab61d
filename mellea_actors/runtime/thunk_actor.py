"""The thunk actor: owns one generation's buffer and state; the cell it publishes them in.

One :class:`ThunkActor` per generation. It lives on the runtime's :class:`ActorLoop` (no thread of
its own), receives the generator's deltas (``DeltasArrived``), answers readers that hold its
``ActorRef`` (``ReadNew``, ``AwaitOutcome``), and when the generation is over publishes a
:class:`ThunkOutcome` and stops. The user's handle reads through a
:class:`~mellea_actors.runtime.thunk_handle.ThunkHandle`, mostly without any message.

Ownership of the :class:`ThunkCell` (trio-style, stated where it is enforced):

* The ThunkActor, on the loop thread, is the only writer of ``deltas``, ``thinking``,
  ``status``, ``first_delta_at`` and ``outcome``. Readers on any thread only read them:
  ``deltas`` is append-only (a reader may snapshot a prefix; it is an empty tuple until the
  first delta, then one list), ``outcome`` goes from None to a frozen ThunkOutcome exactly
  once, after the last delta.
* ``reader`` and ``waker`` are guarded by ``lock`` (one of 64 locks that cells share: the
  sections under it touch one cell's fields and never take another lock). ``reader`` is
  **the single-reader guard**: every way of reading the stream (``astream()``,
  ``iter_chunks()``, the stream actor of ``stream_with_chunking``, a ``ReadNew`` ask) claims it
  for as long as it reads, and a second claim while it is held raises
  :class:`SingleReaderError` naming the thunk and the holder. The holder may park one
  :class:`~mellea_actors.runtime.crossing.Waker` in ``waker``; the actor wakes it once after it
  published new text or the outcome (one cross-thread hop per wake-up).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pykka

from mellea_actors.errors import RuntimeClosedError, SingleReaderError, ThunkError
from mellea_actors.runtime.actor_base import RuntimeActor, handles
from mellea_actors.runtime.loop import ActorLoop
from mellea_actors.runtime.messages import (
    AwaitOutcome,
    ChildCrashed,
    DeltasArrived,
    GenerationCancelled,
    GenerationFailed,
    GenerationFinished,
    GenerationStats,
    ReaderGone,
    ReadNew,
    StreamRead,
    ThunkOutcome,
    ThunkStatus,
)

if TYPE_CHECKING:
    from mellea_actors.runtime.crossing import Waker
    from mellea_actors.runtime.log import SupervisionLog

__all__ = ["ThunkActor", "ThunkCell", "read_from", "read_now"]

_CELL_LOCKS = tuple(threading.Lock() for _ in range(64))
"""The locks ThunkCells share (by request id)."""


class ThunkCell:
    """What a ThunkActor publishes, and the single-reader guard (see the module docstring)."""

    __slots__ = (
        "deltas",
        "first_delta_at",
        "lock",
        "outcome",
        "reader",
        "request_id",
        "status",
        "thinking",
        "waker",
    )

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        # written by the actor only (loop thread); read by anyone
        # append-only; the shared empty tuple until the first delta (10,000 pending thunks
        # need no list each), then the cell's own list
        self.deltas: list[str] | tuple[str, ...] = ()
        self.thinking: list[str] | None = None  # append-only; made with the first piece
        self.status = ThunkStatus.PENDING
        self.outcome: ThunkOutcome | None = None  # set once
        self.first_delta_at: float | None = None
        # guarded by ``lock``: one of a few shared locks (its sections are a few field
        # operations and never nest, so cells may share one; a lock per cell cost 56 B each)
        self.lock = _CELL_LOCKS[hash(request_id) % len(_CELL_LOCKS)]
        self.reader: str | None = None  # who holds the single-reader claim
        self.waker: Waker | None = None  # the holder's parked waker

    # -- the single-reader guard (any thread) ---------------------------------------------------
    def claim_reader(self, who: str, waker: Waker | None = None, cursor: int = 0) -> bool:
        """Become the thunk's reader; raise SingleReaderError if someone else is reading.

        With a ``waker``, also park it (one lock for both) unless there is already news after
        ``cursor``; returns whether it was parked (``release_reader`` drops it)."""
        with self.lock:
            if self.reader is not None:
                raise SingleReaderError(
                    f"thunk {self.request_id} already has a reader ({self.reader}); a thunk has "
                    f"a single reader, so {who} may not read it now (use avalue() for more "
                    "consumers)"
                )
            self.reader = who
            if waker is None or len(self.deltas) > cursor or self.outcome is not None:
                return False
            self.waker = waker
            return True

    def release_reader(self, who: str) -> None:
        with self.lock:
            if self.reader == who:
                self.reader = None
                self.waker = None

    def park(self, waker: Waker, cursor: int) -> bool:
        """Park the reader's waker unless there is already news after ``cursor``.

        Returns False (nothing parked) when there is more than ``cursor`` deltas or an outcome.
        """
        with self.lock:
            if len(self.deltas) > cursor or self.outcome is not None:
                return False
            self.waker = waker
            return True

    def unpark(self, waker: Waker) -> None:
        with self.lock:
            if self.waker is waker:
                self.waker = None

    def wake_reader(self, more: bool = False) -> None:
        """Called by the actor after publishing text or the outcome: wake the parked reader
        (``more``: more text of a stream that has some already, a coalescable wake-up)."""
        with self.lock:
            waker, self.waker = self.waker, None
        if waker is not None:
            waker.wake(more)

    # -- reads (any thread) ---------------------------------------------------------------------
    def snapshot_text(self) -> str:
        """The text received so far (safe from any thread: a prefix of the final text)."""
        outcome = self.outcome
        if outcome is not None:
            return outcome.text
        return "".join(self.deltas[: len(self.deltas)])


def read_now(cell: ThunkCell, cursor: int) -> tuple[str, int, ThunkOutcome | None]:
    """The text after delta ``cursor`` that is there now, the next cursor, the outcome if final.

    Safe from any thread (``deltas`` is append-only; the outcome, once set, holds them all). A
    plain tuple: ``astream()`` calls this once per chunk.
    """
    outcome = cell.outcome
    deltas: tuple[str, ...] | list[str] = cell.deltas if outcome is None else outcome.deltas
    end = len(deltas)
    text = deltas[cursor] if end == cursor + 1 else "".join(deltas[cursor:end])
    return text, end, outcome


def read_from(cell: ThunkCell, cursor: int) -> StreamRead:
    """:func:`read_now` as the reply to a ``ReadNew``."""
    text, end, outcome = read_now(cell, cursor)
    return StreamRead(text=text, cursor=end, outcome=outcome)


class ThunkActor(RuntimeActor):
    """Owns one generation's output; see the module docstring for the protocol.

    Its own state (``_pending_read``, ``_outcome_waiters``) is touched on the loop thread only.
    """

    kind = "thunk"

    def __init__(
        self,
        actor_loop: ActorLoop,
        cell: ThunkCell,
        *,
        log: SupervisionLog,
        parent_id: str | None = None,
        registry: dict[str, Any] | None = None,
        supervisor: pykka.ActorRef[Any] | None = None,
    ) -> None:
        super().__init__(
            actor_loop,
            log=log,
            actor_id=f"thunk-{cell.request_id}",
            parent_id=parent_id,
            parent=supervisor,
        )
        self.cell = cell
        self._registry = registry
        # a ReadNew waiting for text: (message, reply, its claim on the cell)
        self._pending_read: tuple[ReadNew, asyncio.Future[StreamRead], str] | None = None
        # avalue() waiters: None until there is one (most thunks never have any)
        self._outcome_waiters: list[asyncio.Future[ThunkOutcome]] | None = None

    def __str__(self) -> str:
        return f"thunk {self.cell.request_id}"

    @property
    def thunk_id(self) -> str:
        return self.cell.request_id

    # lifecycle -------------------------------------------------------------------------------
    def on_start(self) -> None:
        self.emit("actor_started")

    def on_stop(self) -> None:
        if self._registry is not None:
            self._registry.pop(self.cell.request_id, None)
        if self.cell.outcome is None:  # stopped before the end: nobody may wait forever
            err = RuntimeClosedError(f"{self} was stopped before its generation ended")
            self._publish_failure(err)
            for fut in self._drain_waiters():
                fut.set_exception(err)
        self.emit("actor_stopped")

    def on_crash(self, exc_info: Any) -> None:
        """Publish a failed outcome (readers get a clear error) and report to the supervisor."""
        if self._registry is not None:
            self._registry.pop(self.cell.request_id, None)
        reason = repr(exc_info[1])
        self.emit("actor_crashed", reason=reason)
        err = ThunkError(f"{self} crashed: {reason}; the text received so far is kept")
        err.__cause__ = exc_info[1]
        self._publish_failure(err)
        for fut in self._drain_waiters():
            fut.set_exception(err)
        self.tell_parent(ChildCrashed(self.actor_id, self.kind, self.cell.request_id, reason))

    def _publish_failure(self, err: BaseException) -> None:
        """End the thunk as failed with ``err`` (text so far kept) unless it already ended."""
        deltas = tuple(self.cell.deltas)
        meta = GenerationStats(model="", completion_tokens=len(deltas))
        self._publish(ThunkStatus.FAILED, meta, error=err)

    def _drain_waiters(self) -> list[asyncio.Future[Any]]:
        futures: list[asyncio.Future[Any]] = list(self._outcome_waiters or ())
        self._outcome_waiters = None
        pending = self._take_pending_read()
        if pending is not None:
            futures.append(pending[1])
        return [f for f in futures if not f.done()]

    def _take_pending_read(self) -> tuple[ReadNew, asyncio.Future[StreamRead], str] | None:
        pending, self._pending_read = self._pending_read, None
        if pending is not None:
            self.cell.release_reader(pending[2])
        return pending

    # from the generator ----------------------------------------------------------------------
    @handles(DeltasArrived)
    def _on_deltas(self, message: DeltasArrived) -> None:
        self.take_deltas(message.deltas, message.thinking, message.at)

    def take_deltas(self, deltas: Sequence[str], thinking: str, at: float) -> None:
        """The deltas of one network read, in order (``DeltasArrived`` without the message: the
        generator calls this directly when it may run the actor's code at once, see
        :func:`~mellea_actors.runtime.loop.actor_here`). ``deltas`` is copied, not kept."""
        cell = self.cell
        if cell.outcome is not None:
            return
        if cell.status is ThunkStatus.PENDING:
            cell.status = ThunkStatus.STREAMING
            cell.first_delta_at = at or time.monotonic()
        if thinking:
            if cell.thinking is None:
                cell.thinking = []
            cell.thinking.append(thinking)
        if not deltas:
            return
        have = cell.deltas
        more = bool(have)  # the reader has text already: a coalescable wake-up
        if isinstance(have, list):
            have.extend(deltas)
        else:  # the first deltas: the cell's own list from now on
            cell.deltas = list(deltas)
        cell.wake_reader(more)
        if self._pending_read is not None:
            pending = self._take_pending_read()
            if pending is not None and not pending[1].done():
                pending[1].set_result(read_from(cell, pending[0].cursor))

    def _publish(
        self,
        status: ThunkStatus,
        meta: GenerationStats,
        error: BaseException | None = None,
        cancel_reason: str | None = None,
    ) -> ThunkOutcome | None:
        """Publish the outcome (once) and wake every reader; None if it was published before."""
        cell = self.cell
        if cell.outcome is not None:
            return None
        deltas = tuple(cell.deltas)
        outcome = ThunkOutcome(
            status=status,
            deltas=deltas,
            thinking="".join(cell.thinking or ()),
            meta=meta,
            error=error,
            cancel_reason=cancel_reason,
            text="".join(deltas),
        )
        cell.status = status
        cell.outcome = outcome  # publish: from now on readers need no message
        cell.wake_reader()
        return outcome

    def _finish(
        self,
        status: ThunkStatus,
        meta: GenerationStats,
        error: BaseException | None = None,
        cancel_reason: str | None = None,
    ) -> None:
        outcome = self._publish(status, meta, error, cancel_reason)
        if outcome is None:
            return
        pending = self._take_pending_read()
        if pending is not None and not pending[1].done():
            pending[1].set_result(read_from(self.cell, pending[0].cursor))
        waiters, self._outcome_waiters = self._outcome_waiters or (), None
        for fut in waiters:
            if not fut.done():
                fut.set_result(outcome)
        self.stop()

    @handles(GenerationFinished)
    def _on_finished(self, message: GenerationFinished) -> None:
        self._finish(ThunkStatus.COMPUTED, message.meta)

    @handles(GenerationFailed)
    def _on_failed(self, message: GenerationFailed) -> None:
        self._finish(ThunkStatus.FAILED, message.meta, error=message.error)

    @handles(GenerationCancelled)
    def _on_cancelled(self, message: GenerationCancelled) -> None:
        self._finish(ThunkStatus.CANCELLED, message.meta, cancel_reason=message.reason)

    # from readers that hold the ActorRef ---------------------------------------------------
    @handles(ReadNew)
    def _on_read(self, message: ReadNew) -> StreamRead | asyncio.Future[StreamRead]:
        cell = self.cell
        who = f"a ReadNew ask (reader {message.reader})"
        cell.claim_reader(who)  # SingleReaderError while anyone else reads
        if cell.outcome is not None or len(cell.deltas) > message.cursor:
            cell.release_reader(who)
            return read_from(cell, message.cursor)
        fut: asyncio.Future[StreamRead] = self.actor_loop.loop.create_future()
        self._pending_read = (message, fut, who)
        return fut

    @handles(ReaderGone)
    def _on_reader_gone(self, message: ReaderGone) -> None:
        pending = self._pending_read
        if pending is not None and pending[0].reader == message.reader:
            self._take_pending_read()
            pending[1].cancel()

    @handles(AwaitOutcome)
    def _on_await_outcome(self, message: AwaitOutcome) -> ThunkOutcome | asyncio.Future[Any]:
        if self.cell.outcome is not None:
            return self.cell.outcome
        fut: asyncio.Future[ThunkOutcome] = self.actor_loop.loop.create_future()
        if self._outcome_waiters is None:
            self._outcome_waiters = []
        self._outcome_waiters.append(fut)
        return fut
