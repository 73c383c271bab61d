"""ValidatorActor on its own: an ActorLoop and a fake ValidationCheck.

The fake (``FakeCheck``) has the shape of the ``ValidationCheck`` Protocol; what it does for a
chunk is scripted per index (answer, raise, wait on a gate, take some time). Every wait is on a
pykka future, a threading.Event or a log record, each with a timeout.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pykka
import pytest

from mellea_actors.errors import (
    InvalidInputError,
    InvalidVerdictError,
    ValidatorError,
    ValidatorTimeoutError,
)
from mellea_actors.runtime.log import SupervisionLog
from mellea_actors.runtime.loop import ActorLoop
from mellea_actors.runtime.messages import StopValidation, ValidateChunk, ValidateFinal
from mellea_actors.runtime.validator_actor import ValidationCheck, ValidatorActor

from .fake_verdicts import Final, Verdict, VerdictVocabulary

WAIT = 5.0
ACTOR_ID = "validator-t1-0"


Behaviour = Callable[[int, str], Awaitable[Any]]


class FakeCheck(VerdictVocabulary):
    """A scripted ValidationCheck; its methods run on the actor loop thread."""

    label = "fake check"

    def __init__(
        self,
        by_index: dict[int, Behaviour] | None = None,
        final: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        self.by_index = by_index or {}
        self.final = final
        self.seen: list[int] = []
        self.running = 0
        self.max_running = 0
        self.started = threading.Event()
        self.cancelled = threading.Event()

    async def check_chunk(self, index: int, text: str) -> Any:
        self.seen.append(index)
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        self.started.set()
        try:
            behaviour = self.by_index.get(index)
            if behaviour is None:
                return Verdict("pass", f"chunk {index}: {text}")
            return await behaviour(index, text)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        finally:
            self.running -= 1

    async def check_final(self) -> Any:
        if self.final is None:
            return Final(True, "fine")
        return await self.final()


def _check_is_a_validation_check(check: FakeCheck) -> ValidationCheck:
    return check  # the fake has the Protocol's shape (checked by mypy/ruff readers)


async def gate_forever(_index: int, _text: str) -> Any:
    await asyncio.Event().wait()


async def raise_boom(_index: int, _text: str) -> Any:
    raise KeyError("boom")


async def not_a_verdict(_index: int, _text: str) -> Any:
    raise InvalidVerdictError("the check answered 42, which is not a verdict")


def took(seconds: float) -> Behaviour:
    async def behaviour(index: int, text: str) -> Any:
        await asyncio.sleep(seconds)  # the check's own pace (a slow requirement)
        return Verdict("pass", f"chunk {index}: {text}")

    return behaviour


class Harness:
    def __init__(
        self,
        actor_loop: ActorLoop,
        check: FakeCheck,
        *,
        timeout: float | None = WAIT,
        on_fault: str = "fail",
        actor_id: str = ACTOR_ID,
        log: SupervisionLog | None = None,
    ) -> None:
        self.check = check
        self.log = log or SupervisionLog()
        self.registry: dict[str, str] = {}
        self.ref = ValidatorActor.start(
            actor_loop,
            _check_is_a_validation_check(check),
            timeout=timeout,
            on_fault=on_fault,
            log=self.log,
            actor_id=actor_id,
            parent_id="stream-t1",
            thunk_id="t1",
            registry=self.registry,
            stop_timeout=WAIT,
        )

    def ask_chunk(self, index: int, text: str | None = None) -> pykka.Future[Any]:
        return self.ref.ask(ValidateChunk(index, text or f"text {index}"), block=False)

    def failures(self) -> list[dict[str, Any]]:
        return self.log.events(actor=ACTOR_ID, event="validator_failed")


@pytest.fixture
def actor_loop() -> Iterator[ActorLoop]:
    loop = ActorLoop(name="mellea-actors-test-validator").start()
    yield loop
    assert loop.stop(timeout=5)


# -- order ----------------------------------------------------------------------------------------
def test_verdicts_come_back_in_chunk_order_when_asked_concurrently(
    actor_loop: ActorLoop,
) -> None:
    n = 12
    # earlier chunks take longer: a validator that ran them concurrently would answer backwards
    check = FakeCheck({i: took(0.002 * (n - i)) for i in range(n)})
    h = Harness(actor_loop, check)
    answered: list[int] = []
    lock = threading.Lock()

    def record(i: int) -> Callable[[Any], None]:
        def done(_future: Any) -> None:
            with lock:
                answered.append(i)

        return done

    futures = [h.ask_chunk(i) for i in range(n)]  # all asked before the first answer
    for i, future in enumerate(futures):
        future.add_done_callback(record(i))  # type: ignore[attr-defined]
    verdicts = [f.get(timeout=WAIT) for f in futures]

    assert verdicts == [Verdict("pass", f"chunk {i}: text {i}") for i in range(n)]
    assert answered == list(range(n)), "replies came back out of chunk order"
    assert check.seen == list(range(n)), "the check did not see its chunks in order"
    assert check.max_running == 1, "one validator ran two checks at once"
    assert h.ref.ask(ValidateFinal(), timeout=WAIT) == Final(True, "fine")


def test_a_slow_validator_does_not_delay_another_one(actor_loop: ActorLoop) -> None:
    log = SupervisionLog()
    slow = Harness(actor_loop, FakeCheck({0: gate_forever}), log=log, actor_id="validator-t1-0")
    fast = Harness(actor_loop, FakeCheck(), log=log, actor_id="validator-t1-1")
    pending = slow.ask_chunk(0)
    assert slow.check.started.wait(WAIT)
    assert fast.ask_chunk(0).get(timeout=WAIT) == Verdict("pass", "chunk 0: text 0")
    assert not pending.done()  # type: ignore[attr-defined]


def test_a_fail_verdict_is_an_answer_and_is_logged(actor_loop: ActorLoop) -> None:
    async def fails(index: int, _text: str) -> Any:
        return Verdict("fail", f"chunk {index} is rude")

    h = Harness(actor_loop, FakeCheck({1: fails}))
    assert h.ask_chunk(0).get(timeout=WAIT).result == "pass"
    assert h.ask_chunk(1).get(timeout=WAIT) == Verdict("fail", "chunk 1 is rude")
    record = h.log.wait_for("verdict_fail", actor=ACTOR_ID, timeout=WAIT)
    assert record["chunk_index"] == 1 and record["reason"] == "chunk 1 is rude"
    assert not h.failures()


# -- faults ---------------------------------------------------------------------------------------
def test_a_check_that_raises_gets_a_validator_error_naming_the_validator(
    actor_loop: ActorLoop,
) -> None:
    h = Harness(actor_loop, FakeCheck({2: raise_boom}))
    assert h.ask_chunk(1).get(timeout=WAIT).result == "pass"
    with pytest.raises(ValidatorError) as info:
        h.ask_chunk(2).get(timeout=WAIT)
    err = info.value
    assert type(err) is ValidatorError
    assert ACTOR_ID in str(err) and "fake check" in str(err) and "boom" in str(err)
    assert err.validator == ACTOR_ID and err.chunk_index == 2
    assert isinstance(err.__cause__, KeyError)
    (failed,) = h.failures()
    assert failed["chunk_index"] == 2 and failed["policy"] == "fail"
    assert failed["error_type"] == "ValidatorError"
    # the validator goes on with its next request
    assert h.ask_chunk(3).get(timeout=WAIT).result == "pass"


def test_a_final_validation_that_raises_is_a_fault_too(actor_loop: ActorLoop) -> None:
    async def final() -> Any:
        raise RuntimeError("final boom")

    h = Harness(actor_loop, FakeCheck(final=final))
    with pytest.raises(ValidatorError, match="final boom") as info:
        h.ref.ask(ValidateFinal(), timeout=WAIT)
    assert info.value.validator == ACTOR_ID and info.value.chunk_index is None


def test_with_policy_unknown_a_raising_check_answers_unknown(actor_loop: ActorLoop) -> None:
    async def final() -> Any:
        raise RuntimeError("final boom")

    h = Harness(actor_loop, FakeCheck({0: raise_boom}, final=final), on_fault="unknown")
    verdict = h.ask_chunk(0).get(timeout=WAIT)
    assert isinstance(verdict, Verdict) and verdict.result == "unknown"
    assert "boom" in verdict.reason and ACTOR_ID in verdict.reason
    result = h.ref.ask(ValidateFinal(), timeout=WAIT)
    assert isinstance(result, Final) and result.passed is False and "final boom" in result.reason
    assert [f["policy"] for f in h.failures()] == ["unknown", "unknown"]
    assert [f["chunk_index"] for f in h.failures()] == [0, None]


def test_a_check_past_its_deadline_gets_a_timeout_error_and_is_cancelled(
    actor_loop: ActorLoop,
) -> None:
    h = Harness(actor_loop, FakeCheck({0: gate_forever}), timeout=0.05)
    with pytest.raises(ValidatorTimeoutError) as info:
        h.ask_chunk(0).get(timeout=WAIT)
    err = info.value
    assert isinstance(err, TimeoutError) and isinstance(err, ValidatorError)
    assert ACTOR_ID in str(err) and "0.05" in str(err)
    assert err.validator == ACTOR_ID and err.chunk_index == 0
    assert h.check.cancelled.is_set(), "the late check was not cancelled"
    (failed,) = h.failures()
    assert failed["error_type"] == "ValidatorTimeoutError"
    assert h.ask_chunk(1).get(timeout=WAIT).result == "pass"  # it goes on


def test_with_policy_unknown_a_late_check_answers_unknown(actor_loop: ActorLoop) -> None:
    h = Harness(actor_loop, FakeCheck({0: gate_forever}), timeout=0.05, on_fault="unknown")
    verdict = h.ask_chunk(0).get(timeout=WAIT)
    assert verdict.result == "unknown" and "did not answer" in verdict.reason


def test_the_deadline_counts_from_the_start_of_each_call_not_from_the_ask(
    actor_loop: ActorLoop,
) -> None:
    # two calls of 0.3 s each, asked at once: the second reply comes ~0.6 s after its ask
    h = Harness(actor_loop, FakeCheck({0: took(0.3), 1: took(0.3)}), timeout=0.6)
    futures = [h.ask_chunk(0), h.ask_chunk(1)]
    assert [f.get(timeout=WAIT).result for f in futures] == ["pass", "pass"]
    assert not h.failures()


@pytest.mark.parametrize("policy", ["fail", "unknown"])
def test_a_non_verdict_is_reported_as_a_fault(actor_loop: ActorLoop, policy: str) -> None:
    h = Harness(actor_loop, FakeCheck({0: not_a_verdict}), on_fault=policy)
    if policy == "fail":
        with pytest.raises(InvalidVerdictError, match="not a verdict") as info:
            h.ask_chunk(0).get(timeout=WAIT)
        assert info.value.validator == ACTOR_ID and info.value.chunk_index == 0
        assert isinstance(info.value, ValueError)
    else:
        verdict = h.ask_chunk(0).get(timeout=WAIT)
        assert verdict.result == "unknown" and "not a verdict" in verdict.reason
    (failed,) = h.failures()
    assert failed["error_type"] == "InvalidVerdictError" and failed["policy"] == policy


def test_an_unknown_fault_policy_is_refused(actor_loop: ActorLoop) -> None:
    with pytest.raises(InvalidInputError, match="on_fault"):
        Harness(actor_loop, FakeCheck(), on_fault="ignore")


def test_a_message_it_does_not_understand_goes_back_to_the_asker(actor_loop: ActorLoop) -> None:
    h = Harness(actor_loop, FakeCheck())
    with pytest.raises(TypeError, match="does not understand"):
        h.ref.ask("hello", timeout=WAIT)
    assert h.ask_chunk(0).get(timeout=WAIT).result == "pass"


# -- stop -----------------------------------------------------------------------------------------
def test_stop_validation_cancels_the_running_check_and_stops_the_actor(
    actor_loop: ActorLoop,
) -> None:
    h = Harness(actor_loop, FakeCheck({1: gate_forever}))
    assert h.ask_chunk(0).get(timeout=WAIT).result == "pass"
    running = h.ask_chunk(1)
    queued = [h.ask_chunk(2), h.ask_chunk(3)]
    assert h.check.started.wait(WAIT)
    assert h.registry == {ACTOR_ID: "validator"}

    checked = h.ref.ask(StopValidation("the test stops it"), timeout=WAIT)
    # answered only once the worker has finished: the check has already seen its cancel
    assert h.check.cancelled.is_set(), "the running check did not see CancelledError"
    assert h.check.running == 0
    assert checked == 1  # chunk 0 only
    assert not h.ref.is_alive()
    for future in (running, *queued):
        with pytest.raises(pykka.ActorDeadError):
            future.get(timeout=WAIT)
    assert h.check.seen == [0, 1], "a queued chunk was judged after the stop"
    with pytest.raises(pykka.ActorDeadError):
        h.ask_chunk(4).get(timeout=WAIT)
    assert h.registry == {}
    stopped = h.log.wait_for("actor_stopped", actor=ACTOR_ID, timeout=WAIT)
    assert stopped["reason"] == "the test stops it" and stopped["checked"] == 1
