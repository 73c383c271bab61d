"""StreamActor on its own: an ActorLoop and fakes of every Protocol it depends on.

The fakes have the shapes of ``runtime.stream_contract``: ``FakeSource`` (a TextSource feeding
scripted deltas), ``WordSegmenter`` (a Segmenter: one chunk per word), ``ScriptedCheck`` (a
ValidationCheck answering scripted verdicts, optionally held at a ``Gate``), ``FakeSystem`` (a
StreamRuntime whose ``cancel`` records its calls) and ``RecordingSink`` (a StreamSink recording
every call). All of them are used on the actor loop thread; the test thread only waits — on a
threading.Event or a pykka ask, each with a timeout — and then reads what was recorded.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pykka
import pytest

from mellea_actors.errors import StreamDroppedError, ValidatorError
from mellea_actors.runtime.log import SupervisionLog
from mellea_actors.runtime.loop import ActorLoop
from mellea_actors.runtime.messages import CancelStream
from mellea_actors.runtime.stream_actor import StreamActor, live_stream_actors
from mellea_actors.runtime.stream_contract import (
    EventFactory,
    Segmenter,
    StreamAttempt,
    StreamOutcome,
    StreamRuntime,
    StreamSink,
    TextSource,
    ValidationCheck,
)
from mellea_actors.runtime.stream_journal import StreamJournal

from .fake_verdicts import Final, Verdict, VerdictVocabulary

WAIT = 5.0


# -- fakes --------------------------------------------------------------------------------------
class Gate:
    """Holds a check until the test opens it. ``wait`` runs on the actor loop; ``open`` may be
    called from any thread (it hops to the loop, so the gate's state is the loop's only)."""

    def __init__(self, actor_loop: ActorLoop) -> None:
        self._actor_loop = actor_loop
        self._future: asyncio.Future[None] | None = None
        self.is_open = False  # loop thread only
        self.reached = threading.Event()

    async def wait(self) -> None:
        self.reached.set()
        if self.is_open:
            return
        self._future = asyncio.get_running_loop().create_future()
        await self._future

    def open(self) -> None:
        self._actor_loop.call_soon(self._open_now)

    def _open_now(self) -> None:
        self.is_open = True
        if self._future is not None and not self._future.done():
            self._future.set_result(None)


Behaviour = Callable[[int, str], Awaitable[Any]]


def answer(result: str, reason: str = "") -> Behaviour:
    async def behaviour(_index: int, _text: str) -> Any:
        return Verdict(result, reason)

    return behaviour


def raise_(error: BaseException) -> Behaviour:
    async def behaviour(_index: int, _text: str) -> Any:
        raise error

    return behaviour


def held(gate: Gate) -> Behaviour:
    async def behaviour(_index: int, _text: str) -> Any:
        await gate.wait()
        return Verdict("pass")

    return behaviour


class ScriptedCheck(VerdictVocabulary):
    """A ValidationCheck: "pass" unless ``script`` says otherwise for an index."""

    def __init__(
        self, label: str, script: dict[int, Behaviour] | None = None, final: bool = True
    ) -> None:
        self.label = label
        self.script = script or {}
        self.final = final
        self.seen: list[Any] = []  # chunk indices judged, then "final"
        self.answered = {i: threading.Event() for i in range(32)}
        self.cancelled = threading.Event()

    async def check_chunk(self, index: int, text: str) -> Any:
        self.seen.append(index)
        try:
            behaviour = self.script.get(index)
            return Verdict("pass") if behaviour is None else await behaviour(index, text)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        finally:
            self.answered[index].set()

    async def check_final(self) -> Any:
        self.seen.append("final")
        return Final(self.final)


class FakeSource:
    """A TextSource: one scripted delta per ``astream``; then the end, ``error``, or — if
    ``endless`` — a wait until it is cancelled (a generation that only a cancel stops)."""

    def __init__(
        self,
        request_id: str,
        deltas: list[str],
        *,
        error: BaseException | None = None,
        endless: bool = False,
        cancel_gate: Gate | None = None,
    ) -> None:
        self.request_id = request_id
        self._cancel_gate = cancel_gate  # holds cancel(): a thunk that takes its time to end
        self.cancel_called = threading.Event()
        self._deltas = deque(deltas)
        self._error = error
        self._endless = endless
        self._stopped: asyncio.Future[None] | None = None
        self.cancelled = False
        self.readers: list[str] = []  # the ``who`` of every read
        self.cancels: list[str] = []  # reasons of cancel() (the stream winding the attempt down)

    def _ended(self) -> bool:
        return not self._deltas and (self.cancelled or not self._endless)

    def is_computed(self) -> bool:
        return self._ended() and (self._error is None or self.cancelled)

    async def astream(self, who: str) -> str:
        self.readers.append(who)
        if self._deltas:
            return self._deltas.popleft()
        if self._endless and not self.cancelled:
            self._stopped = asyncio.get_running_loop().create_future()
            await self._stopped
            return ""
        if self._error is not None and not self.cancelled:
            raise self._error
        return ""

    def stop(self) -> None:
        """The generation is cancelled (by the system, or by cancel())."""
        if self._ended():
            return
        self.cancelled = True
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    async def cancel(self, reason: str, timeout: float) -> None:
        self.cancels.append(reason)
        self.cancel_called.set()
        if self._cancel_gate is not None:
            await self._cancel_gate.wait()
        self.stop()


class WordSegmenter:
    """A Segmenter: every word followed by a space is a chunk; ``finish`` flushes the last."""

    def __init__(self) -> None:
        self._end = 0
        self.fed: list[str] = []

    def feed(self, text: str) -> list[tuple[str, str]]:
        self.fed.append(text)
        return self._cut(text, final=False)

    def finish(self, text: str) -> list[tuple[str, str]]:
        return self._cut(text, final=True)

    def _cut(self, text: str, *, final: bool) -> list[tuple[str, str]]:
        spans: list[tuple[str, str]] = []
        pos = self._end
        while True:
            start = len(text) - len(text[pos:].lstrip(" "))
            stop = text.find(" ", start)
            if stop == -1:
                if not final or start == len(text):
                    break
                stop = len(text)
            spans.append((text[start:stop], text[pos:stop]))
            pos = stop
        self._end = pos
        return spans


class FakeSystem:
    """A StreamRuntime: the real supervision log, a registry, a ``cancel`` that records."""

    def __init__(self) -> None:
        self.id = "system-test"
        self.log = SupervisionLog()
        self.stream_actors: dict[str, str] = {}
        self.sources: dict[str, FakeSource] = {}
        self.cancels: list[tuple[str, str]] = []  # (request id, reason), loop thread only
        self.cancel_called = threading.Event()

    def cancel(self, request_id: str, reason: str) -> None:
        self.cancels.append((request_id, reason))
        self.cancel_called.set()
        source = self.sources.get(request_id)
        if source is not None:
            source.stop()


class RecordingSink:
    """A StreamSink recording every call, on the actor loop thread, in order."""

    def __init__(self, system: FakeSystem, gate: Gate | None = None) -> None:
        self._system = system
        self._gate = gate
        self.calls: list[tuple[Any, ...]] = []
        self.gate_open_at_chunk: list[bool] = []
        self.outcome: StreamOutcome | None = None
        self.live_at_finish: dict[str, str] | None = None
        self.delivered = {i: threading.Event() for i in range(32)}
        self.done = threading.Event()

    def quick_check(self, index: int, passed: bool, verdicts: list[Any]) -> None:
        results = [None if v is None else v.result for v in verdicts]
        self.calls.append(("quick_check", index, passed, results))

    def chunk(self, index: int, text: str, segment: str) -> None:
        if self._gate is not None:
            self.gate_open_at_chunk.append(self._gate.is_open)
        self.calls.append(("chunk", index, text))
        self.delivered[index].set()

    def failure(self, validator: int, verdict: Any) -> None:
        self.calls.append(("failure", validator, verdict.result))

    def streaming_done(self, text: str) -> None:
        self.calls.append(("streaming_done", text))

    def full_validation(self, passed: bool, results: list[Any]) -> None:
        self.calls.append(("full_validation", passed, [r.passed for r in results]))

    def retry(self, number: int, reason: str, attempt: StreamAttempt) -> None:
        self.calls.append(("retry", number, attempt.source.request_id))

    def finish(self, outcome: StreamOutcome) -> None:
        self.outcome = outcome
        self.live_at_finish = live_stream_actors(self._system)
        self.calls.append(("finish", outcome.kind, outcome.success))
        self.done.set()


def _shapes(
    source: FakeSource,
    segmenter: WordSegmenter,
    check: ScriptedCheck,
    sink: RecordingSink,
    system: FakeSystem,
) -> tuple[TextSource, Segmenter, ValidationCheck, StreamSink, StreamRuntime]:
    return source, segmenter, check, sink, system  # the fakes have the Protocols' shapes


# -- harness ------------------------------------------------------------------------------------
@pytest.fixture
def actor_loop() -> Iterator[ActorLoop]:
    loop = ActorLoop(name="mellea-actors-test-stream").start()
    yield loop
    assert loop.stop(timeout=5)


@pytest.fixture
def system() -> FakeSystem:
    return FakeSystem()


def attempt_of(
    system: FakeSystem, source: FakeSource, checks: list[ScriptedCheck], payload: Any = None
) -> StreamAttempt:
    system.sources[source.request_id] = source
    return StreamAttempt(source, WordSegmenter(), checks, payload)


def start(
    actor_loop: ActorLoop,
    system: FakeSystem,
    attempt: StreamAttempt,
    sink: StreamSink,
    **kwargs: Any,
) -> pykka.ActorRef[Any]:
    kwargs.setdefault("validator_timeout", WAIT)
    kwargs.setdefault("stop_timeout", WAIT)
    return StreamActor.start(actor_loop, system=system, attempt=attempt, sink=sink, **kwargs)


def finished(sink: RecordingSink) -> StreamOutcome:
    assert sink.done.wait(WAIT), f"the stream did not end; calls so far: {sink.calls}"
    assert sink.outcome is not None
    return sink.outcome


# -- gated delivery -----------------------------------------------------------------------------
def test_each_chunk_is_delivered_after_every_verdict_quick_check_first_in_order(
    actor_loop: ActorLoop, system: FakeSystem
) -> None:
    gate = Gate(actor_loop)
    fast = ScriptedCheck("fast")
    slow = ScriptedCheck("slow", {0: held(gate)})
    source = FakeSource("t1", ["a ", "b ", "c ", "d "])
    sink = RecordingSink(system, gate)
    start(actor_loop, system, attempt_of(system, source, [fast, slow]), sink)

    assert fast.answered[3].wait(WAIT) and gate.reached.wait(WAIT)
    gate.open()  # only now may chunk 0 (and everything behind it) be delivered
    assert finished(sink).kind == "completed"

    assert sink.calls == [
        ("quick_check", 0, True, ["pass", "pass"]),
        ("chunk", 0, "a"),
        ("quick_check", 1, True, ["pass", "pass"]),
        ("chunk", 1, "b"),
        ("quick_check", 2, True, ["pass", "pass"]),
        ("chunk", 2, "c"),
        ("quick_check", 3, True, ["pass", "pass"]),
        ("chunk", 3, "d"),
        ("streaming_done", "a b c d "),
        ("full_validation", True, [True, True]),
        ("finish", "completed", True),
    ]
    assert sink.gate_open_at_chunk == [True] * 4  # nothing got past the slow validator
    assert source.readers and set(source.readers) == {"stream t1"}  # named as the reader


def test_without_checks_chunks_are_delivered_as_found_and_no_quick_check(
    actor_loop: ActorLoop, system: FakeSystem
) -> None:
    sink = RecordingSink(system)
    start(actor_loop, system, attempt_of(system, FakeSource("t1", ["x ", "y"]), []), sink)
    outcome = finished(sink)
    assert (outcome.kind, outcome.success) == ("completed", True)
    assert sink.calls == [
        ("chunk", 0, "x"),
        ("chunk", 1, "y"),  # flushed by finish()
        ("streaming_done", "x y"),
        ("finish", "completed", True),
    ]


# -- a "fail" -----------------------------------------------------------------------------------
def test_fail_on_chunk_k_delivers_exactly_the_chunks_before_it_and_cancels_the_source(
    actor_loop: ActorLoop, system: FakeSystem
) -> None:
    gate = Gate(actor_loop)
    strict = ScriptedCheck("strict", {2: answer("fail", "no c2")})
    slow = ScriptedCheck("slow", {0: held(gate)})
    source = FakeSource("t1", ["c0 ", "c1 ", "c2 ", "c3 ", "c4 "], endless=True)
    sink = RecordingSink(system)
    start(actor_loop, system, attempt_of(system, source, [strict, slow]), sink)

    # The "fail" stops the generation at once, while chunks 0 and 1 still wait for `slow`.
    assert system.cancel_called.wait(WAIT)
    assert sink.calls == []
    gate.open()
    outcome = finished(sink)

    assert outcome.kind == "failed" and not outcome.success and outcome.error is None
    assert "strict" in outcome.reason and "chunk 2" in outcome.reason
    assert sink.calls == [
        ("quick_check", 0, True, ["pass", "pass"]),
        ("chunk", 0, "c0"),
        ("quick_check", 1, True, ["pass", "pass"]),
        ("chunk", 1, "c1"),
        ("failure", 0, "fail"),
        ("quick_check", 2, False, ["fail", "unknown"]),  # `slow` had not judged chunk 2 yet
        ("finish", "failed", False),
    ]
    request_id, reason = system.cancels[0]
    assert request_id == source.request_id and "no c2" in reason
    assert source.cancelled
    assert sink.live_at_finish == {}  # validators stopped before the end was published


def test_a_validator_fault_under_the_fail_policy_ends_with_an_error(
    actor_loop: ActorLoop, system: FakeSystem
) -> None:
    broken = ScriptedCheck("broken", {1: raise_(KeyError("check boom"))})
    source = FakeSource("t1", ["a ", "b ", "c "], endless=True)
    sink = RecordingSink(system)
    start(actor_loop, system, attempt_of(system, source, [broken]), sink, on_fault="fail")
    outcome = finished(sink)

    assert outcome.kind == "error" and not outcome.success
    assert isinstance(outcome.error, ValidatorError) and "check boom" in str(outcome.error)
    assert sink.calls == [
        ("quick_check", 0, True, ["pass"]),
        ("chunk", 0, "a"),
        ("failure", 0, "fail"),  # recorded as a "fail" of that check; no quick check for it
        ("finish", "error", False),
    ]
    assert [rid for rid, _ in system.cancels] == ["t1"]
    stopping = system.log.events(actor="stream-t1", event="stream_stopping")
    assert [r["outcome"] for r in stopping] == ["error"]


def test_a_validator_fault_under_the_unknown_policy_goes_on(
    actor_loop: ActorLoop, system: FakeSystem
) -> None:
    broken = ScriptedCheck("broken", {1: raise_(KeyError("check boom"))})
    sink = RecordingSink(system)
    attempt = attempt_of(system, FakeSource("t1", ["a ", "b "]), [broken])
    start(actor_loop, system, attempt, sink, on_fault="unknown")
    outcome = finished(sink)
    assert (outcome.kind, outcome.success) == ("completed", True)
    assert sink.calls[:4] == [
        ("quick_check", 0, True, ["pass"]),
        ("chunk", 0, "a"),
        ("quick_check", 1, True, ["unknown"]),
        ("chunk", 1, "b"),
    ]


# -- natural end --------------------------------------------------------------------------------
def test_natural_end_runs_final_validation_after_every_chunk(
    actor_loop: ActorLoop, system: FakeSystem
) -> None:
    happy = ScriptedCheck("happy")
    grumpy = ScriptedCheck("grumpy", final=False)
    source = FakeSource("t1", ["one ", "two ", "three"])
    sink = RecordingSink(system)
    start(actor_loop, system, attempt_of(system, source, [happy, grumpy]), sink)
    outcome = finished(sink)

    assert outcome.kind == "completed" and not outcome.success
    assert "final validation failed" in outcome.reason
    assert sink.calls[-4:] == [
        ("chunk", 2, "three"),  # the flushed fragment is judged and gated like any chunk
        ("streaming_done", "one two three"),
        ("full_validation", False, [True, False]),
        ("finish", "completed", False),
    ]
    assert happy.seen == grumpy.seen == [0, 1, 2, "final"]  # once each, after every chunk
    assert system.cancels == []  # nothing to cancel: the generation had ended
    assert sink.live_at_finish == {}
    [ended] = system.log.events(actor="stream-t1", event="stream_ended")
    assert (ended["delivered"], ended["found"], ended["attempts"]) == (3, 3, 1)


# -- consumer cancel ----------------------------------------------------------------------------
def test_cancel_stream_ends_the_stream_and_is_answered_after_the_end(
    actor_loop: ActorLoop, system: FakeSystem
) -> None:
    gate = Gate(actor_loop)  # never opened: chunk 1 is being judged when the cancel comes
    thunk_ended = Gate(actor_loop)
    check = ScriptedCheck("check", {1: held(gate)})
    source = FakeSource("t1", ["a ", "b ", "c "], endless=True, cancel_gate=thunk_ended)
    sink = RecordingSink(system)
    ref = start(actor_loop, system, attempt_of(system, source, [check]), sink)
    assert sink.delivered[0].wait(WAIT) and gate.reached.wait(WAIT)

    reply = ref.ask(CancelStream("the consumer had enough"), block=False)
    assert source.cancel_called.wait(WAIT)  # winding down: waiting until the thunk ended
    assert not reply.done() and not sink.done.is_set()
    thunk_ended.open()
    reply.get(timeout=WAIT)
    assert sink.done.is_set()  # answered only once the outcome was published
    outcome = finished(sink)
    assert (outcome.kind, outcome.reason, outcome.error) == (
        "cancelled",
        "the consumer had enough",
        None,
    )
    assert sink.calls == [
        ("quick_check", 0, True, ["pass"]),
        ("chunk", 0, "a"),
        ("finish", "cancelled", False),
    ]
    assert system.cancels == [("t1", "the consumer had enough")]
    assert check.cancelled.is_set()  # the running check was cancelled, not left behind
    assert sink.live_at_finish == {}
    assert not ref.is_alive()  # it stopped before answering
    with pytest.raises(pykka.ActorDeadError):
        ref.ask(CancelStream("again"), timeout=WAIT)
    assert [c for c in sink.calls if c[0] == "finish"] == [("finish", "cancelled", False)]


# -- retry from scratch -------------------------------------------------------------------------
def test_a_retry_replaces_the_attempt_whole(actor_loop: ActorLoop, system: FakeSystem) -> None:
    first_check = ScriptedCheck("first")
    first = attempt_of(
        system, FakeSource("t1", ["a ", "b "], error=StreamDroppedError("dropped")), [first_check]
    )
    made: list[tuple[int, StreamAttempt, ScriptedCheck]] = []

    async def new_attempt(number: int) -> StreamAttempt:
        check = ScriptedCheck(f"fresh {number}")
        fresh = attempt_of(system, FakeSource(f"t{number}", ["x ", "y ", "z "]), [check])
        made.append((number, fresh, check))
        return fresh

    sink = RecordingSink(system)
    start(actor_loop, system, first, sink, max_retries=2, new_attempt=new_attempt)
    outcome = finished(sink)

    assert (outcome.kind, outcome.success) == ("completed", True)
    assert sink.calls == [
        ("quick_check", 0, True, ["pass"]),
        ("chunk", 0, "a"),
        ("quick_check", 1, True, ["pass"]),
        ("chunk", 1, "b"),
        ("retry", 2, "t2"),
        ("quick_check", 0, True, ["pass"]),  # chunk indices restart at 0
        ("chunk", 0, "x"),
        ("quick_check", 1, True, ["pass"]),
        ("chunk", 1, "y"),
        ("quick_check", 2, True, ["pass"]),
        ("chunk", 2, "z"),
        ("streaming_done", "x y z "),
        ("full_validation", True, [True]),
        ("finish", "completed", True),
    ]
    [(number, fresh, fresh_check)] = made
    assert number == 2
    # new source, segmenter and checks; the old ones never saw the new attempt
    assert first_check.seen == [0, 1] and fresh_check.seen == [0, 1, 2, "final"]
    assert isinstance(first.segmenter, WordSegmenter) and first.segmenter.fed == ["a ", "a b "]
    assert isinstance(fresh.source, FakeSource) and set(fresh.source.readers) == {"stream t1"}
    assert isinstance(first.source, FakeSource)
    assert first.source.cancels == ["attempt 1 abandoned (retrying): StreamDroppedError: dropped"]
    [retry] = system.log.events(actor="stream-t1", event="stream_retry")
    assert (retry["thunk"], retry["previous"], retry["attempt"]) == ("t2", "t1", 2)
    validators = system.log.events(actor="validator-t1-0", event="actor_started")
    assert [r["thunk"] for r in validators] == ["t1", "t2"]  # a restarted child keeps its name
    assert sink.live_at_finish == {}


def test_a_retry_whose_factory_raises_ends_with_that_error(
    actor_loop: ActorLoop, system: FakeSystem
) -> None:
    async def new_attempt(number: int) -> StreamAttempt:
        raise RuntimeError(f"no attempt {number} today")

    source = FakeSource("t1", ["a "], error=StreamDroppedError("dropped"))
    sink = RecordingSink(system)
    attempt = attempt_of(system, source, [])
    start(actor_loop, system, attempt, sink, max_retries=1, new_attempt=new_attempt)
    outcome = finished(sink)
    assert outcome.kind == "error" and isinstance(outcome.error, RuntimeError)
    assert "could not start attempt 2" in outcome.reason
    assert sink.calls == [("chunk", 0, "a"), ("finish", "error", False)]


# -- the journal as the sink --------------------------------------------------------------------
Event = tuple[Any, ...]


class TupleEvents:
    """An EventFactory building plain tuples."""

    def quick_check(self, index: int, attempt: int, passed: bool, results: list[Any]) -> Event:
        return ("quick_check", index, attempt, passed)

    def chunk(self, text: str, index: int, attempt: int) -> Event:
        return ("chunk", text, index, attempt)

    def streaming_done(self, attempt: int, full_text: str) -> Event:
        return ("streaming_done", attempt, full_text)

    def full_validation(self, attempt: int, passed: bool, results: list[Any]) -> Event:
        return ("full_validation", attempt, passed)

    def retry(self, attempt: int, reason: str) -> Event:
        return ("retry", attempt, reason)

    def error(self, exception_type: str, detail: str) -> Event:
        return ("error", exception_type)

    def completed(self, success: bool, full_text: str, attempts_used: int) -> Event:
        return ("completed", success, full_text, attempts_used)


def _is_event_factory(events: TupleEvents) -> EventFactory[Event]:
    return events


async def test_the_journal_records_each_attempt_when_it_is_installed(
    actor_loop: ActorLoop, system: FakeSystem
) -> None:
    first = attempt_of(
        system, FakeSource("t1", ["a ", "b "], error=StreamDroppedError("dropped")), [], "data 1"
    )

    async def new_attempt(number: int) -> StreamAttempt:
        return attempt_of(system, FakeSource(f"t{number}", ["x  y "]), [], f"data {number}")

    journal: StreamJournal[Event] = StreamJournal(_is_event_factory(TupleEvents()), first)
    assert (journal.request_ids, journal.current.payload) == (["t1"], "data 1")
    events_view, chunks_view = journal.take_events(), journal.take_chunks()
    assert events_view is not None and chunks_view is not None
    start(actor_loop, system, first, journal, max_retries=1, new_attempt=new_attempt)
    async with asyncio.timeout(WAIT):  # consumed on this test's loop, another thread
        events = [event async for event in events_view]
        chunks = [chunk async for chunk in chunks_view]

    assert events == [
        ("chunk", "a", 0, 1),
        ("chunk", "b", 1, 1),
        ("retry", 2, "StreamDroppedError: dropped"),
        ("chunk", "x", 0, 2),
        ("chunk", "y", 1, 2),
        ("streaming_done", 2, "x  y "),
        ("completed", True, "x  y ", 2),
    ]
    assert chunks == ["a", "b", "x", "y"]
    assert journal.request_ids == ["t1", "t2"] and journal.request_id == "t1"
    record = journal.current
    assert (record.number, record.request_id, record.payload) == (2, "t2", "data 2")
    assert record.segments == ["x", "  y"] and journal.full_text == "x  y "
    assert journal.done() and journal.take_events() is None  # one consumer per view
