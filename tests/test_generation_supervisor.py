"""GenerationSupervisor on its own: an ActorLoop, real thunk actors, a fake ChatTransport.

The fake (``FakeTransport``) has the shape of the supervisor's ``ChatTransport`` Protocol: each
``stream_chat`` call plays the next scripted ``Attempt`` (deltas to emit, then an error to raise,
or silence until it is cancelled, or a final object), and ``version`` answers only once the test
says the host is up. Every wait is on a thunk outcome, a threading.Event or a log record, each
with a timeout.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pykka
import pytest

from mellea_actors.errors import (
    BackendError,
    BackendResponseError,
    BackendUnavailableError,
    CircuitOpenError,
    ModelNotFoundError,
    StreamDroppedError,
    StreamTimeoutError,
)
from mellea_actors.runtime.breaker import BreakerPolicy
from mellea_actors.runtime.generation_supervisor import START_BURST, GenerationSupervisor
from mellea_actors.runtime.log import SupervisionLog
from mellea_actors.runtime.loop import ActorLoop
from mellea_actors.runtime.messages import (
    CancelGeneration,
    ChatMessage,
    GenerationRequest,
    StartGeneration,
    ThunkOutcome,
    ThunkStatus,
)
from mellea_actors.runtime.restart_policy import RestartPolicy
from mellea_actors.runtime.thunk_actor import ThunkActor, ThunkCell
from mellea_actors.runtime.thunk_handle import ThunkHandle

HOST = "http://fake-ollama:11434"
MODEL = "fake-model"
WAIT = 5.0
FAST_RESTARTS = RestartPolicy(max_restarts=2, backoff_initial=0.001, backoff_max=0.01)
NO_RESTARTS = RestartPolicy(max_restarts=0)


@dataclass(frozen=True)
class FakeFinal:
    """The final streamed object (``done=True``) as the supervisor reads it."""

    done_reason: str | None = "stop"
    prompt_eval_count: int | None = 11
    eval_count: int | None = 42
    total_duration: int | None = 987_654


@dataclass
class Attempt:
    """What one ``stream_chat`` call does: emit ``deltas``, then raise / fall silent / finish.

    A delta is ``content`` or ``(content, thinking)``. ``tick_every`` yields to the loop after
    every n-th delta, so that some deltas share a loop tick (one batch) and others do not.
    """

    deltas: Sequence[str | tuple[str, str]] = ()
    error: BaseException | None = None
    silent: bool = False
    final: FakeFinal = field(default_factory=FakeFinal)
    tick_every: int = 1


class FakeTransport:
    """A scripted ChatTransport (runs on the actor loop; the test reads it after a sync point)."""

    def __init__(self, *attempts: Attempt, default: Attempt | None = None) -> None:
        self.attempts: deque[Attempt] = deque(attempts)
        self.default = default
        self.calls: list[GenerationRequest] = []
        self.hosts: list[str] = []
        self.silent_now = threading.Event()
        self.cancelled = threading.Event()
        self.host_up = threading.Event()
        self.version_calls = 0

    async def stream_chat(self, request: GenerationRequest, sink: Any) -> FakeFinal:
        self.calls.append(request)
        attempt = self.attempts.popleft() if self.attempts else self.default
        assert attempt is not None, "the test did not script this stream_chat call"
        try:
            for n, delta in enumerate(attempt.deltas, 1):
                content, thinking = delta if isinstance(delta, tuple) else (delta, "")
                sink.add(content, thinking)
                if n % attempt.tick_every == 0:
                    sink.flush()  # the end of one network read
                    await asyncio.sleep(0)  # the next network read: a new loop tick
            if attempt.error is not None:
                raise attempt.error
            if attempt.silent:
                self.silent_now.set()
                await asyncio.Event().wait()  # Ollama says nothing, until we are cancelled
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return attempt.final

    async def version(self, timeout: float = 5.0) -> str:
        self.version_calls += 1
        if not self.host_up.is_set():
            raise BackendUnavailableError(f"cannot reach Ollama at {HOST} (probe)", host=HOST)
        return "0.5.4"


class Harness:
    """One supervisor on the test's ActorLoop; starts real thunk actors as its targets."""

    def __init__(
        self,
        actor_loop: ActorLoop,
        transport: FakeTransport,
        *,
        policy: RestartPolicy = FAST_RESTARTS,
        breaker_policy: BreakerPolicy | None = None,
    ) -> None:
        self.loop = actor_loop
        self.transport = transport
        self.log = SupervisionLog()
        self.sup = GenerationSupervisor.start(
            actor_loop,
            transport_for=self._transport_for,
            log=self.log,
            policy=policy,
            breaker_policy=breaker_policy,
        )

    def _transport_for(self, host: str) -> FakeTransport:
        self.transport.hosts.append(host)
        return self.transport

    def start(self, request_id: str) -> ThunkHandle:
        cell = ThunkCell(request_id)
        ref = ThunkActor.start(self.loop, cell, log=self.log, supervisor=self.sup)
        request = GenerationRequest(
            request_id=request_id,
            host=HOST,
            model=MODEL,
            messages=(ChatMessage(role="user", content="Say hi."),),
        )
        self.sup.tell(StartGeneration(request, ref))
        return ThunkHandle(cell, ref, streamed=True, cancel=self.cancel_later)

    def cancel_later(self, request_id: str, reason: str) -> None:
        self.sup.tell(CancelGeneration(request_id, reason))

    def cancel(self, request_id: str, reason: str) -> bool:
        answer: bool = self.sup.ask(CancelGeneration(request_id, reason), timeout=WAIT)
        return answer

    def events(self, request_id: str, *names: str) -> list[dict[str, object]]:
        return self.log.events(thunk=request_id, event=names)

    def outcome(self, handle: ThunkHandle) -> ThunkOutcome:
        return handle.wait_outcome(WAIT)


