"""Streaming with per-chunk validation: Mellea 0.7.0's and 0.8.0's ``mellea.stdlib.streaming``.

Two faces on one engine, side by side in one process:

* :func:`stream_with_chunking` (Mellea 0.7.0) starts a streamed generation and returns a
  :class:`StreamChunkingResult` at once (``events()``, ``astream()``, ``acomplete()``, …);
* :func:`stream` (Mellea 0.8.0) returns a :class:`Streamer` to iterate for the validated chunks
  inside ``async with`` (or, with ``as_events=True``, an :class:`EventStreamer` over the events).

The work runs on the session's actor runtime: a stream actor reads the generation's deltas (what
Ollama sends per streamed object), cuts them into chunks with a :class:`ChunkingStrategy`, and
has one validator actor per requirement judge every chunk. This module is the public face and
states the public contract, here and only here; how the engine implements it (messages,
ownership, ordering) is stated by :mod:`mellea_actors.runtime.stream_actor`,
:mod:`mellea_actors.runtime.validator_actor` and :mod:`mellea_actors.runtime.stream_journal`,
which meet this module through the types of :mod:`mellea_actors.runtime.stream_contract`. The
events live in :mod:`mellea_actors.stdlib.stream_events`, the requirement and chunker adapters
in :mod:`mellea_actors.stdlib.stream_checks`; everything public is re-exported here.

What the two faces share is everything below; where Mellea 0.7.0 and 0.8.0 differ, each face
keeps its own version's behaviour:

==========================  ================================  ================================
API                         ``stream_with_chunking`` (0.7)    ``stream`` (0.8)
==========================  ================================  ================================
default ``chunking``        ``"sentence"``                    ``None``: the text as it comes,
                                                              one chunk per read
``QuickCheckEvent.results`` ``PartialValidationResult`` each  ``PartialValidationSummary`` each
``CompletedEvent.success``  False after a failed final        True after a natural end (the
                            validation (``result.completed``) final validations do not count)
outcome                     ``completed``, ``cancelled``,     ``failed_early``,
                            ``error``                         ``completed_normally``,
                                                              ``failure_reason``, ``mot``
``streaming_failures``      also a validator fault            "fail"s only (a fault is an error)
the run's error             ``acomplete()`` / the end of      the end of either ``async for``
                            ``astream()``
leaving early               ``cancel()`` / ``async with``     ``aclose()`` / ``async with`` /
                            (leaving a view does not)         cancelling the consuming task
retries                     opt-in ``max_retries``            none (``attempt`` is always 1)
==========================  ================================  ================================

Under both, a requirement may be written either way (:mod:`mellea_actors.core.requirement`):
Mellea 0.7.0's ``stream_validate(chunk)`` override or 0.8.0's ``_stream_validate(chunk)``, with
or without its own ``chunking`` (a requirement with one re-chunks the stream's text at its own
granularity, and the fragment its chunker held back is judged at the natural end, before
``StreamingDoneEvent``; under ``stream`` that residual round shows as a ``QuickCheckEvent``
whose ``chunk_index`` has no ``ChunkEvent``, under ``stream_with_chunking`` only if it fails).

Semantics, precisely
--------------------
* **Isolation.** Every validator works on its own ``copy.copy`` of its requirement (a
  *shallow* copy, as Mellea), made before any request is sent (a requirement that cannot be
  copied raises ``InvalidInputError`` and nothing starts). Rebinding an attribute on the copy
  (``self.count += 1``) never reaches the caller's object or another stream's copy; what the
  attributes refer to stays shared, so a lock, a client, a logger or a list the requirement
  shares with its caller keeps working. Caveat: a container mutated in place
  (``self.seen.append(chunk)``) is the caller's and every stream's; keep per-stream state in
  rebound attributes (or define ``__copy__``). ``streaming_failures`` holds the failing
  validator's copy (its state at the failure), as Mellea does.
* **Parallelism.** Validators run concurrently with each other and with the generation; each
  sees its chunks in order, one at a time. The generation never waits for them: a slow
  validator delays *delivery*, not generation.
* **Gated delivery.** A chunk reaches :meth:`StreamChunkingResult.astream` (and a
  :class:`ChunkEvent`) only after every validator answered non-"fail" for it, in chunk order.
* **A "fail"** on chunk ``k`` (0-based) cancels the generation at once (the HTTP stream to
  Ollama is closed; no later chunk is judged) and nothing from chunk ``k`` on is ever delivered,
  even text already generated. Chunks ``0 … k-1`` are delivered as soon as every validator
  cleared them (a slower validator may still be catching up; it is bounded by its deadline), so
  exactly ``k`` chunks are delivered whichever validator answered first. Then the validators are
  stopped (their pending work is cancelled), and the failure is recorded. If several chunks got a
  "fail", the earliest one counts.
* **Natural end.** The chunker's trailing fragment (``flush``) is validated and gated like any
  chunk; then ``validate()`` is called once on every requirement's copy (also those that said
  "pass"), concurrently; results in ``final_validations`` (requirement order).
* **Faults** (policy ``validator_failure``). A validator that raises, answers with something
  that is not a ``PartialValidationResult`` (``InvalidVerdictError``, a ``ValueError``), or misses
  its deadline (``validator_timeout`` seconds per call; ``ValidatorTimeoutError``) is logged as
  ``validator_failed`` in the supervision log, and then

  - ``"fail"`` (default, fail-closed): the fault counts as a "fail" of that requirement (an entry
    in ``streaming_failures``) *and* is an error of the run: generation cancelled,
    :class:`ErrorEvent`, ``CompletedEvent(success=False)``, ``acomplete()`` raises the
    ``ValidatorError``;
  - ``"unknown"``: the verdict is replaced by ``PartialValidationResult("unknown")`` (reason
    names the fault) and the stream goes on; a final ``validate()`` that faults gives a failed
    ``ValidationResult`` (a final result has no "unknown").

  A backend error mid-stream, a chunker that returns a chunk that is not the next verbatim piece
  of the text, or the session closing under the stream are errors too (``ErrorEvent``); chunks
  found before the error are still validated and delivered, and ``full_text`` keeps them.
* **Events**, in order: per delivered chunk ``QuickCheckEvent`` (only with requirements) then
  ``ChunkEvent``; natural end: ``StreamingDoneEvent``, ``FullValidationEvent`` (only with
  requirements), ``CompletedEvent(success=…)``; a fail: ``QuickCheckEvent(passed=False)``,
  ``CompletedEvent(success=False)``; an error: ``ErrorEvent``, ``CompletedEvent(success=False)``;
  a cancel by the consumer: ``CompletedEvent(success=False)``; a retry (opt-in, below): the
  abandoned attempt's events, ``RetryEvent``, then the new attempt's events from chunk 0.
  ``CompletedEvent`` is always last.
* **The end.** However the run ends — natural end, "fail", error, cancel, the session closing
  (an error: ``RuntimeClosedError``) — once it is over (``done()``, ``CompletedEvent``,
  ``acomplete()`` returned or raised) its generation has ended (the HTTP stream is closed), every
  validator has stopped (no validation code runs any more; a check that ignores its
  cancellation is logged ``validator_stuck`` and abandoned after 5 s) and no actor or task of the
  run is left (:func:`live_stream_actors`).
* **Consumer cancel.** :meth:`StreamChunkingResult.cancel` and leaving ``async with result:``
  before the end end the run as above and return once it is over (bounded); it is no error
  (``acomplete()`` does not raise; ``cancelled`` is True) and a no-op once the run is over.
  Leaving ``astream()``/``events()`` early does *not* cancel (they are independent views).
* **Retry from scratch** (opt-in: ``max_retries=n``; default 0, a single attempt as in Mellea).
  Before any text arrives, the generation supervisor already restarts transient transport
  failures, transparently. After text was delivered, a failure is never retried silently; with
  ``max_retries=n > 0``, an attempt ``k`` whose generation fails with a *transient* backend error
  (``isinstance(e, BackendError) and e.transient``: refused or dropped connection, HTTP 5xx),
  whether or not text was delivered, while fewer than ``n`` retries were used, is retried exactly
  where it would otherwise have ended with that error — after the chunks found before the error
  were judged and delivered as above:

  - the attempt is wound down: its generation is over, its validators are stopped (pending work
    cancelled);
  - ``RetryEvent(attempt=k+1, reason=<the error's type and message, one line>)`` is emitted: the
    signal that every chunk delivered so far belongs to an abandoned attempt;
  - attempt ``k+1`` starts from scratch: a new generation of the same action, context and model
    options; new validators on fresh (shallow) copies of the requirements *as they were when
    ``stream_with_chunking`` was called* (copies taken then, before any request; containers
    the requirements mutate in place are shared, see Isolation); a fresh chunker
    (a new instance for an alias, a ``copy.deepcopy`` — also taken at the call — of a
    :class:`ChunkingStrategy` instance); ``chunk_index`` from 0; every later event carries
    ``attempt=k+1``; ``stream_retry`` is logged (the stream actor, ``thunk`` = the new request
    id, the reason, the attempt). The new attempt starts at once (no backoff of its own; its
    generation gets the supervisor's pre-chunk restarts and the host's circuit breaker like any
    other). If it cannot be started (e.g. the session was closed), that error ends the run.

  Never retried: a non-transient error (an ``{"error": …}`` line, HTTP 4xx, a stream timeout, an
  open circuit breaker, a validator fault, a chunker error, the session closing) and a "fail"
  verdict (a verdict, not an error). When the retries are exhausted, the last error ends the run
  (``ErrorEvent``, ``CompletedEvent(success=False)``). ``full_text``, ``as_thunk``,
  ``streaming_failures`` and ``final_validations`` describe the current (in the end: the final)
  attempt only; ``CompletedEvent.attempts_used`` counts the attempts made; ``request_id`` stays
  the first attempt's id and ``request_ids`` lists every attempt's. ``astream()`` is unchanged but
  cannot tell attempts apart: with retries enabled, its consumer may get the text of an abandoned
  attempt, then the new attempt's chunks; ``events()`` is the view that tells (``RetryEvent``).

Threads and loops: the result may be consumed from any event loop on any thread (typically the
caller's ``asyncio.run`` loop, which may also host the runtime's loop). The result holds
no state of its own: it reads the run's journal, which only the runtime writes (on its loop)
except for the consumer's bookkeeping (which view was taken, whether the error was surfaced),
kept under the journal's lock. Every wait is cancellable; ``acomplete``/``cancel``
accept timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, cast, overload

import pykka

from mellea_actors._arguments import check_count, check_timeout
from mellea_actors.backends.model_options import ModelOption
from mellea_actors.core.cblock import CBlock
from mellea_actors.core.chunking import resolve_chunking_strategy
from mellea_actors.core.context_chain import Context
from mellea_actors.core.model_output import ModelOutputThunk
from mellea_actors.core.requirement import (
    PartialValidationResult,
    Requirement,
    ValidationResult,
    reqify,
)
from mellea_actors.errors import (
    AskTimeoutError,
    InvalidInputError,
    InvalidVerdictError,
    RuntimeClosedError,
    SingleReaderError,
    ValidatorError,
    ValidatorTimeoutError,
)
from mellea_actors.runtime.loop import ask_async
from mellea_actors.runtime.messages import CancelStream
from mellea_actors.runtime.stream_actor import StreamActor, live_stream_actors
from mellea_actors.runtime.stream_contract import FAULT_POLICIES, EventFactory, StreamAttempt
from mellea_actors.runtime.stream_journal import ChannelIterator, StreamJournal
from mellea_actors.runtime.system import ActorSystem
from mellea_actors.stdlib.chunking import (
    ChunkingStrategy,
    ParagraphChunker,
    SentenceChunker,
    WordChunker,
    resolve_chunking,
)
from mellea_actors.stdlib.stream_checks import (
    AttemptData,
    FaultVerdict,
    Piece,
    chunker_factory,
    copy_requirement,
    make_attempt,
    verdict_failure,
)
from mellea_actors.stdlib.stream_events import (
    EVENTS,
    ChunkEvent,
    CompletedEvent,
    ErrorEvent,
    FullValidationEvent,
    NoEvents,
    QuickCheckEvent,
    RetryEvent,
    RunEvents,
    StreamEvent,
    StreamingDoneEvent,
)

if TYPE_CHECKING:
    from mellea_actors.core.backend import Backend

__all__ = [
    "DEFAULT_VALIDATOR_TIMEOUT",
    "ChunkEvent",
    "ChunkingStrategy",
    "CompletedEvent",
    "ErrorEvent",
    "EventStreamer",
    "FullValidationEvent",
    "InvalidVerdictError",
    "ParagraphChunker",
    "QuickCheckEvent",
    "RetryEvent",
    "SentenceChunker",
    "StreamChunkingResult",
    "StreamEvent",
    "Streamer",
    "StreamingDoneEvent",
    "ValidatorError",
    "ValidatorTimeoutError",
    "WordChunker",
    "live_stream_actors",
    "stream",
    "stream_with_chunking",
]

#: Default deadline of one ``stream_validate``/``validate`` call, in seconds.
DEFAULT_VALIDATOR_TIMEOUT = 30.0

T = TypeVar("T")
_Journal = StreamJournal[StreamEvent | None]


class _Visible(Generic[T]):
    """A consumer's view of a journal channel when the run hands out pieces or hidden events
    (see :mod:`mellea_actors.stdlib.stream_checks`): pieces become plain strings, the residual
    round's piece and the events its factory suppressed (None) are skipped."""

    __slots__ = ("_inner",)

    def __init__(self, inner: ChannelIterator[Any]) -> None:
        self._inner = inner

    def __aiter__(self) -> _Visible[T]:
        return self

    async def __anext__(self) -> T:
        while True:
            item = await self._inner.__anext__()
            if item is None:
                continue
            if isinstance(item, Piece):
                if item.residual:
                    continue
                item = str(item)
            return cast(T, item)


