"""Each validator of ``stream_with_chunking`` has a ``copy.copy`` of its requirement (SPEC §6).

A shallow copy, as Mellea: rebinding an attribute on the copy never reaches the caller's object
(or another stream's copy), while what the attributes refer to — a ``threading.Lock``, a list
the caller shares, a client — stays the caller's and keeps working. Retries copy the same way.
"""

from __future__ import annotations

import asyncio
import copy
import threading
from typing import Any

import pytest

from mellea_actors import MelleaSession
from mellea_actors.core.backend import Backend
from mellea_actors.core.base import Context
from mellea_actors.core.requirement import PartialValidationResult, Requirement, ValidationResult
from mellea_actors.errors import InvalidInputError
from mellea_actors.stdlib.components import Instruction
from mellea_actors.stdlib.streaming import (
    RetryEvent,
    StreamChunkingResult,
    stream_with_chunking,
)
from mellea_actors.testing import Script, ScriptedOllama

WAIT = 10.0
SENTENCES = ["One alpha.", "Two beta.", "Three gamma."]
TEXT = " ".join(SENTENCES) + " "


class Shared:
    """Stands for a client: identity matters (one connection pool), it is not copyable."""

    def __init__(self) -> None:
        self.calls = 0

    def __copy__(self) -> Shared:
        raise TypeError("a client is not copied")

    def __deepcopy__(self, memo: dict[int, Any]) -> Shared:
        raise TypeError("a client is not copied")


class Locking(Requirement):
    """Records every chunk into the caller's list under the caller's lock; counts on ``self``."""

    def __init__(
        self, lock: threading.Lock, log: list[str], client: Shared, *, fail_at: int | None = None
    ) -> None:
        super().__init__("locking")
        self.lock = lock
        self.log = log
        self.client = client
        self.fail_at = fail_at
        self.count = 0  # rebound on the copy: stays 0 here

    async def stream_validate(
        self, chunk: str, *, backend: Backend, ctx: Context
    ) -> PartialValidationResult:
        with self.lock:
            self.log.append(chunk)
            self.client.calls += 1
        self.count += 1
        if self.fail_at is not None and self.count > self.fail_at:
            return PartialValidationResult("fail", reason=f"chunk {self.count - 1}")
        return PartialValidationResult("pass")

    async def validate(self, *args: Any, **kwargs: Any) -> ValidationResult:
        return ValidationResult(True, reason=f"count={self.count}")


async def start(
    session: MelleaSession, requirements: list[Requirement], **kwargs: Any
) -> StreamChunkingResult:
    return await stream_with_chunking(
        Instruction("x"), session.backend, session.ctx, requirements=requirements, **kwargs
    )


async def test_a_requirement_holding_a_lock_and_a_shared_list_works(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script.from_text(TEXT, delay=0.002))
    lock, log, client = threading.Lock(), list[str](), Shared()
    req = Locking(lock, log, client)
    result = await start(scripted_session, [req])
    async with asyncio.timeout(WAIT):
        chunks = [c async for c in result.astream()]
    await result.acomplete(timeout=WAIT)
    assert result.completed and chunks == SENTENCES
    assert log == SENTENCES  # recorded into the caller's list
    assert client.calls == len(SENTENCES)  # the same client object
    assert not lock.locked()
    assert result.final_validations[0].reason == f"count={len(SENTENCES)}"
    assert req.count == 0  # rebinding on the copy never reached the original
    assert req.lock is lock and req.log is log and req.client is client


async def test_rebinding_on_the_copy_never_reaches_the_original_or_another_stream(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.set_script(Script.from_text(TEXT, delay=0.002))
    log: list[str] = []
    req = Locking(threading.Lock(), log, Shared(), fail_at=2)
    before = dict(vars(req))
    results = [await start(scripted_session, [req]) for _ in range(2)]
    for result in results:
        await result.acomplete(timeout=WAIT)
    for result in results:  # each copy counted its own stream only: a fail after two chunks
        assert not result.completed and len(result.streaming_failures) == 1
        failed, verdict = result.streaming_failures[0]
        assert failed is not req and isinstance(failed, Locking)
        assert failed.count == 3 and verdict.reason == "chunk 2"
        assert failed.log is log  # the copy shares what the original refers to
    assert vars(req) == before and req.count == 0
    assert sorted(log) == sorted(SENTENCES * 2)


async def test_retries_copy_the_requirement_the_same_way(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    # attempt 1 is cut after two sentences (a transient error); attempt 2 runs to the end
    scripted.enqueue(Script.from_text(TEXT + "Four. ", drop_after=5), Script.from_text(TEXT))
    log: list[str] = []
    req = Locking(threading.Lock(), log, Shared())
    result = await start(scripted_session, [req], max_retries=1)
    async with asyncio.timeout(WAIT):
        events = [e async for e in result.events()]
    await result.acomplete(timeout=WAIT)
    assert result.completed and any(isinstance(e, RetryEvent) for e in events)
    assert log == SENTENCES[:2] + SENTENCES  # both attempts recorded into the caller's list
    # the new attempt's copy started from the requirement as it was at the call
    assert result.final_validations[0].reason == f"count={len(SENTENCES)}"
    assert req.count == 0


async def test_a_requirement_that_cannot_be_copied_is_refused_before_any_request(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    class Uncopyable(Requirement):
        def __copy__(self) -> Uncopyable:
            raise TypeError("no copies")

    with pytest.raises(InvalidInputError, match=r"cannot be copied.*copy\.copy"):
        await start(scripted_session, [Uncopyable("u")])
    assert scripted.requests == []


def test_the_copy_is_shallow() -> None:
    lock, log, client = threading.Lock(), ["x"], Shared()
    req = Locking(lock, log, client)
    clone = copy.copy(req)
    clone.count += 1
    assert req.count == 0 and clone.log is log and clone.lock is lock
    with pytest.raises(TypeError):
        copy.deepcopy(req)  # what a deep copy per stream would have done