@pytest.fixture
def actor_loop() -> Iterator[ActorLoop]:
    loop = ActorLoop(name="mellea-actors-test-gensup").start()
    yield loop
    assert loop.stop(timeout=5)


class _BusyThunkTransport(FakeTransport):
    """Its first network read is flushed while the thunk actor looks busy (as from inside one
    of its own handlers), so that batch goes to the mailbox; the later reads come when the
    actor is free again."""

    async def stream_chat(self, request: GenerationRequest, sink: Any) -> Any:
        actor = sink._gen.thunk.actor_inbox._actor  # white box: the thunk actor behind the sink
        sink.add("a ", "")
        actor._handling = True
        try:
            sink.flush()
        finally:
            actor._handling = False
        for text in ("b ", "c "):
            sink.add(text, "")
            sink.flush()
        return FakeFinal()


def test_once_a_delta_batch_is_queued_later_batches_and_the_end_queue_behind_it(
    actor_loop: ActorLoop,
) -> None:
    """The generator hands each network read's deltas to the thunk actor by a direct call when
    the actor can run at once, else by a queued message. Once one batch was queued, the later
    ones (and the end) must be queued behind it: taken at once, "b c" would overtake "a" and
    the end could publish the outcome before "a" arrived."""
    h = Harness(actor_loop, _BusyThunkTransport(Attempt()))
    outcome = h.outcome(h.start("r-busy"))
    assert outcome.status is ThunkStatus.COMPUTED
    assert outcome.deltas == ("a ", "b ", "c "), "a queued batch was overtaken"


# -- the happy path -------------------------------------------------------------------------------
def test_deltas_reach_the_thunk_in_order_and_it_ends_computed_with_the_final_stats(
    actor_loop: ActorLoop,
) -> None:
    deltas: list[str | tuple[str, str]] = [f"d{i} " for i in range(60)]
    deltas.insert(3, ("", "thinking…"))  # a thinking-only delta: no text
    final = FakeFinal(done_reason="length", prompt_eval_count=7, eval_count=99, total_duration=5)
    transport = FakeTransport(Attempt(deltas=deltas, final=final, tick_every=7))
    h = Harness(actor_loop, transport)
    handle = h.start("r1")
    outcome = h.outcome(handle)

    texts = tuple(d for d in deltas if isinstance(d, str))
    assert outcome.status is ThunkStatus.COMPUTED
    assert outcome.deltas == texts, "deltas were reordered, merged or lost on the way"
    assert outcome.text == "".join(texts)
    assert outcome.thinking == "thinking…"
    assert outcome.error is None
    meta = outcome.meta
    assert (meta.done_reason, meta.prompt_tokens, meta.completion_tokens) == ("length", 7, 99)
    assert meta.total_duration_ns == 5 and meta.total_tokens == 106
    assert meta.model == MODEL and meta.attempts == 1 and meta.streaming is True
    assert meta.time_to_first_chunk is not None and meta.time_to_first_chunk >= 0
    assert [c.request_id for c in transport.calls] == ["r1"] and transport.hosts == [HOST]

    names = [
        e["event"]
        for e in h.events("r1", "generation_started", "first_chunk", "generation_completed")
    ]
    assert names == ["generation_started", "first_chunk", "generation_completed"]
    (completed,) = h.events("r1", "generation_completed")
    assert completed["chunks"] == len(deltas) and completed["done_reason"] == "length"
    assert completed["actor"] == "generator-r1" and completed["kind"] == "generator"
    # the generation is forgotten once it ended (its GeneratorExited was queued before this ask)
    assert h.sup.proxy().active().get(timeout=WAIT) == []


