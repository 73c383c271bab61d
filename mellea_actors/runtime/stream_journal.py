"""The journal of one ``stream_with_chunking`` run: the state the engine publishes, and the
hand-off of that state from the runtime's loop thread to the consumer.

A :class:`StreamJournal` is the run's :class:`~mellea_actors.runtime.stream_contract.StreamSink`:
the stream actor (:mod:`mellea_actors.runtime.stream_actor`) calls it on the actor loop thread,
in order, and it records what was published — per attempt an :class:`AttemptRecord`, for the run
its request ids and its :class:`StreamOutcome` — and feeds two channels (the events, built by
the facade's :class:`~mellea_actors.runtime.stream_contract.EventFactory`, and the delivered
chunk texts) and a done signal, from :mod:`mellea_actors.runtime.crossing`. The facade's result
(:class:`~mellea_actors.stdlib.streaming.StreamChunkingResult`) only reads it; what those reads
mean to a user is stated there.

Ownership (trio-style), stated once:

* **Runtime-written** (the sink methods, on the actor loop thread only, one call at a time):
  ``_current`` (replaced whole when an attempt is installed), the current record's fields
  (``segments`` append-only; ``natural_text``, ``finals`` set once; ``failures`` appended while
  the run stops), ``_request_ids`` (a tuple, replaced whole), ``_outcome`` (None → set once,
  before ``_done``), the producer side of both channels, and ``_done`` (set once, last). Readers
  on any thread read these without a lock: every write is one reference assignment or an
  append, and a reader that takes ``current`` once reads one attempt's consistent record. An
  event is put *after* the state it announces was written.
* **Consumer-written** (any thread, any loop), guarded by ``_lock``: which view was taken
  (``events``/``chunks``), whether the run's error was surfaced, the ``full_text`` cache and
  the facade's memos. Nothing else writes them; the runtime only reads ``full_text`` (in
  ``finish``), through the same lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from mellea_actors.runtime.crossing import Channel, Signal, interrupt_behind
from mellea_actors.runtime.stream_contract import (
    EventFactory,
    StreamAttempt,
    StreamOutcome,
)

__all__ = ["AttemptRecord", "ChannelIterator", "StreamJournal"]

E = TypeVar("E")
T = TypeVar("T")


class AttemptRecord:
    """What one attempt published; a new record per attempt (see the module docstring for who
    writes which field)."""

    __slots__ = (
        "failures",
        "finals",
        "natural_text",
        "number",
        "payload",
        "request_id",
        "segments",
    )

    def __init__(self, number: int, attempt: StreamAttempt) -> None:
        self.number = number
        self.request_id: str = attempt.source.request_id
        self.payload: Any = attempt.payload  # the facade's data of this attempt (opaque)
        self.segments: list[str] = []  # the delivered chunks' source segments, append-only
        self.natural_text: str | None = None  # the whole text, after a natural end
        self.failures: list[tuple[int, Any]] = []  # (validator, verdict) that stopped the run
        self.finals: list[Any] = []  # the final validations, in check order


class ChannelIterator(Generic[T]):
    """The async iterator of one journal channel (single consumer); ``on_end`` runs once, when
    the channel is exhausted (it may raise: the run's error, for the chunk view)."""

    __slots__ = ("_channel", "_on_end")

    def __init__(self, channel: Channel[T], on_end: Callable[[], None] | None = None) -> None:
        self._channel = channel
        self._on_end = on_end

    def __aiter__(self) -> ChannelIterator[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self._channel.get()
        except StopAsyncIteration:
            on_end, self._on_end = self._on_end, None
            if on_end is not None:
                on_end()
            raise


class StreamJournal(Generic[E]):
    """The sink and the published state of one run; see the module docstring.

    Args:
        events: builds the facade's events (stateless).
        first: the first attempt (its request id is the run's; its payload the first record's).
    """

    def __init__(self, events: EventFactory[E], first: StreamAttempt) -> None:
        self._factory = events
        # runtime-written (loop thread), read by anyone:
        self._current = AttemptRecord(1, first)
        self._request_ids: tuple[str, ...] = (self._current.request_id,)
        self._outcome: StreamOutcome | None = None
        self._events: Channel[E] = Channel()
        self._chunks: Channel[str] = Channel()
        self._done = Signal()
        # consumer-written, guarded by _lock:
        self._lock = threading.Lock()
        self._events_taken = False
        self._chunks_taken = False
        self._surfaced = False
        self._full_cache: tuple[AttemptRecord, int, str] | None = None
        self._memo: dict[str, Any] = {}

    # -- the StreamSink (the stream actor, on the actor loop thread) ------------------------------
    def quick_check(self, index: int, passed: bool, verdicts: list[Any]) -> None:
        record = self._current
        self._events.put(self._factory.quick_check(index, record.number, passed, verdicts))

    def chunk(self, index: int, text: str, segment: str) -> None:
        record = self._current
        record.segments.append(segment)
        self._chunks.put(text)
        self._events.put(self._factory.chunk(text, index, record.number))

    def failure(self, validator: int, verdict: Any) -> None:
        self._current.failures.append((validator, verdict))

    def streaming_done(self, text: str) -> None:
        record = self._current
        record.natural_text = text
        self._events.put(self._factory.streaming_done(record.number, text))

    def full_validation(self, passed: bool, results: list[Any]) -> None:
        record = self._current
        record.finals = list(results)
        self._events.put(self._factory.full_validation(record.number, passed, list(results)))

    def retry(self, number: int, reason: str, attempt: StreamAttempt) -> None:
        record = AttemptRecord(number, attempt)
        self._current = record
        self._request_ids = (*self._request_ids, record.request_id)
        self._events.put(self._factory.retry(number, reason))

    def finish(self, outcome: StreamOutcome) -> None:
        self._outcome = outcome
        factory = self._factory
        if outcome.error is not None:
            self._events.put(factory.error(type(outcome.error).__name__, str(outcome.error)))
        success = outcome.kind == "completed" and outcome.success
        self._events.put(factory.completed(success, self.full_text, self._current.number))
        self._events.close()
        self._chunks.close()
        self._done.set()

    # -- reads (any thread) -----------------------------------------------------------------------
    @property
    def request_id(self) -> str:
        """The first attempt's request id."""
        return self._request_ids[0]

    @property
    def request_ids(self) -> list[str]:
        """Every installed attempt's request id, in order."""
        return list(self._request_ids)

    @property
    def current(self) -> AttemptRecord:
        """The current attempt's record (read it once, then read its fields)."""
        return self._current

    @property
    def outcome(self) -> StreamOutcome | None:
        """The outcome, once ``finish`` was called (it is set before :meth:`done` is True)."""
        return self._outcome

    def done(self) -> bool:
        return self._done.is_set()

    async def wait_done(self) -> None:
        """Wait until the run is over (from any loop; cancellable)."""
        await self._done.wait()

    @property
    def full_text(self) -> str:
        """The current attempt's delivered text (its natural text after a natural end)."""
        record = self._current
        natural = record.natural_text
        if natural is not None:
            return natural
        segments = record.segments
        n = len(segments)
        with self._lock:
            cache = self._full_cache
            if cache is not None and cache[0] is record and cache[1] == n:
                return cache[2]
        text = "".join(segments[:n])
        with self._lock:
            self._full_cache = (record, n, text)
        return text

    # -- consumer bookkeeping (any thread; guarded by _lock) --------------------------------------
    def take_events(self) -> ChannelIterator[E] | None:
        """The event view, once (None if it was taken before)."""
        with self._lock:
            if self._events_taken:
                return None
            self._events_taken = True
        return ChannelIterator(self._events)

    def take_chunks(self) -> ChannelIterator[str] | None:
        """The chunk view, once (None if it was taken before); it raises the run's error at its
        end unless that was surfaced before (and then counts as surfaced)."""
        with self._lock:
            if self._chunks_taken:
                return None
            self._chunks_taken = True
        return ChannelIterator(self._chunks, self.raise_error_once)

    def raise_error_once(self) -> None:
        """Raise the run's error if it ended with one not surfaced before; then it is."""
        outcome = self._outcome
        error = None if outcome is None else outcome.error
        with self._lock:
            if error is None or self._surfaced:
                return
            self._surfaced = True
        interrupt = interrupt_behind(error)
        if interrupt is not None:  # a Ctrl-C of user code means something here, in the caller
            raise interrupt
        raise error

    def memo(self, key: str, make: Callable[[], T]) -> T:
        """``make()``'s value, made once per key (the first one stored wins a race)."""
        with self._lock:
            if key in self._memo:
                return self._memo[key]
        value = make()
        with self._lock:
            return self._memo.setdefault(key, value)
