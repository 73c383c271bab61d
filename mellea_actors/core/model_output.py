"""``ModelOutputThunk``: the user's handle on a pending model output.

The output itself lives in a :class:`~mellea_actors.runtime.thunk_actor.ThunkActor` (one per
generation). This class only holds the engine's
:class:`~mellea_actors.runtime.thunk_handle.ThunkHandle` (the read API, the reader's cursor, the
single-reader guard, cancel) and translates Mellea's calls to it; it holds no concurrency code.
Generation runs to completion in the background whether or not anyone reads.

States: pending → streaming → computed | failed | cancelled.

Semantics (SPEC §3), stated precisely:

* ``await avalue()`` waits for the end and returns the full text. Any number of concurrent
  ``avalue()`` calls are fine; they all return the same value. A failed generation raises its
  :class:`~mellea_actors.errors.BackendError` (the ``ollama``/httpx error is its ``__cause__``), on
  every call. A cancelled one returns the text generated before the cancel.
* ``await astream()`` returns the text that arrived since this reader's previous call, waiting
  until there is some or the thunk ends; it never waits for more than that. The concatenation of
  all ``astream()`` results equals ``value``. On an ended thunk it returns what is left unread
  (the whole value on a first call), then ``""``. With ``ModelOption.STREAM`` false the first call
  waits for the end and returns the whole text. If the generation failed, the text received
  before the error is returned first; the next call raises the error.
* Single reader: a second reader while one reads (another ``astream()`` or ``iter_chunks()``,
  from another task, loop or thread, or a ``ReadNew`` ask to the actor) raises
  :class:`~mellea_actors.errors.SingleReaderError` at once, naming the thunk.
* Cancelling the task that awaits ``astream()``/``avalue()`` (``asyncio.wait_for`` timeout …)
  loses nothing and does not stop the generation: the reader's cursor only moves when a call
  returns, so the next call returns what the cancelled one would have.
* ``is_computed()`` is True once the generation has ended with a value (computed, or cancelled:
  then ``value`` is the partial text and ``cancelled`` is True) and its reader is done with it:
  a streamed thunk that ended on its own is computed once its reader read everything or took
  the value (``avalue``/``wait``), so that ``while not mot.is_computed(): print(await
  mot.astream())`` prints the whole text exactly once, also when the generation ended before
  the loop began. A failed thunk is never computed.
* ``await cancel()`` stops the generation: the HTTP stream to Ollama is closed within
  milliseconds. It returns once the thunk has ended.
* ``async for delta in mot`` (Mellea 0.8) yields the deltas as they arrive; their
  concatenation equals ``value`` (a failed generation: its text, then the error is raised).
  Polling and owning differ, precisely: ``astream()`` *polls* — each call is a reader only
  while it waits, and a cancelled call loses nothing and stops nothing. ``async for`` *owns*
  the consumption — the iteration is the thunk's reader from its first step to its end (a
  second ``async for``, ``astream()`` or ``iter_chunks()`` meanwhile raises
  :class:`~mellea_actors.errors.SingleReaderError`), and leaving it before the end — ``break``,
  an exception, or the consuming task being cancelled (what an ASGI server does when its
  client leaves) — cancels the generation at once: the HTTP stream is closed within
  milliseconds, without waiting for the garbage collector. The cancel is requested, not
  awaited (``status`` may read "streaming" for a moment; ``await cancel()`` waits for the
  end). An iterator kept in a variable (``it = aiter(mot)``) is left when it is dropped or
  ``await it.aclose()``. A later ``async for`` goes on from where the previous reader stopped.
* ``async with mot:`` and ``await mot.aclose()`` cancel an unfinished generation and wait for
  its end (no-op once it ended).
* ``str(mot)`` (``format``, f-strings) *forces* the thunk: it returns ``value``, blocking until
  the generation ended, and raises the generation's error if it failed. This is safe from any
  thread, also one whose event loop is running: the generation runs on the runtime's own loop
  thread, or, when the engine is hosted on that very loop (a session opened inside it), on a
  rescue thread for as long as this thread blocks. On the runtime's loop (inside an ``async``
  validator, a chunker …) it raises ``RuntimeError`` instead of deadlocking, unless the thunk
  already ended.
  It only looks at the value: it does not count as taking it (``is_computed()`` of a streamed
  thunk still waits for its reader). ``repr`` never blocks.

Blocking use (from plain threads, never from inside the runtime's loop): :meth:`wait` and
:meth:`iter_chunks`, both with timeouts; leaving ``iter_chunks`` early cancels the generation.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from typing import Any, Generic, TypeVar

import pykka

from mellea_actors.errors import GenerationCancelledError
from mellea_actors.runtime.loop import current_actor_loop
from mellea_actors.runtime.messages import GenerationStats, ThunkOutcome, ThunkStatus
from mellea_actors.runtime.thunk_handle import ThunkHandle

__all__ = ["GenerationMetadata", "ModelOutputThunk"]

S = TypeVar("S")


class GenerationMetadata:
    """What is known about a finished generation (``thunk.generation``)."""

    __slots__ = ("_meta",)

    def __init__(self, meta: GenerationStats) -> None:
        self._meta = meta

    @property
    def model(self) -> str:
        return self._meta.model

    @property
    def provider(self) -> str:
        return "ollama"

    @property
    def finish_reason(self) -> str | None:
        """Ollama's ``done_reason`` ("stop", "length" …); None when cancelled or failed."""
        return self._meta.done_reason

    @property
    def usage(self) -> dict[str, int | None]:
        """``prompt_tokens``, ``completion_tokens``, ``total_tokens`` (chunks, on cancel)."""
        return self._meta.usage

    @property
    def ttfb_ms(self) -> float | None:
        """Time from the start of the request to the first chunk, in milliseconds."""
        t = self._meta.time_to_first_chunk
        return None if t is None else t * 1000.0

    @property
    def time_to_first_chunk(self) -> float | None:
        return self._meta.time_to_first_chunk

    @property
    def streaming(self) -> bool:
        return self._meta.streaming

    @property
    def attempts(self) -> int:
        return self._meta.attempts

    def __repr__(self) -> str:
        return (
            f"GenerationMetadata(model={self.model!r}, finish_reason={self.finish_reason!r}, "
            f"usage={self.usage!r}, ttfb_ms={self.ttfb_ms!r}, streaming={self.streaming!r})"
        )


