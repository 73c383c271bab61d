"""The Ray engine (SPEC §11, ``start_session(engine="ray")``): the Ollama streams run in Ray
generation workers, everything else in this process (runtime/ray_transport.py).

The module starts its own local Ray (a module-scoped fixture) and stops it after; the tests
are marked ``ray`` (``pytest -m "not ray"`` deselects them) and skipped when Ray is not
installed (``pip install 'mellea_actors[ray]'``). Ray worker processes reach the scripted
server over loopback (one node).
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mellea_actors import MelleaSession, start_session
from mellea_actors.backends import ModelOption
from mellea_actors.core.backend import Backend
from mellea_actors.core.base import Context
from mellea_actors.core.requirement import PartialValidationResult, Requirement
from mellea_actors.errors import (
    BackendError,
    BackendResponseError,
    BackendUnavailableError,
    InvalidInputError,
    ModelNotFoundError,
    StreamDroppedError,
    StreamTimeoutError,
)
from mellea_actors.runtime.restart_policy import RestartPolicy
from mellea_actors.stdlib.components import Instruction
from mellea_actors.stdlib.streaming import stream_with_chunking
from mellea_actors.testing import Script, ScriptedOllama
from tests.conftest import SCRIPTED_MODEL
from tests.test_examples import run_example

pytestmark = pytest.mark.ray

STREAM = {ModelOption.STREAM: True}
TOKENS = [f"w{i} " for i in range(40)]
WAIT = 20.0
SAMPLES = sorted(p.name for p in (Path(__file__).parent.parent / "examples").glob("0*.py"))


def _ray() -> Any:
    return pytest.importorskip(
        "ray", reason="Ray is not installed: pip install 'mellea_actors[ray]'"
    )


# -- without Ray (run everywhere) -------------------------------------------------------------
@pytest.mark.parametrize(
    "error",
    [
        BackendError("e", host="http://h:1", model="m"),
        BackendUnavailableError("refused", host="http://h:1", model="m"),
        ModelNotFoundError("no model", host="http://h:1", model="m"),
        BackendResponseError("busy", status_code=503, host="http://h:1", model="m"),
        StreamDroppedError("dropped", host="http://h:1", model="m"),
        StreamTimeoutError("silent", host="http://h:1", model="m"),
    ],
    ids=type,
)
def test_errors_pickle_with_their_attributes(error: BackendError) -> None:
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error)
    assert str(back) == str(error)
    assert back.__dict__ == error.__dict__
    assert back.transient == error.transient
    if isinstance(error, BackendResponseError):
        assert back.status_code == 503


def test_without_ray_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'mellea_actors\[ray\]'") as info:
        start_session(model_id=SCRIPTED_MODEL, base_url="http://127.0.0.1:9", engine="ray")
    assert isinstance(info.value, InvalidInputError)


def test_engine_names_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MELLEA_ACTORS_ENGINE", "spark")
    with pytest.raises(InvalidInputError, match="MELLEA_ACTORS_ENGINE 'spark'"):
        start_session(model_id=SCRIPTED_MODEL, base_url="http://127.0.0.1:9", check=False)
    with pytest.raises(InvalidInputError, match="engine='ray' only"):
        start_session(
            model_id=SCRIPTED_MODEL,
            base_url="http://127.0.0.1:9",
            engine="local",
            ray_address="auto",
        )


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A local Ray for this module (the engine must use it and never shut it down)."""
    ray = _ray()
    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
        namespace="mellea_actors",
    )
    try:
        yield str(ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()


@pytest.fixture
def ray_session(ray_cluster: str, scripted: ScriptedOllama) -> Iterator[MelleaSession]:
    with start_session(
        model_id=SCRIPTED_MODEL,
        base_url=scripted.base_url,
        engine="ray",
        ray_workers=2,
        restart_policy=RestartPolicy(max_restarts=3, backoff_initial=0.05),
    ) as m:
        yield m


def _our_actors(ray: Any) -> list[str]:
    return [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith("mellea-actors-")
    ]


def _worker_of(session: MelleaSession, request_id: str | None) -> dict[str, Any]:
    events = session.system.log.events(thunk=request_id, event="ray_stream")
    assert events, f"no ray_stream record for {request_id}"
    return events[-1]


# -- streaming --------------------------------------------------------------------------------
async def test_stream_through_ray_gives_the_same_text_and_deltas_in_order(
    scripted: ScriptedOllama, ray_session: MelleaSession
) -> None:
    assert ray_session.system.engine == "ray"
    scripted.enqueue(Script(tokens=TOKENS, delay=0.003))
    mot = await ray_session.ainstruct("anything", model_options=STREAM)
    deltas = [delta async for delta in mot]
    assert "".join(deltas) == mot.value == "".join(TOKENS)
    assert mot.generation is not None and mot.generation.finish_reason == "stop"
    assert mot.generation.usage["completion_tokens"] == len(TOKENS)

    scripted.enqueue(Script(tokens=TOKENS, delay=0.001))
    mot2 = await ray_session.ainstruct("again", model_options=STREAM)
    pieces = []
    while not mot2.is_computed():
        pieces.append(await mot2.astream())
    assert "".join(pieces) == "".join(TOKENS)  # concatenation rule, single reader

    record = _worker_of(ray_session, mot.request_id)
    assert record["ray_actor_id"] and record["node_id"]
    started = ray_session.system.log.events(event="ray_worker_started")
    assert len(started) == 2 and all(r["ray_actor_id"] for r in started)
    tree = ray_session.system.tree()
    engine = next(c for c in tree["children"] if c["kind"] == "ray_engine")
    assert len(engine["children"]) == 2


async def test_backend_errors_arrive_as_the_same_classes(
    scripted: ScriptedOllama, ray_session: MelleaSession
) -> None:
    scripted.enqueue(Script(status=400, error_message="bad request"))
    mot = await ray_session.ainstruct("x", model_options=STREAM)
    with pytest.raises(BackendResponseError) as info:
        await mot.avalue()
    assert info.value.status_code == 400 and info.value.host == scripted.base_url
    assert info.value.model == SCRIPTED_MODEL


async def test_cancel_reaches_the_server_as_a_disconnect(
    scripted: ScriptedOllama, ray_session: MelleaSession
) -> None:
    scripted.enqueue(Script(tokens=[f"t{i} " for i in range(2000)], delay=0.01))
    mot = await ray_session.ainstruct("long", model_options=STREAM)
    assert await mot.astream()
    cancelled_at = time.monotonic()
    await mot.cancel()
    record = await asyncio.to_thread(scripted.wait_for_disconnect, -1, WAIT)
    assert record.disconnected_at is not None
    delay = record.disconnected_at - cancelled_at
    print(f"cancel -> disconnect through Ray: {delay * 1000:.1f} ms")
    assert delay < 1.0
    assert mot.is_computed() and mot.value is not None and mot.value.startswith("t0 ")


async def test_leaving_async_for_closes_the_stream(
    scripted: ScriptedOllama, ray_session: MelleaSession
) -> None:
    scripted.enqueue(Script(tokens=[f"t{i} " for i in range(2000)], delay=0.01))
    mot = await ray_session.ainstruct("long", model_options=STREAM)
    async for _delta in mot:
        left_at = time.monotonic()
        break
    record = await asyncio.to_thread(scripted.wait_for_disconnect, -1, WAIT)
    assert record.disconnected_at is not None and record.disconnected_at - left_at < 1.0


class FailAt(Requirement):
    """Says "fail" on chunk ``at``; records when (class level: validators hold copies)."""

    failed_at: list[float] = []

    def __init__(self, at: int) -> None:
        super().__init__("fail at")
        self.at = at
        self.count = 0

    async def stream_validate(
        self, chunk: str, *, backend: Backend, ctx: Context
    ) -> PartialValidationResult:
        index, self.count = self.count, self.count + 1
        if index >= self.at:
            FailAt.failed_at.append(time.monotonic())
            return PartialValidationResult("fail", reason=f"chunk {index}")
        return PartialValidationResult("pass")


async def test_a_fail_verdict_reaches_the_server_as_a_disconnect(
    scripted: ScriptedOllama, ray_session: MelleaSession
) -> None:
    FailAt.failed_at.clear()
    text = " ".join(f"Sentence number {i}." for i in range(2000))
    scripted.enqueue(Script.from_text(text, delay=0.002))
    result = await stream_with_chunking(
        Instruction("x"), ray_session.backend, ray_session.ctx, requirements=[FailAt(3)]
    )
    async with asyncio.timeout(WAIT):
        chunks = [c async for c in result.astream()]
    await result.acomplete()
    assert chunks == [f"Sentence number {i}." for i in range(3)]  # gated: never chunk 3
    assert len(result.streaming_failures) == 1 and not result.completed
    record = await asyncio.to_thread(scripted.wait_for_disconnect, -1, WAIT)
    assert record.disconnected_at is not None
    delay = record.disconnected_at - FailAt.failed_at[0]
    print(f"'fail' verdict -> disconnect through Ray: {delay * 1000:.1f} ms")
    assert delay < 1.0


# -- supervision ------------------------------------------------------------------------------
async def test_killing_a_worker_mid_run(
    scripted: ScriptedOllama, ray_session: MelleaSession
) -> None:
    """Generations without text on the killed worker are retried on the other one and
    succeed; the one with text fails with an error naming the Ray actor and node."""
    ray = _ray()
    scripted.enqueue(Script(tokens=[f"a{i} " for i in range(400)], delay=0.01))
    texty = await ray_session.ainstruct("with text", model_options=STREAM)
    assert await texty.astream()  # text delivered: must not be retried
    scripted.enqueue(
        Script(tokens=["late ", "one."], first_delay=1.0),
        Script(tokens=["late ", "two."], first_delay=1.0),
    )
    silent = [await ray_session.ainstruct(f"no text {i}", model_options=STREAM) for i in (1, 2)]
    await asyncio.to_thread(scripted.wait_for_requests, 3, WAIT)
    victim = _worker_of(ray_session, texty.request_id)
    on_victim = [
        m for m in silent if _worker_of(ray_session, m.request_id)["actor"] == victim["actor"]
    ]
    assert on_victim, "least-in-flight choice should put one silent generation on each worker"
    handle = ray.get_actor(victim["actor"], namespace="mellea_actors")
    ray.kill(handle, no_restart=False)  # Ray restarts it (max_restarts)

    with pytest.raises(StreamDroppedError) as info:
        await asyncio.wait_for(texty.avalue(), WAIT)
    message = str(info.value)
    assert victim["ray_actor_id"] in message and victim["node_id"][:12] in message
    assert "after" in message and "not retried" in message
    assert texty.partial_value and texty.partial_value.startswith("a0 ")

    values = await asyncio.wait_for(asyncio.gather(*(m.avalue() for m in silent)), WAIT)
    assert all(values)
    log = ray_session.system.log
    died = log.events(event="ray_worker_died")
    assert died and all(r["ray_actor_id"] == victim["ray_actor_id"] for r in died)
    for mot in on_victim:
        streams = log.events(thunk=mot.request_id, event="ray_stream")
        assert len(streams) == 2 and streams[-1]["actor"] != victim["actor"]  # elsewhere
        assert log.events(thunk=mot.request_id, event="generator_restarting")
    # Ray brings the worker back; the engine uses it again
    restarted = await asyncio.to_thread(log.wait_for, "ray_worker_restarted", timeout=WAIT)
    assert restarted["ray_actor_id"] == victim["ray_actor_id"]


def test_sessions_leave_no_ray_actors_and_keep_the_users_ray(
    ray_cluster: str, scripted: ScriptedOllama
) -> None:
    ray = _ray()
    sessions = [
        start_session(
            model_id=SCRIPTED_MODEL, base_url=scripted.base_url, engine="ray", check=False
        )
        for _ in range(100)
    ]
    try:
        assert len(_our_actors(ray)) == 2  # shared by every session of the process
        for m in sessions[:5]:
            assert m.instruct("hello", model_options=STREAM).value == "Hello world."
    finally:
        for m in sessions:
            m.close()
    for _ in range(3):  # and one at a time
        with start_session(model_id=SCRIPTED_MODEL, base_url=scripted.base_url, engine="ray") as m:
            assert m.instruct("hello").value == "Hello world."
    deadline = time.monotonic() + 10
    while _our_actors(ray) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _our_actors(ray) == []
    assert ray.is_initialized()  # the user's (this module's) Ray is never shut down


# -- the seed samples -------------------------------------------------------------------------
@pytest.mark.ollama
@pytest.mark.parametrize("name", SAMPLES)
def test_seed_samples_run_on_ray(
    name: str, ollama_url: str, ray_cluster: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MELLEA_ACTORS_ENGINE", "ray")
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster)  # join this module's Ray (faster than a new one)
    monkeypatch.setenv("MELLEA_ACTORS_RAY_WORKERS", "1")
    proc = run_example(name, ollama_url)
    assert proc.stdout.strip()
    assert os.environ["MELLEA_ACTORS_ENGINE"] == "ray"