def test_eval_count_missing_falls_back_to_the_delta_count(actor_loop: ActorLoop) -> None:
    final = FakeFinal(eval_count=None, prompt_eval_count=None)
    h = Harness(actor_loop, FakeTransport(Attempt(deltas=["a", "b", "c"], final=final)))
    meta = h.outcome(h.start("r1")).meta
    assert meta.completion_tokens == 3 and meta.prompt_tokens is None


# -- restarts -------------------------------------------------------------------------------------
TRANSIENT = [
    pytest.param(lambda: BackendUnavailableError(f"refused at {HOST}", host=HOST), id="refused"),
    pytest.param(lambda: StreamDroppedError("dropped", host=HOST), id="dropped"),
    pytest.param(lambda: BackendResponseError("HTTP 502", status_code=502, host=HOST), id="502"),
]


@pytest.mark.parametrize("error", TRANSIENT)
def test_a_transient_failure_before_any_delta_is_restarted_and_logged(
    actor_loop: ActorLoop, error: Callable[[], BackendError]
) -> None:
    first, second = error(), error()
    transport = FakeTransport(
        Attempt(error=first), Attempt(error=second), Attempt(deltas=["ok", "!"])
    )
    h = Harness(actor_loop, transport)
    outcome = h.outcome(h.start("r1"))

    assert outcome.status is ThunkStatus.COMPUTED and outcome.text == "ok!"
    assert outcome.meta.attempts == 3
    assert len(transport.calls) == 3
    records = h.events("r1", "generator_restarting", "generator_restarted")
    assert [(r["event"], r["attempt"]) for r in records] == [
        ("generator_restarting", 1),
        ("generator_restarted", 2),
        ("generator_restarting", 2),
        ("generator_restarted", 3),
    ]
    restarting = [r for r in records if r["event"] == "generator_restarting"]
    assert [r["reason"] for r in restarting] == [str(first), str(second)]
    assert [r["backoff"] for r in restarting] == [0.001, 0.002]  # exponential
    assert not h.events("r1", "generation_failed")


def test_when_the_restarts_are_used_up_the_thunk_fails_with_the_last_error(
    actor_loop: ActorLoop,
) -> None:
    errors = [StreamDroppedError(f"drop {i}", host=HOST) for i in range(2)]
    transport = FakeTransport(*(Attempt(error=e) for e in errors))
    policy = RestartPolicy(max_restarts=1, backoff_initial=0.001)
    h = Harness(actor_loop, transport, policy=policy)
    outcome = h.outcome(h.start("r1"))
    assert outcome.status is ThunkStatus.FAILED
    assert outcome.error is errors[1]
    assert len(transport.calls) == 2 and outcome.meta.attempts == 2
    assert len(h.events("r1", "generator_restarting")) == 1
    (failed,) = h.events("r1", "generation_failed")
    assert failed["attempts"] == 2 and failed["error_type"] == "StreamDroppedError"


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(lambda: BackendResponseError("HTTP 400", status_code=400), id="400"),
        pytest.param(lambda: BackendResponseError("error line", status_code=-1), id="error-line"),
        pytest.param(lambda: ModelNotFoundError("no such model", host=HOST), id="no-model"),
        pytest.param(lambda: StreamTimeoutError("stalled", host=HOST), id="stall"),
        pytest.param(lambda: CircuitOpenError("open", host=HOST), id="circuit-open"),
    ],
)
def test_a_non_transient_failure_is_not_restarted(
    actor_loop: ActorLoop, error: Callable[[], BackendError]
) -> None:
    err = error()
    transport = FakeTransport(Attempt(error=err), default=Attempt(deltas=["never"]))
    h = Harness(actor_loop, transport)
    outcome = h.outcome(h.start("r1"))
    assert outcome.status is ThunkStatus.FAILED and outcome.error is err
    assert len(transport.calls) == 1
    assert not h.events("r1", "generator_restarting", "generator_restarted")