class ModelOutputThunk(Generic[S]):
    """A pending (or computed) model output; see the module docstring for the exact semantics.

    ``ModelOutputThunk("text")`` builds an already computed thunk (no actor), as in Mellea.
    """

    def __init__(
        self,
        value: str | None = None,
        meta: dict[str, Any] | None = None,
        parsed_repr: S | None = None,
        tool_calls: dict[str, Any] | None = None,
    ) -> None:
        self._meta: dict[str, Any] = dict(meta or {})
        self._tool_calls = tool_calls
        self._manual_value = value
        self._manual_streamed = False  # a manual thunk's one astream() call was made
        self._parsed_repr: Any = parsed_repr
        self._parsed = parsed_repr is not None
        self._parse_fn: Callable[[str], Any] | None = None
        self._h: ThunkHandle | None = None
        self.action: Any = None
        self.context: Any = None

    # -- wiring (used by the backend) --------------------------------------------------------
    @classmethod
    def _attach(
        cls, handle: ThunkHandle, *, parse: Callable[[str], Any] | None = None
    ) -> ModelOutputThunk[Any]:
        mot: ModelOutputThunk[Any] = cls()
        mot._h = handle
        mot._parse_fn = parse
        return mot

    @property
    def handle(self) -> ThunkHandle | None:
        """The engine's handle on this generation (None for a manual thunk)."""
        return self._h

    @property
    def actor_ref(self) -> pykka.ActorRef[Any] | None:
        """The pykka ref of this thunk's actor (None for a manual thunk).

        It answers ``ReadNew``/``AwaitOutcome`` messages (``mellea_actors.runtime.messages``)
        with ``ask(…, timeout=…)``; it stops once the generation has ended.
        """
        return None if self._h is None else self._h.ref

    @property
    def request_id(self) -> str | None:
        """The id of this generation in the supervision log (None for a manual thunk)."""
        return None if self._h is None else self._h.request_id

    @property
    def status(self) -> str:
        """ "pending", "streaming", "computed", "failed" or "cancelled"."""
        if self._h is None:
            return "computed" if self._manual_value is not None else "pending"
        return self._h.cell.status.value

    # -- state -------------------------------------------------------------------------------
    def _outcome(self) -> ThunkOutcome | None:
        return None if self._h is None else self._h.outcome_now

    def is_computed(self) -> bool:
        """True once the value is final (see the module docstring for the reader rule)."""
        if self._h is None:
            return self._manual_value is not None
        return self._h.is_computed()

    @property
    def value(self) -> str | None:
        """The final text; None until the generation ended (and never for a failed one)."""
        if self._h is None:
            return self._manual_value
        outcome = self._h.outcome_now
        if outcome is None or outcome.status is ThunkStatus.FAILED:
            return None
        return outcome.text

    @value.setter
    def value(self, v: str) -> None:
        if self._h is not None:
            raise AttributeError("the value of a generated thunk is owned by its actor")
        self._manual_value = v

    @property
    def partial_value(self) -> str:
        """The text received so far (readable in every state, also after an error)."""
        if self._h is None:
            return self._manual_value or ""
        return self._h.cell.snapshot_text()

    @property
    def thinking(self) -> str | None:
        outcome = self._outcome()
        return None if outcome is None else (outcome.thinking or None)

    @property
    def cancelled(self) -> bool:
        return self._h is not None and self._h.cancelled

    @property
    def error(self) -> BaseException | None:
        """The generation's error once it failed, else None."""
        outcome = self._outcome()
        return None if outcome is None else outcome.error

    @property
    def generation(self) -> GenerationMetadata | None:
        """Metadata of the finished generation (None while it runs or for a manual thunk)."""
        outcome = self._outcome()
        return None if outcome is None else GenerationMetadata(outcome.meta)

    @property
    def usage(self) -> dict[str, int | None] | None:
        outcome = self._outcome()
        return None if outcome is None else outcome.meta.usage

    @property
    def parsed_repr(self) -> S | None:
        """The parsed output (e.g. the pydantic instance with ``format=``); None until computed."""
        if self._parsed:
            return self._parsed_repr
        value = self.value
        if value is None:
            return None
        if self.cancelled and self._parse_fn is not None:
            raise GenerationCancelledError(
                f"thunk {self.request_id} was cancelled; its partial text cannot be parsed"
            )
        self._parsed_repr = value if self._parse_fn is None else self._parse_fn(value)
        self._parsed = True
        return self._parsed_repr

    @parsed_repr.setter
    def parsed_repr(self, v: S) -> None:
        self._parsed_repr = v
        self._parsed = True

    # -- async reads ------------------------------------------------------------------------
    def _manual(self) -> str:
        if self._manual_value is None:
            raise RuntimeError("this thunk has no value and no generation behind it")
        return self._manual_value

    async def avalue(self) -> str:
        """Wait for the generation to end; return the full text (raise its error if it failed)."""
        if self._h is None:
            return self._manual()
        return await self._h.value()

    async def astream(self) -> str:
        """The text that arrived since this reader's previous call (see the module docstring)."""
        if self._h is None:
            if self._manual_streamed:
                return ""
            self._manual_streamed = True
            return self._manual()
        return await self._h.astream()

    # -- cancel ---------------------------------------------------------------------------------
    async def cancel(self, reason: str = "cancelled by the user", timeout: float = 10.0) -> None:
        """Stop the generation (closing its HTTP stream) and wait until the thunk has ended.

        No-op on a thunk that already ended. Raises AskTimeoutError if the thunk has not ended
        within ``timeout`` seconds.
        """
        if self._h is not None:
            await self._h.cancel(reason, timeout)

    async def cancel_generation(self, error: Exception | None = None) -> None:
        """Mellea's name for :meth:`cancel`."""
        await self.cancel(reason=f"cancelled: {error}" if error else "cancelled by the user")

    # -- async iteration (Mellea 0.8) ---------------------------------------------------------
    def __aiter__(self) -> AsyncIterator[str]:
        """``async for delta in mot``: the deltas as they arrive, owning the consumption.

        Leaving the loop before the end (``break``, an exception, a cancel of the consuming
        task) cancels the generation; a second iteration meanwhile raises SingleReaderError
        (see the module docstring for how this differs from ``astream()``).
        """
        if self._h is None:
            return self._manual_deltas()
        return _Deltas(
            self._h.aiter_deltas(
                cancel_reason="the async for consumer left before the end (break, an "
                "exception or a cancel)"
            )
        )

    async def _manual_deltas(self) -> AsyncGenerator[str, None]:
        text = await self.astream()
        if text:
            yield text

    async def aclose(self) -> None:
        """Cancel an unfinished generation and wait for its end (no-op once it ended)."""
        await self.cancel("closed by aclose() before the end")

    async def __aenter__(self) -> ModelOutputThunk[S]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Leaving ``async with mot:`` cancels an unfinished generation (as ``aclose()``)."""
        await self.cancel("left async with before the end")

    # -- blocking use (plain threads) --------------------------------------------------------
    def wait(self, timeout: float | None = None) -> str:
        """Block until the generation ends; return the value (raise its error if it failed).

        Raises AskTimeoutError after ``timeout`` seconds (the generation goes on).
        """
        if self._h is None:
            return self._manual_value or ""
        return self._h.wait_value(timeout)

    def iter_chunks(
        self, timeout: float | None = None, *, cancel_reason: str = "the blocking reader left early"
    ) -> Iterator[str]:
        """Block-iterate over the text as it arrives (this thunk's single reader).

        ``timeout`` bounds each wait for new text: AskTimeoutError, and — unlike ``wait`` — the
        generation is cancelled, since the reader left. Leaving the loop early (``break``, an
        exception) requests the cancel with ``cancel_reason`` and returns at once: ``status``
        may still read "streaming" for a moment; ``cancel_sync()`` waits for the end.
        """
        if self._h is None:
            yield self._manual_value or ""
            return
        yield from self._h.iter_deltas(timeout, cancel_reason=cancel_reason)

    def cancel_sync(self, reason: str = "cancelled by the user", timeout: float = 10.0) -> None:
        """Blocking :meth:`cancel`, for plain threads."""
        if self._h is not None:
            self._h.cancel_sync(reason, timeout)

    # -- representations ---------------------------------------------------------------------
    def __str__(self) -> str:
        """Force the thunk: its value, blocking until the generation ended (its error raised if
        it failed); RuntimeError on the runtime's loop thread while it runs (see the module
        docstring). A thunk with no value and no generation gives ""."""
        if self._h is None:
            return self._manual_value or ""
        outcome = self._h.outcome_now
        if outcome is None:
            if current_actor_loop() is not None:
                raise RuntimeError(
                    f"str() of thunk {self.request_id} before its generation ended was called on "
                    "the mellea_actors loop thread (in an async validator, a chunker, an "
                    "actor?): waiting there would deadlock; use `await thunk.avalue()`"
                )
            outcome = self._h.wait_outcome(None)  # looks at the value, does not take it
        if outcome.status is ThunkStatus.FAILED:
            assert outcome.error is not None
            raise outcome.error.with_traceback(None)
        return outcome.text

    def __format__(self, format_spec: str) -> str:
        """``format(mot, spec)`` / f-strings: ``str(mot)`` (forcing it), formatted."""
        return format(str(self), format_spec)

    def __repr__(self) -> str:
        return f"ModelOutputThunk(status={self.status!r}, value={self.value!r})"

    def __copy__(self) -> ModelOutputThunk[S]:
        raise TypeError("a ModelOutputThunk owns a live generation and cannot be copied")

    def __deepcopy__(self, memo: dict[int, Any]) -> ModelOutputThunk[S]:
        # A deep copy of an object holding a thunk (e.g. a requirement) shares it (read-only).
        return self


class _Deltas:
    """The iterator of ``async for delta in mot``: the engine's ``ThunkHandle.aiter_deltas``
    generator, closed as soon as this iterator is dropped.

    An exception or a cancel inside ``__anext__`` ends the generator there (its ``finally``
    requests the cancel). A ``break`` does not reach the iterator at all: the ``async for`` only
    drops it, and an async generator left that way would run its ``finally`` when the garbage
    collector or the event loop's finaliser gets to it — later, or (with a reference kept)
    never. So ``__del__`` (run by reference counting the moment the loop lets go) closes the
    generator synchronously: its ``finally`` has no ``await``, so one step of ``aclose()`` runs
    it whole, on the dropping thread (releasing the claim and requesting the cancel are
    thread-safe).
    """

    __slots__ = ("_agen",)

    def __init__(self, agen: AsyncGenerator[str, None]) -> None:
        self._agen = agen

    def __aiter__(self) -> _Deltas:
        return self

    async def __anext__(self) -> str:
        return await self._agen.__anext__()

    async def aclose(self) -> None:
        """Leave the iteration (cancelling an unfinished generation); idempotent."""
        await self._agen.aclose()

    def __del__(self) -> None:
        closing = self._agen.aclose()
        try:
            closing.send(None)
        except StopIteration:  # closed (or it had ended)
            return
        except RuntimeError:  # suspended inside an await of a dropped task: its frame's own
            return  # finalisation runs the ``finally``
        closing.close()  # unreachable while the generator's ``finally`` does not await