class _Run:
    """One started run, as every handle reads it: its journal, its stream actor, and whether
    its channels need a :class:`_Visible` view. The engine-side truth of the outcome, read the
    way Mellea 0.8.0 names it (the handles decide when to show it)."""

    __slots__ = ("actor", "filtered", "journal")

    def __init__(self, journal: _Journal, actor: pykka.ActorRef[Any], filtered: bool) -> None:
        self.journal = journal
        self.actor = actor
        self.filtered = filtered

    # -- views -------------------------------------------------------------------------------
    def events(self) -> AsyncIterator[StreamEvent] | None:
        events = self.journal.take_events()
        if events is None or not self.filtered:
            return cast("AsyncIterator[StreamEvent] | None", events)
        return _Visible[StreamEvent](events)

    def chunks(self) -> AsyncIterator[str] | None:
        chunks = self.journal.take_chunks()
        if chunks is None or not self.filtered:
            return cast("AsyncIterator[str] | None", chunks)
        return _Visible[str](chunks)

    # -- cancel ------------------------------------------------------------------------------
    async def cancel(self, reason: str, timeout: float) -> None:
        """Stop the run and wait (bounded) until it is over; no-op once it is."""
        journal = self.journal
        if journal.done():
            return
        # ActorDeadError: it ended meanwhile (or aborted): its outcome is published
        with contextlib.suppress(pykka.ActorDeadError, RuntimeClosedError):
            await ask_async(self.actor, CancelStream(reason), timeout=timeout)
        await self.wait_done(timeout, "end", " of its cancel")

    async def wait_done(self, timeout: float | None, verb: str, after: str = "") -> None:
        """Wait until the run is over; AskTimeoutError after ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                await self.journal.wait_done()
        except TimeoutError as exc:
            raise AskTimeoutError(
                f"stream {self.journal.request_id} did not {verb} within {timeout} s{after}"
            ) from exc

    # -- Mellea 0.8.0's outcome attributes ---------------------------------------------------
    @property
    def data(self) -> AttemptData:
        return cast(AttemptData, self.journal.current.payload)

    def natural(self) -> bool:
        """The stream reached its natural end (before the final validations)."""
        return self.journal.current.natural_text is not None

    def failures(self) -> list[tuple[Requirement, PartialValidationResult]]:
        """The "fail"s that stopped the stream, as ``(requirement copy, failing result)``; none
        if it ended otherwise (a validator fault is an error in Mellea 0.8.0, not a failure)."""
        outcome = self.journal.outcome
        if outcome is not None and outcome.kind != "failed":
            return []
        record = self.journal.current
        found = [(v, verdict_failure(verdict)) for v, verdict in record.failures]
        if any(f is None or isinstance(f, FaultVerdict) for _, f in found):
            return []
        copies = cast(AttemptData, record.payload).requirements
        return [(copies[v], f) for v, f in found if f is not None]

    def failure_reason(self) -> str | None:
        """Mellea 0.8.0's ``failure_reason``: the last failing requirement's reason."""
        failures = self.failures()
        if not failures:
            return None
        plan = self.data.plan
        at = len(self.journal.current.segments)  # delivery stopped right before the failing one
        where = " on flush" if plan.flush_from is not None and at >= plan.flush_from else ""
        return f"Streaming validation failed{where}: {failures[-1][1].reason or ''}"

    def mot(self) -> ModelOutputThunk[Any] | None:
        return self.data.mot if self.natural() else None

    def finals(self) -> list[ValidationResult]:
        return list(self.journal.current.finals)

    def text_through(self, n: int) -> str:
        """The generated text up to the end of the ``n``-th delivered chunk."""
        return "".join(self.journal.current.segments[:n])


def _cancel_soon(actor: pykka.ActorRef[Any], reason: str) -> None:
    """Ask the stream actor to end the run, without waiting (any thread; a no-op once over)."""
    with contextlib.suppress(Exception):
        actor.tell(CancelStream(reason))


class StreamChunkingResult:
    """The handle on one :func:`stream_with_chunking` run (see the module docstring).

    Created by :func:`stream_with_chunking` only. A thin reader of the run's
    :class:`~mellea_actors.runtime.stream_journal.StreamJournal`: its fields are set here and
    never written again. Every accessor is safe from any thread, and the async methods may be
    awaited from any event loop.
    """

    def __init__(self, run: _Run) -> None:
        self._run = run
        self._journal = run.journal
        self._actor = run.actor  # the stream actor (asked CancelStream by cancel())

    # -- consuming ---------------------------------------------------------------------------
    def events(self) -> AsyncIterator[StreamEvent]:
        """Async iterator over the typed events, ending after :class:`CompletedEvent`.

        Single consumer: a second call raises :class:`SingleReaderError` at once. Independent of
        :meth:`astream` (both may be consumed concurrently, or only one of them). Leaving the
        iteration early does not cancel the stream.
        """
        events = self._run.events()
        if events is None:
            raise SingleReaderError(
                f"events() of stream {self.request_id} was already called; it has a single "
                "consumer (use astream() for a second view of the chunks)"
            )
        return events

    def astream(self) -> AsyncIterator[str]:
        """Async iterator over the validated chunk texts, in order.

        Ends when the run ends; if the run failed with an error (backend, chunker, validator
        fault), the error is raised after the last delivered chunk — and then counts as surfaced,
        so :meth:`acomplete` does not raise it again. A "fail" verdict or a cancel is no error:
        the iteration just ends. Single consumer: a second call raises
        :class:`SingleReaderError` at once.

        With ``max_retries > 0`` the chunks of every attempt come through here, in order, with
        nothing in between: the text of an abandoned attempt may be followed by the chunks of
        the next one. Use :meth:`events` (its :class:`RetryEvent`) to tell them apart.
        """
        chunks = self._run.chunks()
        if chunks is None:
            raise SingleReaderError(
                f"astream() of stream {self.request_id} was already called; it has a single "
                "consumer (use events() for a second view of the chunks)"
            )
        return chunks

    async def acomplete(self, timeout: float | None = None) -> None:
        """Wait until the run is over (final validations included).

        Raises the run's error (``ValidatorError``, a ``BackendError``, ``InvalidInputError`` for
        a misbehaving chunker, ``RuntimeClosedError``) once: later calls (and ``astream()``
        after it) return normally. Raises ``AskTimeoutError`` after ``timeout`` seconds (the run
        goes on). Cancelling the awaiting task does not cancel the run.
        """
        await self._run.wait_done(timeout, "complete")
        self._journal.raise_error_once()

    # -- cancel --------------------------------------------------------------------------------
    async def cancel(
        self, reason: str = "cancelled by the consumer", timeout: float = 10.0
    ) -> None:
        """Stop the run: cancel the generation (closing the Ollama stream) and the validators.

        Returns once the run is over (its ``CompletedEvent(success=False)`` published, the
        generation ended, every validator stopped); no-op if it already is. Not an error:
        ``acomplete()`` does not raise because of a cancel. Raises ``AskTimeoutError`` if the
        run has not ended within ``timeout`` seconds.
        """
        await self._run.cancel(reason, timeout)

    async def __aenter__(self) -> StreamChunkingResult:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Leaving the block before the run is over cancels it (and waits, bounded)."""
        if not self._journal.done():
            await self.cancel("the consumer left the `async with` block")

    # -- state ---------------------------------------------------------------------------------
    @property
    def request_id(self) -> str | None:
        """The (first) generation's id in the supervision log; the stream actor is
        ``stream-<request_id>``. See :attr:`request_ids` for every attempt's."""
        return self._journal.request_id

    @property
    def request_ids(self) -> list[str | None]:
        """The generation id of every attempt started so far, in order (one without retries)."""
        ids: list[str | None] = list(self._journal.request_ids)
        return ids

    @property
    def attempt(self) -> int:
        """The current attempt's number (the final one's once the run is over)."""
        return self._journal.current.number

    def done(self) -> bool:
        """True once the run is over (``CompletedEvent`` published)."""
        return self._journal.done()

    @property
    def completed(self) -> bool:
        """True only once the run is over and it ended naturally with no "fail", no error, no
        cancel, and every final validation passed. Never True before the end."""
        outcome = self._journal.outcome
        return (
            self._journal.done()
            and outcome is not None
            and outcome.kind == "completed"
            and outcome.success
        )

    @property
    def cancelled(self) -> bool:
        """True if the run was stopped by :meth:`cancel` / leaving ``async with``."""
        outcome = self._journal.outcome
        return outcome is not None and outcome.kind == "cancelled"

    @property
    def error(self) -> BaseException | None:
        """The run's error once it ended with one (whether surfaced or not), else None."""
        outcome = self._journal.outcome
        return None if outcome is None else outcome.error

    @property
    def full_text(self) -> str:
        """The delivered text, with its original spacing.

        After a natural end (every chunk delivered): the whole generated text, including any
        whitespace after the last chunk. Otherwise (fail, error, cancel, or still running): the
        generated text from its start up to the end of the last delivered chunk — never a join
        of the chunks, so the separators the chunker dropped are kept. With retries, this is the
        current attempt's text only (empty right after a :class:`RetryEvent`).
        """
        return self._journal.full_text

    @property
    def streaming_failures(self) -> list[tuple[Requirement, PartialValidationResult]]:
        """``(requirement, verdict)`` for the "fail" that stopped the stream (the validator's
        copy of the requirement), or for a validator fault under the fail-closed policy. With
        retries: of the final attempt only."""
        record = self._journal.current  # one attempt's failures and requirement copies
        copies = cast(AttemptData, record.payload).requirements
        return [(copies[v], verdict) for v, verdict in record.failures]

    @property
    def final_validations(self) -> list[ValidationResult]:
        """The final ``validate()`` results, in requirement order (empty unless the stream
        ended naturally and every final validation returned). With retries: of the final
        attempt's copies."""
        return list(self._journal.current.finals)

    @property
    def as_thunk(self) -> ModelOutputThunk[str]:
        """A computed :class:`ModelOutputThunk` whose value is :attr:`full_text` (the final
        attempt's), with the action and the final attempt's context.

        Raises RuntimeError before the run is over (await :meth:`acomplete` first).
        """
        if not self._journal.done():
            raise RuntimeError(
                f"as_thunk of stream {self.request_id} accessed before the run ended; "
                "await result.acomplete() first"
            )
        return self._journal.memo("as_thunk", self._make_thunk)

    def _make_thunk(self) -> ModelOutputThunk[str]:
        data = cast(AttemptData, self._journal.current.payload)
        thunk: ModelOutputThunk[str] = ModelOutputThunk(value=self.full_text)
        thunk.action = data.mot.action
        thunk.context = data.ctx
        return thunk

    def __repr__(self) -> str:
        outcome = self._journal.outcome
        state = "running" if outcome is None else outcome.kind
        return f"StreamChunkingResult(request_id={self.request_id!r}, state={state!r})"