def test_an_unexpected_exception_of_the_transport_becomes_a_backend_error(
    actor_loop: ActorLoop,
) -> None:
    bug = RuntimeError("a bug in the transport")
    h = Harness(actor_loop, FakeTransport(Attempt(error=bug)))
    outcome = h.outcome(h.start("r1"))
    assert outcome.status is ThunkStatus.FAILED
    assert type(outcome.error) is BackendError and outcome.error.__cause__ is bug
    assert "r1" in str(outcome.error) and "a bug in the transport" in str(outcome.error)


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(lambda: StreamDroppedError("dropped mid-stream", host=HOST), id="dropped"),
        pytest.param(lambda: BackendResponseError("HTTP 502", status_code=502), id="502"),
    ],
)
def test_a_failure_after_a_delta_is_not_retried_and_the_text_is_kept(
    actor_loop: ActorLoop, error: Callable[[], BackendError]
) -> None:
    err = error()
    assert err.transient  # it would be restarted before any delta
    transport = FakeTransport(
        Attempt(deltas=["x", "y"], error=err), default=Attempt(deltas=["retried!"])
    )
    h = Harness(actor_loop, transport)
    handle = h.start("r1")
    outcome = h.outcome(handle)
    assert outcome.status is ThunkStatus.FAILED and outcome.error is err
    assert outcome.deltas == ("x", "y") and outcome.text == "xy"
    assert handle.cell.snapshot_text() == "xy"
    assert len(transport.calls) == 1, "text was delivered: a retry would duplicate it"
    assert not h.events("r1", "generator_restarting")
    (failed,) = h.events("r1", "generation_failed")
    assert "not retried" in str(failed["reason"]) and failed["chunks"] == 2


# -- cancel ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("before", [0, 2], ids=["before-any-delta", "after-two-deltas"])
def test_cancel_while_the_transport_is_silent_ends_the_thunk_cancelled(
    actor_loop: ActorLoop, before: int
) -> None:
    sent = ["a", "b"][:before]
    transport = FakeTransport(Attempt(deltas=sent, silent=True))
    h = Harness(actor_loop, transport)
    handle = h.start("r1")
    assert transport.silent_now.wait(WAIT), "the fake never got to its silence"

    assert h.cancel("r1", "the test cancels") is True
    outcome = h.outcome(handle)
    assert outcome.status is ThunkStatus.CANCELLED
    assert outcome.cancel_reason == "the test cancels"
    assert outcome.text == "".join(sent) and outcome.error is None
    assert outcome.meta.completion_tokens == before and outcome.meta.done_reason is None
    assert transport.cancelled.wait(WAIT), "the transport's task was not cancelled"
    (cancelled,) = h.events("r1", "generation_cancelled")
    assert cancelled["reason"] == "the test cancels" and cancelled["chunks"] == before
    assert not h.events("r1", "generator_restarting", "generation_failed")
    # the generation is gone: a second cancel has nothing to cancel
    assert h.cancel("r1", "again") is False
    assert len(transport.calls) == 1


def test_cancel_of_an_unknown_generation_answers_false(actor_loop: ActorLoop) -> None:
    h = Harness(actor_loop, FakeTransport())
    assert h.cancel("nobody", "why not") is False


def test_cancel_during_a_restart_backoff_ends_the_thunk_cancelled(actor_loop: ActorLoop) -> None:
    transport = FakeTransport(
        Attempt(error=BackendUnavailableError("refused", host=HOST)),
        default=Attempt(deltas=["never"]),
    )
    slow = RestartPolicy(max_restarts=2, backoff_initial=30.0, backoff_max=30.0)
    h = Harness(actor_loop, transport, policy=slow)
    handle = h.start("r1")
    h.log.wait_for("generator_restarting", thunk="r1", timeout=WAIT)
    assert h.cancel("r1", "not worth waiting") is True
    outcome = h.outcome(handle)
    assert outcome.status is ThunkStatus.CANCELLED
    assert outcome.cancel_reason == "not worth waiting"
    assert len(transport.calls) == 1 and not h.events("r1", "generator_restarted")


class _TickedTransport(FakeTransport):
    """Records, per ``stream_chat`` call, the loop iteration it began in (``tick``: a callback
    that schedules itself again runs once per iteration of the loop)."""

    def __init__(self, *attempts: Attempt, default: Attempt | None = None) -> None:
        super().__init__(*attempts, default=default)
        self.tick = 0
        self.ticking = True
        self.began_at: list[int] = []

    def ticker(self) -> None:
        self.tick += 1
        if self.ticking:
            asyncio.get_running_loop().call_soon(self.ticker)

    async def stream_chat(self, request: GenerationRequest, sink: Any) -> FakeFinal:
        self.began_at.append(self.tick)
        return await super().stream_chat(request, sink)


