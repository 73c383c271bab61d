"""The thunk actor: owns one generation's buffer and state, serves its readers.

One :class:`ThunkActor` per generation. It lives on the runtime's :class:`ActorLoop` (no thread of
its own), receives the generator's chunks, answers readers (``ReadNew``, ``AwaitOutcome``), and
when the generation is over publishes a :class:`ThunkOutcome` and stops. Reads after that are
served from the published outcome without any message.

Ownership: the ThunkActor, on the loop thread, is the only writer of its :class:`ThunkCell`.
Readers on other threads only read it: ``cell.chunks`` is append-only (a reader may snapshot a
prefix), ``cell.outcome`` goes from None to a frozen ThunkOutcome exactly once.

Waking a reader: besides the ``ReadNew`` message (for anyone holding the ActorRef), the
``ModelOutputThunk`` facade registers a *waker* in the cell (under ``cell.lock``) and awaits a
future of its own loop; the actor calls the waker once after new text or the outcome was
published. That is one cross-thread hop per wake-up instead of two (ask, then reply).

Single reader: at most one ``ReadNew`` may be waiting at a time. A second one, while the first
waits, is answered at once with :class:`SingleReaderError` naming the thunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pykka

from mellea_actors.errors import RuntimeClosedError, SingleReaderError, ThunkError
from mellea_actors.runtime.loop import ActorLoop, LoopActor
from mellea_actors.runtime.messages import (
    AwaitOutcome,
    ChildCrashed,
    ChunkArrived,
    GenerationCancelled,
    GenerationFailed,
    GenerationFinished,
    GenerationMeta,
    ReaderGone,
    ReadNew,
    StreamRead,
    ThunkOutcome,
    ThunkStatus,
)

if TYPE_CHECKING:
    from mellea_actors.runtime.log import SupervisionLog

__all__ = ["ThunkActor", "ThunkCell"]


class ThunkCell:
    """What a ThunkActor publishes for lock-free reads (single writer: the actor's loop thread)."""

    __slots__ = (
        "chunks",
        "first_chunk_at",
        "lock",
        "outcome",
        "request_id",
        "status",
        "thinking",
        "waker",
    )

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.lock = threading.Lock()  # guards ``waker`` only
        self.waker: Callable[[], None] | None = None  # set by the one waiting reader
        self.chunks: list[str] = []  # append-only
        self.thinking: list[str] = []  # append-only
        self.status = ThunkStatus.PENDING
        self.outcome: ThunkOutcome | None = None  # set once
        self.first_chunk_at: float | None = None

    def wake_reader(self) -> None:
        """Called by the actor after publishing text or the outcome: wake the waiting reader."""
        with self.lock:
            waker, self.waker = self.waker, None
        if waker is not None:
            waker()

    def snapshot_text(self) -> str:
        """The text received so far (safe from any thread: a prefix of the final text)."""
        outcome = self.outcome
        if outcome is not None:
            return outcome.text
        return "".join(self.chunks[: len(self.chunks)])


class ThunkActor(LoopActor):
    """Owns one generation's output; see the module docstring for the protocol."""

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
        super().__init__(actor_loop)
        self.cell = cell
        self._registry = registry
        self._supervisor = supervisor
        self.log = log
        self.parent_id = parent_id
        self.actor_id = f"thunk-{cell.request_id}"
        self._pending_read: tuple[ReadNew, asyncio.Future[StreamRead]] | None = None
        self._outcome_waiters: list[asyncio.Future[ThunkOutcome]] = []
        self._handlers: dict[type, Any] = {
            ChunkArrived: self._on_chunk,
            ReadNew: self._on_read,
            ReaderGone: self._on_reader_gone,
            AwaitOutcome: self._on_await_outcome,
            GenerationFinished: self._on_finished,
            GenerationFailed: self._on_failed,
            GenerationCancelled: self._on_cancelled,
        }

    def __str__(self) -> str:
        return f"thunk {self.cell.request_id}"

    # lifecycle -------------------------------------------------------------------------------
    def on_start(self) -> None:
        self._emit("actor_started")

    def on_stop(self) -> None:
        if self._registry is not None:
            self._registry.pop(self.cell.request_id, None)
        if self.cell.outcome is None:  # stopped before the end: nobody may wait forever
            err = RuntimeClosedError(f"{self} was stopped before its generation ended")
            self._publish_failure(err)
            for fut in self._drain_waiters():
                fut.set_exception(err)
        self._emit("actor_stopped")

    def on_crash(self, exc_info: Any) -> None:
        """Publish a failed outcome (readers get a clear error) and report to the supervisor."""
        if self._registry is not None:
            self._registry.pop(self.cell.request_id, None)
        reason = repr(exc_info[1])
        self._emit("actor_crashed", reason=reason)
        err = ThunkError(f"{self} crashed: {reason}; the text received so far is kept")
        err.__cause__ = exc_info[1]
        self._publish_failure(err)
        for fut in self._drain_waiters():
            fut.set_exception(err)
        if self._supervisor is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                self._supervisor.tell(
                    ChildCrashed(self.actor_id, self.kind, self.cell.request_id, reason)
                )

    def _emit(self, event: str, reason: str | None = None) -> None:
        self.log.emit(
            event,
            actor=self.actor_id,
            kind=self.kind,
            parent=self.parent_id,
            thunk=self.cell.request_id,
            reason=reason,
        )

    def _publish_failure(self, err: BaseException) -> None:
        """End the thunk as failed with ``err`` (text so far kept) unless it already ended."""
        cell = self.cell
        if cell.outcome is not None:
            return
        chunks = tuple(cell.chunks)
        cell.status = ThunkStatus.FAILED
        cell.outcome = ThunkOutcome(
            status=ThunkStatus.FAILED,
            chunks=chunks,
            thinking="".join(cell.thinking),
            meta=GenerationMeta(model="", completion_tokens=len(chunks)),
            error=err,
            text="".join(chunks),
        )
        cell.wake_reader()

    def on_ask_failure(self, message: Any, exc: BaseException) -> None:
        """The asker got the error and the actor lives on; the log still says so."""
        self._emit("ask_failed", reason=f"{type(message).__name__}: {exc!r}")

    def _drain_waiters(self) -> list[asyncio.Future[Any]]:
        futures: list[asyncio.Future[Any]] = list(self._outcome_waiters)
        self._outcome_waiters.clear()
        if self._pending_read is not None:
            futures.append(self._pending_read[1])
            self._pending_read = None
        return [f for f in futures if not f.done()]

    def on_receive(self, message: Any) -> Any:
        handler = self._handlers.get(type(message))
        if handler is None:
            raise TypeError(f"{self} does not understand {type(message).__name__}")
        return handler(message)

    # from the generator ----------------------------------------------------------------------
    def _on_chunk(self, message: ChunkArrived) -> None:
        cell = self.cell
        if cell.outcome is not None:
            return
        if cell.status is ThunkStatus.PENDING:
            cell.status = ThunkStatus.STREAMING
            cell.first_chunk_at = message.at or time.monotonic()
        if message.thinking:
            cell.thinking.append(message.thinking)
        if not message.texts:
            return
        cell.chunks.extend(message.texts)
        cell.wake_reader()
        pending = self._pending_read
        if pending is not None:
            self._pending_read = None
            request, fut = pending
            if not fut.done():
                fut.set_result(self._read_from(request.cursor, None))

    def _finish(
        self,
        status: ThunkStatus,
        meta: GenerationMeta,
        error: BaseException | None = None,
        cancel_reason: str | None = None,
    ) -> None:
        cell = self.cell
        if cell.outcome is not None:
            return
        chunks = tuple(cell.chunks)
        outcome = ThunkOutcome(
            status=status,
            chunks=chunks,
            thinking="".join(cell.thinking),
            meta=meta,
            error=error,
            cancel_reason=cancel_reason,
            text="".join(chunks),
        )
        cell.status = status
        cell.outcome = outcome  # publish: from now on readers need no message
        cell.wake_reader()
        pending = self._pending_read
        self._pending_read = None
        if pending is not None and not pending[1].done():
            pending[1].set_result(self._read_from(pending[0].cursor, outcome))
        waiters, self._outcome_waiters = self._outcome_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(outcome)
        self.stop()

    def _on_finished(self, message: GenerationFinished) -> None:
        self._finish(ThunkStatus.COMPUTED, message.meta)

    def _on_failed(self, message: GenerationFailed) -> None:
        self._finish(ThunkStatus.FAILED, message.meta, error=message.error)

    def _on_cancelled(self, message: GenerationCancelled) -> None:
        self._finish(ThunkStatus.CANCELLED, message.meta, cancel_reason=message.reason)

    # from readers ----------------------------------------------------------------------------
    def _read_from(self, cursor: int, outcome: ThunkOutcome | None) -> StreamRead:
        chunks = self.cell.chunks if outcome is None else outcome.chunks
        end = len(chunks)
        text = chunks[cursor] if end == cursor + 1 else "".join(chunks[cursor:end])
        return StreamRead(text=text, cursor=end, outcome=outcome)

    def _on_read(self, message: ReadNew) -> StreamRead | asyncio.Future[StreamRead]:
        outcome = self.cell.outcome
        if outcome is not None or len(self.cell.chunks) > message.cursor:
            return self._read_from(message.cursor, outcome)
        if self._pending_read is not None and not self._pending_read[1].done():
            raise SingleReaderError(
                f"{self} already has a reader waiting in astream(); a thunk has a single reader"
            )
        fut: asyncio.Future[StreamRead] = self.actor_loop.loop.create_future()
        self._pending_read = (message, fut)
        return fut

    def _on_reader_gone(self, message: ReaderGone) -> None:
        pending = self._pending_read
        if pending is not None and pending[0].reader == message.reader:
            self._pending_read = None
            pending[1].cancel()

    def _on_await_outcome(self, message: AwaitOutcome) -> ThunkOutcome | asyncio.Future[Any]:
        if self.cell.outcome is not None:
            return self.cell.outcome
        fut: asyncio.Future[ThunkOutcome] = self.actor_loop.loop.create_future()
        self._outcome_waiters.append(fut)
        return fut