async def _start(
    api: str,
    action: Any,
    backend: Backend,
    ctx: Context,
    *,
    requirements: Sequence[Requirement | str] | None,
    chunking: str | ChunkingStrategy | None,
    validation_backend: Backend | None,
    validator_timeout: float | None,
    validator_failure: str,
    model_options: dict[str, Any] | None,
    max_retries: int = 0,
    with_events: bool = True,
) -> _Run:
    """Check the arguments, start the generation and the stream actor: the common start of
    :func:`stream_with_chunking` (``api`` names it in errors) and :func:`stream`.

    Under ``stream`` (Mellea 0.8.0) ``chunking=None`` means raw deltas and the checks answer
    summaries; the engine is the same. Without ``with_events`` no event is built (nobody can
    read them).
    """
    mellea08 = api == "stream"
    strategy = (  # 0.7: None is no alias (an InvalidInputError, as before)
        resolve_chunking_strategy(chunking)
        if mellea08
        else resolve_chunking(cast("str | ChunkingStrategy", chunking))
    )
    if validator_failure not in FAULT_POLICIES:
        raise InvalidInputError(
            f"validator_failure must be one of {FAULT_POLICIES}, got {validator_failure!r}"
        )
    check_timeout(validator_timeout, "validator_timeout")
    check_count(max_retries, "max_retries", minimum=0)
    if not isinstance(ctx, Context):
        raise InvalidInputError(
            f"ctx must be a Context (e.g. session.ctx or SimpleContext()), got "
            f"{type(ctx).__name__}: {ctx!r}"
        )
    system = getattr(backend, "system", None)
    if not isinstance(system, ActorSystem):
        raise InvalidInputError(
            f"{api} needs a mellea_actors backend (one that runs on an actor system), got "
            f"{type(backend).__name__}"
        )
    if isinstance(requirements, str | Requirement):
        raise InvalidInputError("requirements must be a list of requirements, not a single one")
    wanted = [reqify(r) for r in (requirements or ())]
    copies = [copy_requirement(r) for r in wanted]
    # With retries: the requirements and chunker as they are now, copied for later attempts.
    templates = [copy_requirement(r) for r in wanted] if max_retries else []
    new_chunker = chunker_factory(strategy) if max_retries and strategy is not None else None
    if isinstance(action, str):
        action = CBlock(action)
    options = dict(model_options or {})
    options[ModelOption.STREAM] = True
    judge = validation_backend if validation_backend is not None else backend

    async def new_attempt(number: int) -> StreamAttempt:
        """A fresh attempt (runs on the actor loop; the new generation is submitted last)."""
        assert new_chunker is not None
        fresh = [copy_requirement(t) for t in templates]
        chunker = new_chunker()
        new_mot, new_ctx = await backend.generate_from_context(
            action, ctx, model_options=dict(options)
        )
        return make_attempt(new_mot, new_ctx, fresh, chunker, judge)

    mot, gen_ctx = await backend.generate_from_context(action, ctx, model_options=options)
    try:
        first = make_attempt(mot, gen_ctx, copies, strategy, judge, summaries=mellea08)
        pieces = cast(AttemptData, first.payload).plan.pieces
        events: EventFactory[StreamEvent | None] = EVENTS
        if not with_events:
            events = NoEvents()
        elif mellea08 or pieces:
            events = RunEvents(mellea08=mellea08)
        journal: _Journal = StreamJournal(events, first)
        if isinstance(events, RunEvents):
            events.bind(journal)
        actor = StreamActor.start(
            system.loop,
            system=system,
            attempt=first,
            sink=journal,
            validator_timeout=validator_timeout,
            on_fault=cast(Any, validator_failure),
            max_retries=max_retries,
            new_attempt=new_attempt if max_retries else None,
        )
    except BaseException:
        await mot.cancel(f"{api} could not start its stream actor")
        raise
    return _Run(journal, actor, filtered=events is not EVENTS)