class _TickedHosts(list[str]):
    """``FakeTransport.hosts``, which the harness appends to at every ``transport_for`` (one
    per launch): records the loop iteration of each."""

    def __init__(self, transport: _TickedTransport) -> None:
        super().__init__()
        self.transport = transport
        self.ticks: list[int] = []

    def append(self, host: str) -> None:
        self.ticks.append(self.transport.tick)
        super().append(host)


def test_attempts_admitted_together_start_at_most_a_burst_per_loop_iteration(
    actor_loop: ActorLoop,
) -> None:
    """Regression (p99 delay, bench scenario 4): every attempt admitted at once was started
    inline, so 1,000 thunks created together opened their connections in one or two loop
    iterations while the running streams' chunks waited (up to 140 ms); and every new
    generation was launched by its StartGeneration handler, all of a burst in one go."""
    n = 3 * START_BURST + 5
    transport = _TickedTransport(default=Attempt(deltas=("x",)))
    launched = transport.hosts = _TickedHosts(transport)
    h = Harness(actor_loop, transport)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:  # the loop waits while every StartGeneration is queued
        held.set()
        release.wait(WAIT)

    actor_loop.loop.call_soon_threadsafe(hold)
    assert held.wait(WAIT)
    handles = [h.start(f"b{k}") for k in range(n)]
    actor_loop.loop.call_soon_threadsafe(transport.ticker)
    release.set()
    try:
        for handle in handles:
            assert h.outcome(handle).status is ThunkStatus.COMPUTED
    finally:
        transport.ticking = False
    per_iteration = Counter(transport.began_at)
    assert len(transport.began_at) == n
    assert max(per_iteration.values()) <= START_BURST
    assert len(per_iteration) >= 4  # n = 3 bursts and a bit: at least four iterations
    # launched (host, breaker, log record, admission) at the same pace: not all at once
    assert len(launched.ticks) == n
    assert max(Counter(launched.ticks).values()) <= START_BURST


def test_stopping_the_supervisor_cancels_its_generators(actor_loop: ActorLoop) -> None:
    transport = FakeTransport(Attempt(deltas=["p"], silent=True))
    h = Harness(actor_loop, transport)
    handle = h.start("r1")
    assert transport.silent_now.wait(WAIT)
    h.sup.stop(timeout=WAIT)
    outcome = h.outcome(handle)
    assert outcome.status is ThunkStatus.CANCELLED and outcome.text == "p"
    assert outcome.cancel_reason is not None and "supervisor stopped" in outcome.cancel_reason
    assert transport.cancelled.wait(WAIT)


# -- the circuit breaker --------------------------------------------------------------------------
BREAKER = BreakerPolicy(failure_threshold=2, probe_initial=0.005, probe_max=0.02)


def refused() -> Attempt:
    return Attempt(error=BackendUnavailableError(f"cannot reach Ollama at {HOST}", host=HOST))


def test_the_breaker_opens_fails_fast_and_a_probe_that_answers_closes_it(
    actor_loop: ActorLoop,
) -> None:
    transport = FakeTransport(refused(), refused(), default=Attempt(deltas=["back"]))
    h = Harness(actor_loop, transport, policy=NO_RESTARTS, breaker_policy=BREAKER)

    first = h.outcome(h.start("r1"))
    assert type(first.error) is BackendUnavailableError
    assert not h.log.events(event="breaker_opened"), "opened below the threshold"
    second = h.outcome(h.start("r2"))
    assert type(second.error) is BackendUnavailableError
    opened = h.log.wait_for("breaker_opened", timeout=WAIT)
    assert opened["host"] == HOST and opened["failures"] == 2
    assert opened["kind"] == "circuit_breaker"
    assert h.sup.proxy().breakers().get(timeout=WAIT) == {HOST: "open"}

    # the probe runs and fails while the host is down: the breaker stays open
    h.log.wait_for("breaker_probe_failed", count=2, timeout=WAIT)
    third = h.outcome(h.start("r3"))
    assert third.status is ThunkStatus.FAILED
    assert isinstance(third.error, CircuitOpenError)
    assert HOST in str(third.error) and third.error.host == HOST
    assert third.error.transient is False
    assert len(transport.calls) == 2, "an open breaker must fail fast, without a request"
    assert not h.events("r3", "generation_started")

    transport.host_up.set()
    closed = h.log.wait_for("breaker_closed", timeout=WAIT)
    assert "/api/version" in str(closed["reason"])
    assert h.sup.proxy().breakers().get(timeout=WAIT) == {HOST: "closed"}
    fourth = h.outcome(h.start("r4"))
    assert fourth.status is ThunkStatus.COMPUTED and fourth.text == "back"
    assert len(transport.calls) == 3