async def stream_with_chunking(
    action: Any,
    backend: Backend,
    ctx: Context,
    *,
    requirements: Sequence[Requirement | str] | None = None,
    chunking: str | ChunkingStrategy = "sentence",
    validation_backend: Backend | None = None,
    validator_timeout: float | None = DEFAULT_VALIDATOR_TIMEOUT,
    validator_failure: Literal["fail", "unknown"] = "fail",
    model_options: dict[str, Any] | None = None,
    max_retries: int = 0,
) -> StreamChunkingResult:
    """Start a streamed generation with per-chunk validation; return its result at once.

    Args:
        action: what to generate from (an ``Instruction``, ``Message``, ``CBlock``; a str is
            wrapped in a ``CBlock``).
        backend: the generating backend (a mellea_actors backend: it runs on an actor system).
        ctx: the context; the generation sees it as ``generate_from_context`` does.
        requirements: requirements (or strings, made ``Requirement``) judged per chunk with
            ``stream_validate`` and at the end with ``validate``; None: no validation.
        chunking: ``"sentence"`` (default), ``"word"``, ``"paragraph"`` or a
            :class:`ChunkingStrategy` instance.
        validation_backend: the backend handed to ``stream_validate``/``validate`` (default:
            ``backend``).
        validator_timeout: deadline of each ``stream_validate``/``validate`` call in seconds
            (None: no deadline).
        validator_failure: fault policy, ``"fail"`` (fail-closed, default) or ``"unknown"``
            (see the module docstring).
        model_options: extra model options for the generation (``ModelOption.STREAM`` is always
            True).
        max_retries: opt-in "retry from scratch": how many times a generation that fails with
            a transient backend error (refused or dropped connection, HTTP 5xx), even after
            text was delivered, is started again from scratch, announced by a
            :class:`RetryEvent` (see the module docstring). Default 0: never (a single attempt;
            the error ends the run).

    Raises (before any request is sent):
        InvalidInputError: (a ``ValueError``) unknown chunking alias (named in the message), bad
            policy, timeout or ``max_retries`` (an int >= 0), a requirement that is not a
            Requirement/str or cannot be copied (with retries: a chunking strategy
            instance that cannot be deep-copied), a backend without an actor system, bad model
            options.
    """
    run = await _start(
        "stream_with_chunking",
        action,
        backend,
        ctx,
        requirements=requirements,
        chunking=chunking,
        validation_backend=validation_backend,
        validator_timeout=validator_timeout,
        validator_failure=validator_failure,
        model_options=model_options,
        max_retries=max_retries,
    )
    return StreamChunkingResult(run)


# -- Mellea 0.8.0's face: stream() ----------------------------------------------------------------
class Streamer:
    """The handle ``await stream(...)`` returns (Mellea 0.8.0): iterate it for the validated
    chunks, inside ``async with`` so that leaving the block early cancels the stream.

    ``async for chunk in streamer`` yields each chunk once every requirement cleared it, ends
    after the final validations, and raises the run's error (a ``BackendError``, a
    ``ValidatorError``, …) after the last chunk. Iterating again continues where the last loop
    left off; two loops at once raise :class:`SingleReaderError`. Leaving the ``async with``
    block, :meth:`aclose`, or cancelling the task that waits for the next chunk cancels the
    stream (the Ollama stream is closed) if it is not over; dropping an unclosed ``Streamer``
    does so too, as Mellea's generator finalizer does.

    The outcome attributes follow Mellea 0.8.0, where the stream is driven by its consumer:
    they describe what the consumer has taken. Until the iteration has ended (or if the
    consumer left before): ``full_text`` is the text through the last chunk it received,
    ``failed_early``/``completed_normally`` are False, ``failure_reason``/``mot`` None,
    ``streaming_failures``/``final_validations`` empty. Once it ended, they are the run's:

    * ``failed_early``: a requirement said "fail" (not: an error, a cancel);
    * ``completed_normally``: the stream reached its natural end (whatever the final
      validations say);
    * ``failure_reason``: ``"Streaming validation failed[ on flush]: <reason>"``;
    * ``streaming_failures``: ``(requirement copy, failing PartialValidationResult)`` per
      requirement that failed the chunk;
    * ``full_text``: the whole text after a natural end, else the text through the last
      delivered chunk (its original spacing kept);
    * ``mot``: the generation's (computed) thunk after a natural end, else None;
    * ``final_validations``: the final ``validate()`` results, in requirement order.

    ``streaming_id`` is the generation's request id (what the supervision log calls
    ``thunk``). Unlike Mellea's, the engine does not wait for the consumer: generation and
    validation run ahead in the background.
    """

    def __init__(self, run: _Run) -> None:
        self._run = run
        self._chunks: AsyncIterator[str] | None = None
        self._taken = 0  # chunks handed to the consumer
        self._ended = False  # the iteration ended (the run is over): the run's outcome shows
        self._closed = False  # aclose() / the consumer cancelled: no more chunks
        self._finalizer = weakref.finalize(
            self, _cancel_soon, run.actor, "the Streamer was dropped before its stream ended"
        )
        self._finalizer.atexit = False

    # -- consuming ---------------------------------------------------------------------------
    def __aiter__(self) -> Streamer:
        return self

    async def __anext__(self) -> str:
        if self._ended or self._closed:
            raise StopAsyncIteration
        if self._chunks is None:
            chunks = self._run.chunks()
            assert chunks is not None  # only this handle takes the chunk view
            self._chunks = chunks
        try:
            chunk = await self._chunks.__anext__()
        except StopAsyncIteration:
            self._end()
            raise
        except asyncio.CancelledError:
            self._closed = True
            self._finalizer.detach()
            _cancel_soon(self._run.actor, "the consumer of the Streamer was cancelled")
            raise
        except SingleReaderError as exc:
            if exc is not self._run_error():
                raise  # a second loop while this one waits: nothing changed
            self._end()
            raise
        except BaseException:
            self._end()  # the run's error, raised after its last chunk
            raise
        self._taken += 1
        return chunk

    def _run_error(self) -> BaseException | None:
        outcome = self._run.journal.outcome
        return None if outcome is None else outcome.error

    def _end(self) -> None:
        self._ended = True
        self._finalizer.detach()

    async def aclose(self, timeout: float = 10.0) -> None:
        """Release the stream: cancel the generation and the validators if the run is not over,
        and wait (bounded by ``timeout``) until it is. Idempotent; safe before, during and after
        iteration."""
        self._closed = True
        self._finalizer.detach()
        await self._run.cancel("the consumer closed the Streamer", timeout)

    async def __aenter__(self) -> Streamer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- outcome (see the class docstring) ---------------------------------------------------
    @property
    def failed_early(self) -> bool:
        return self._ended and bool(self._run.failures())

    @property
    def completed_normally(self) -> bool:
        return self._ended and self._run.natural()

    @property
    def failure_reason(self) -> str | None:
        return self._run.failure_reason() if self._ended else None

    @property
    def streaming_failures(self) -> list[tuple[Requirement, PartialValidationResult]]:
        return self._run.failures() if self._ended else []

    @property
    def full_text(self) -> str:
        if self._ended:
            return self._run.journal.full_text
        return self._run.text_through(self._taken)

    @property
    def mot(self) -> ModelOutputThunk[Any] | None:
        return self._run.mot() if self._ended else None

    @property
    def final_validations(self) -> list[ValidationResult]:
        return self._run.finals() if self._ended else []

    @property
    def streaming_id(self) -> str:
        return self._run.journal.request_id

    def __repr__(self) -> str:
        state = "ended" if self._ended else "closed" if self._closed else "open"
        return f"Streamer(streaming_id={self.streaming_id!r}, state={state!r})"