def test_a_restart_waiting_for_its_backoff_fails_fast_once_the_breaker_opened(
    actor_loop: ActorLoop,
) -> None:
    transport = FakeTransport(refused(), refused(), default=Attempt(deltas=["never"]))
    h = Harness(actor_loop, transport, policy=FAST_RESTARTS, breaker_policy=BREAKER)
    outcome = h.outcome(h.start("r1"))
    assert isinstance(outcome.error, CircuitOpenError)
    assert len(transport.calls) == 2
    assert len(h.events("r1", "generator_restarted")) == 2  # the second restart hit the breaker


def test_a_success_between_connection_failures_resets_the_count(actor_loop: ActorLoop) -> None:
    transport = FakeTransport(
        refused(),
        Attempt(deltas=["ok"]),
        refused(),
        Attempt(deltas=["ok"]),
        refused(),
        Attempt(deltas=["still closed"]),
    )
    h = Harness(actor_loop, transport, policy=NO_RESTARTS, breaker_policy=BREAKER)
    outcomes = [h.outcome(h.start(f"r{i}")) for i in range(6)]
    assert not any(isinstance(o.error, CircuitOpenError) for o in outcomes)
    assert outcomes[-1].text == "still closed" and len(transport.calls) == 6
    assert not h.log.events(event="breaker_opened")


def test_http_errors_and_dropped_streams_do_not_count_as_connection_failures(
    actor_loop: ActorLoop,
) -> None:
    transport = FakeTransport(
        Attempt(error=StreamDroppedError("dropped", host=HOST)),
        Attempt(error=BackendResponseError("HTTP 500", status_code=500)),
        Attempt(error=BackendResponseError("HTTP 404", status_code=404)),
        refused(),
        Attempt(deltas=["still closed"]),
    )
    h = Harness(actor_loop, transport, policy=NO_RESTARTS, breaker_policy=BREAKER)
    outcomes = [h.outcome(h.start(f"r{i}")) for i in range(5)]
    assert outcomes[-1].text == "still closed" and len(transport.calls) == 5
    assert not h.log.events(event="breaker_opened")


def test_a_delta_counts_as_a_success_for_the_breaker(actor_loop: ActorLoop) -> None:
    transport = FakeTransport(
        refused(),
        Attempt(deltas=["the host", " answered"], error=StreamDroppedError("drop", host=HOST)),
        refused(),
        Attempt(deltas=["still closed"]),
    )
    h = Harness(actor_loop, transport, policy=NO_RESTARTS, breaker_policy=BREAKER)
    outcomes = [h.outcome(h.start(f"r{i}")) for i in range(4)]
    assert outcomes[-1].text == "still closed", outcomes[-1].error


def test_an_answer_of_the_host_between_refusals_breaks_the_sequence(
    actor_loop: ActorLoop,
) -> None:
    transport = FakeTransport(
        refused(),
        Attempt(error=BackendResponseError("HTTP 500", status_code=500)),
        refused(),
        Attempt(deltas=["still closed"]),
    )
    h = Harness(actor_loop, transport, policy=NO_RESTARTS, breaker_policy=BREAKER)
    outcomes = [h.outcome(h.start(f"r{i}")) for i in range(4)]
    assert outcomes[-1].text == "still closed", outcomes[-1].error


def test_a_thunk_actor_that_is_gone_does_not_break_the_supervisor(actor_loop: ActorLoop) -> None:
    transport = FakeTransport(Attempt(deltas=["a"], silent=True), Attempt(deltas=["b"]))
    h = Harness(actor_loop, transport)
    handle = h.start("r1")
    assert transport.silent_now.wait(WAIT)
    handle.ref.stop(timeout=WAIT)  # the thunk stops under its generation
    with pytest.raises(pykka.ActorDeadError):
        handle.ref.ask("x", timeout=WAIT)
    assert h.cancel("r1", "its thunk is gone") is True
    assert transport.cancelled.wait(WAIT)
    assert h.outcome(h.start("r2")).text == "b"