class EventStreamer:
    """The handle ``await stream(..., as_events=True)`` returns (Mellea 0.8.0): iterate it for
    the typed events, inside ``async with``.

    The events come in the order stated in the module docstring, ``CompletedEvent`` last (after
    an ``ErrorEvent`` on an error); then the iteration ends — raising the run's error, if it
    had one. It is its own iterator: after a ``break``, iterating again resumes with the next
    event (after leaving ``async with`` early, those are the cancelled run's last events).
    ``aclose()`` / leaving the block cancels the stream if it is not over. Dropping it does
    not: as in Mellea 0.8.0, the events are produced whether or not anyone iterates, and the
    outcome attributes (those of :class:`Streamer`) are the run's at every moment.
    """

    def __init__(self, run: _Run) -> None:
        self._run = run
        events = run.events()
        assert events is not None  # only this handle takes the event view
        self._events = events
        self._exhausted = False

    def __aiter__(self) -> EventStreamer:
        return self

    async def __anext__(self) -> StreamEvent:
        if self._exhausted:
            raise StopAsyncIteration
        try:
            return await self._events.__anext__()
        except StopAsyncIteration:
            self._exhausted = True
            self._run.journal.raise_error_once()
            raise

    async def aclose(self, timeout: float = 10.0) -> None:
        """Cancel the stream if it is not over, and wait (bounded) until it is; idempotent."""
        await self._run.cancel("the consumer closed the EventStreamer", timeout)

    async def __aenter__(self) -> EventStreamer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def failed_early(self) -> bool:
        return bool(self._run.failures())

    @property
    def completed_normally(self) -> bool:
        return self._run.natural()

    @property
    def failure_reason(self) -> str | None:
        return self._run.failure_reason()

    @property
    def streaming_failures(self) -> list[tuple[Requirement, PartialValidationResult]]:
        return self._run.failures()

    @property
    def full_text(self) -> str:
        return self._run.journal.full_text

    @property
    def mot(self) -> ModelOutputThunk[Any] | None:
        return self._run.mot()

    @property
    def final_validations(self) -> list[ValidationResult]:
        return self._run.finals()

    @property
    def streaming_id(self) -> str:
        return self._run.journal.request_id

    def __repr__(self) -> str:
        outcome = self._run.journal.outcome
        state = "running" if outcome is None else outcome.kind
        return f"EventStreamer(streaming_id={self.streaming_id!r}, state={state!r})"


@overload
async def stream(
    action: Any,
    backend: Backend,
    ctx: Context,
    *,
    chunking: str | ChunkingStrategy | None = ...,
    requirements: Sequence[Requirement | str] | None = ...,
    validation_backend: Backend | None = ...,
    as_events: Literal[False] = ...,
    validator_timeout: float | None = ...,
    validator_failure: Literal["fail", "unknown"] = ...,
    model_options: dict[str, Any] | None = ...,
) -> Streamer: ...


@overload
async def stream(
    action: Any,
    backend: Backend,
    ctx: Context,
    *,
    chunking: str | ChunkingStrategy | None = ...,
    requirements: Sequence[Requirement | str] | None = ...,
    validation_backend: Backend | None = ...,
    as_events: Literal[True],
    validator_timeout: float | None = ...,
    validator_failure: Literal["fail", "unknown"] = ...,
    model_options: dict[str, Any] | None = ...,
) -> EventStreamer: ...


@overload
async def stream(
    action: Any,
    backend: Backend,
    ctx: Context,
    *,
    chunking: str | ChunkingStrategy | None = ...,
    requirements: Sequence[Requirement | str] | None = ...,
    validation_backend: Backend | None = ...,
    as_events: bool,
    validator_timeout: float | None = ...,
    validator_failure: Literal["fail", "unknown"] = ...,
    model_options: dict[str, Any] | None = ...,
) -> Streamer | EventStreamer: ...


async def stream(
    action: Any,
    backend: Backend,
    ctx: Context,
    *,
    chunking: str | ChunkingStrategy | None = None,
    requirements: Sequence[Requirement | str] | None = None,
    validation_backend: Backend | None = None,
    as_events: bool = False,
    validator_timeout: float | None = DEFAULT_VALIDATOR_TIMEOUT,
    validator_failure: Literal["fail", "unknown"] = "fail",
    model_options: dict[str, Any] | None = None,
) -> Streamer | EventStreamer:
    """Start a streamed generation with per-chunk validation (Mellea 0.8.0's ``stream``).

    The generation has started when this returns; consume the handle inside ``async with``::

        async with await stream(action, backend, ctx, requirements=[req]) as s:
            async for chunk in s:
                ...

    The same engine as :func:`stream_with_chunking` (one validator actor per requirement, gated
    delivery, a "fail" cancels the generation), with Mellea 0.8.0's defaults and shapes:
    ``chunking=None`` (default) yields the text as it arrives, one chunk per read of the
    generation; ``QuickCheckEvent.results`` holds ``PartialValidationSummary`` objects; a
    requirement's own ``chunking`` re-chunks the stream for it (and judges its held-back
    fragment at the end: a ``QuickCheckEvent`` without a ``ChunkEvent``); ``CompletedEvent``'s
    ``success`` ignores the final validations. Requirements written either way (Mellea 0.7.0's
    ``stream_validate`` override, 0.8.0's ``_stream_validate``) work.

    Args:
        action: what to generate from (a str is wrapped in a ``CBlock``).
        backend: the generating backend (a mellea_actors backend).
        ctx: the context.
        chunking: ``None`` (raw reads), ``"sentence"``, ``"word"``, ``"paragraph"`` or a
            ``ChunkingStrategy`` instance.
        requirements: requirements (or strings) judged per chunk and at the natural end.
        validation_backend: the backend handed to the requirements (default: ``backend``).
        as_events: return an :class:`EventStreamer` over the events instead of a
            :class:`Streamer` over the chunks.
        validator_timeout, validator_failure, model_options: as in
            :func:`stream_with_chunking` (extensions; Mellea 0.8.0 has no deadline, and an
            exception in a requirement ends its stream with that error, which is the default
            ``"fail"`` policy here).

    Raises (before any request is sent):
        InvalidInputError: (a ``ValueError``) an unknown chunking alias, a requirement that
            cannot be copied, a backend without an actor system, bad options.
    """
    run = await _start(
        "stream",
        action,
        backend,
        ctx,
        requirements=requirements,
        chunking=chunking,
        validation_backend=validation_backend,
        validator_timeout=validator_timeout,
        validator_failure=validator_failure,
        model_options=model_options,
        with_events=as_events,
    )
    return EventStreamer(run) if as_events else Streamer(run)
