"""Non-async use (SPEC §7, issue 5 part 4): plain threads talk to the runtime's actors.

Everything here runs against the scripted Ollama-protocol server: from a thread with no event
loop, from inside a running event loop (blocking it briefly, as sync methods may), and through
the threaded HTTP service of ``examples/threaded_service.py``.
"""

from __future__ import annotations

import asyncio
import http.client
import importlib.util
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import pykka
import pytest

from mellea_actors import MelleaSession
from mellea_actors.backends import ModelOption
from mellea_actors.errors import AskTimeoutError
from mellea_actors.runtime.messages import (
    AwaitOutcome,
    CancelGeneration,
    ThunkOutcome,
    ThunkStatus,
)
from mellea_actors.testing import Script, ScriptedOllama

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
STREAM = {ModelOption.STREAM: True}

T = TypeVar("T")


def in_plain_thread(fn: Callable[[], T], timeout: float = 30.0) -> T:
    """Run ``fn`` in a fresh thread that has no event loop; return its result or re-raise."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                pass
            else:
                raise AssertionError("the helper thread unexpectedly runs an event loop")
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="plain-caller")
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"the plain thread did not finish within {timeout} s"
    if "error" in box:
        raise box["error"]
    return box["value"]


def assert_in_token_order(chunks: Sequence[str], tokens: Sequence[str]) -> None:
    """Each chunk is a run of consecutive tokens, and together they are all tokens in order."""
    i = 0
    for chunk in chunks:
        assert chunk, "an empty chunk was yielded"
        start = i
        acc = ""
        while len(acc) < len(chunk) and i < len(tokens):
            acc += tokens[i]
            i += 1
        assert acc == chunk, f"chunk {chunk!r} is not tokens {start}..{i - 1} ({acc!r})"
    assert i == len(tokens), f"only {i} of {len(tokens)} tokens were yielded"


# -- from a plain thread ------------------------------------------------------------------------
def test_submit_then_wait_returns_the_value(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    script = Script.from_text("Plain threads can wait for answers.", first_delay=0.05)
    scripted.enqueue(script)

    def work() -> tuple[bool, str, str]:
        thunk = scripted_session.submit("Say something.")
        computed_at_once = thunk.is_computed()
        return computed_at_once, thunk.wait(timeout=5), thunk.status

    computed_at_once, value, status = in_plain_thread(work)
    assert not computed_at_once  # submit returned before the generation ended
    assert value == script.text
    assert status == "computed"
    assert scripted.requests[0].messages[-1]["content"] == "Say something."


def test_iter_chunks_yields_the_scripted_tokens_in_order(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    script = Script.counting(15, delay=0.01)
    scripted.enqueue(script)

    def work() -> list[str]:
        thunk = scripted_session.submit("Count.", model_options=STREAM)
        return list(thunk.iter_chunks(timeout=5))

    chunks = in_plain_thread(work)
    assert_in_token_order(chunks, script.tokens)
    assert len(chunks) > 1  # delivered as it arrived, not in one piece at the end


def test_wait_with_a_tiny_timeout_raises_and_the_generation_goes_on(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    script = Script(tokens=("slow", " but", " sure."), first_delay=0.3)
    scripted.enqueue(script)

    def work() -> tuple[str, str]:
        thunk = scripted_session.submit("Take your time.")
        with pytest.raises(AskTimeoutError, match="did not end within"):
            thunk.wait(timeout=0.02)
        status_after_timeout = thunk.status
        return status_after_timeout, thunk.wait(timeout=5)

    status_after_timeout, value = in_plain_thread(work)
    assert status_after_timeout in ("pending", "streaming")
    assert value == script.text
    record = scripted.wait_for_requests(1, timeout=5, finished=True)[0]
    assert record.outcome == "completed"
    assert record.tokens_sent == len(script.tokens)


def test_leaving_iter_chunks_early_cancels_the_generation(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    script = Script.counting(500, delay=0.01)
    scripted.enqueue(script)

    def work() -> tuple[str, str | None, str]:
        thunk = scripted_session.submit("Count a lot.", model_options=STREAM)
        first = ""
        for chunk in thunk.iter_chunks(timeout=5):
            first = chunk
            break
        partial = thunk.wait(timeout=5)  # ends promptly: the cancel is under way
        return first, thunk.request_id, partial

    first, rid, partial = in_plain_thread(work)
    assert first.startswith("t0 ")
    record = scripted.wait_for_disconnect(0, timeout=5)
    assert record.disconnected_at is not None
    assert record.tokens_sent < len(script.tokens)
    assert partial.startswith(first) and len(partial) < len(script.text)
    cancelled = scripted_session.system.log.wait_for("generation_cancelled", thunk=rid, timeout=5)
    assert isinstance(cancelled["reason"], str) and cancelled["reason"]


def test_ask_await_outcome_on_the_thunk_actor(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    script = Script.from_text("Actors answer asks.", first_delay=0.2)
    scripted.enqueue(script)

    def work() -> tuple[Any, str | None]:
        thunk = scripted_session.submit("Ask me.")
        ref = thunk.actor_ref
        assert ref is not None
        return ref.ask(AwaitOutcome(), timeout=5), thunk.request_id

    outcome, rid = in_plain_thread(work)
    assert isinstance(outcome, ThunkOutcome)
    assert outcome.status is ThunkStatus.COMPUTED
    assert outcome.text == script.text
    # its job done, the thunk actor stops
    scripted_session.system.log.wait_for("actor_stopped", thunk=rid, timeout=5)


def test_ask_with_a_tiny_timeout_raises_pykka_timeout(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script(tokens=("never",), stall_after=0))  # silent until we hang up

    def work() -> tuple[bool, str, bool]:
        thunk = scripted_session.submit("Stall.", model_options=STREAM)
        ref = thunk.actor_ref
        assert ref is not None
        with pytest.raises(pykka.Timeout):
            ref.ask(AwaitOutcome(), timeout=0.05)
        alive_after_timeout = ref.is_alive()
        status = thunk.status
        thunk.cancel_sync("the test is done", timeout=5)
        return alive_after_timeout, status, thunk.cancelled

    alive_after_timeout, status, cancelled = in_plain_thread(work)
    assert alive_after_timeout  # a timed-out ask harms nobody
    assert status == "pending"
    assert cancelled
    assert scripted.wait_for_disconnect(0, timeout=5).disconnected_at is not None


def test_tell_and_ask_the_generation_supervisor(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script(tokens=("a",), stall_after=0), Script(tokens=("b",), stall_after=0))
    system = scripted_session.system

    def work() -> tuple[str, str, Any, Any]:
        told = scripted_session.submit("One.", model_options=STREAM)
        asked = scripted_session.submit("Two.", model_options=STREAM)
        assert told.request_id is not None and asked.request_id is not None
        system.supervisor.tell(CancelGeneration(told.request_id, "told to stop"))
        was_running = system.supervisor.ask(
            CancelGeneration(asked.request_id, "asked to stop"), timeout=5
        )
        asked.wait(timeout=5)
        again = system.supervisor.ask(CancelGeneration(asked.request_id, "again"), timeout=5)
        told.wait(timeout=5)
        return told.request_id, asked.request_id, was_running, again

    told_id, asked_id, was_running, again = in_plain_thread(work)
    assert was_running is True
    assert again is False  # that generation was over
    assert system.log.wait_for("generation_cancelled", thunk=told_id)["reason"] == "told to stop"
    assert system.log.wait_for("generation_cancelled", thunk=asked_id)["reason"] == "asked to stop"


# -- from inside a running event loop -----------------------------------------------------------
async def test_the_blocking_api_from_inside_a_running_event_loop(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    asyncio.get_running_loop()  # we really are inside one; the calls below block it briefly
    first, second = Script.from_text("Blocking is allowed."), Script.counting(4, delay=0.005)
    scripted.enqueue(first, second, Script.from_text("Asked.", first_delay=0.05))

    thunk = scripted_session.submit("One.")
    assert thunk.wait(timeout=5) == first.text
    chunks = list(scripted_session.submit("Two.", model_options=STREAM).iter_chunks(timeout=5))
    assert_in_token_order(chunks, second.tokens)
    third = scripted_session.submit("Three.")
    assert third.actor_ref is not None
    outcome = third.actor_ref.ask(AwaitOutcome(), timeout=5)
    assert isinstance(outcome, ThunkOutcome) and outcome.text == "Asked."


# -- the threaded HTTP service example ---------------------------------------------------------
def _load_example(name: str) -> ModuleType:
    path = EXAMPLES / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"examples_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


threaded_service = _load_example("threaded_service")


@pytest.fixture
def service(scripted_session: MelleaSession) -> Iterator[Any]:
    server = threaded_service.make_server(scripted_session, port=0, chunk_timeout=10)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="service", daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        assert not thread.is_alive()


def _connect(server: Any) -> http.client.HTTPConnection:
    url = urlsplit(server.url)
    return http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=10)


def test_service_streams_a_whole_generation(
    scripted: ScriptedOllama, scripted_session: MelleaSession, service: Any
) -> None:
    script = Script.from_text("Streams reach the client whole.", delay=0.005)
    scripted.enqueue(script)
    conn = _connect(service)
    try:
        conn.request("GET", "/generate?prompt=" + quote("Say it, please."))
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("Transfer-Encoding") == "chunked"
        rid = resp.getheader("X-Request-Id")
        assert resp.read().decode("utf-8") == script.text
    finally:
        conn.close()
    assert scripted.requests[0].messages[-1]["content"] == "Say it, please."
    scripted_session.system.log.wait_for("generation_completed", thunk=rid, timeout=5)


def test_service_cancels_when_the_client_disconnects(
    scripted: ScriptedOllama, scripted_session: MelleaSession, service: Any
) -> None:
    script = Script.counting(500, delay=0.01)
    scripted.enqueue(script)
    conn = _connect(service)
    try:
        conn.request("GET", "/generate?prompt=count")
        resp = conn.getresponse()
        assert resp.status == 200
        rid = resp.getheader("X-Request-Id")
        first = resp.read1(1024)
        assert first.decode("utf-8").startswith("t0 ")
    finally:
        conn.close()  # closes the socket: the client is gone
    record = scripted.wait_for_disconnect(0, timeout=5)
    assert record.disconnected_at is not None
    assert record.tokens_sent < len(script.tokens)
    cancelled = scripted_session.system.log.wait_for("generation_cancelled", thunk=rid, timeout=5)
    assert "client" in cancelled["reason"] and "left" in cancelled["reason"]


def test_service_cancels_when_the_client_leaves_before_any_text(
    scripted: ScriptedOllama, scripted_session: MelleaSession, service: Any
) -> None:
    scripted.enqueue(Script(tokens=("late",), stall_after=0))  # the model stays silent
    url = urlsplit(service.url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(b"GET /generate?prompt=think HTTP/1.1\r\nHost: test\r\n\r\n")
        scripted.wait_for_requests(1, timeout=5)  # the generation is under way
    # no write ever fails here: the watcher saw the end of file
    assert scripted.wait_for_disconnect(0, timeout=5).disconnected_at is not None
    cancelled = scripted_session.system.log.wait_for("generation_cancelled", timeout=5)
    assert "client" in cancelled["reason"] and "connection closed" in cancelled["reason"]


def test_service_reports_an_error_before_any_text_as_502(
    scripted: ScriptedOllama, service: Any
) -> None:
    scripted.enqueue(Script(status=400, error_message="scripted refusal"))
    conn = _connect(service)
    try:
        conn.request("GET", "/generate?prompt=fail")
        resp = conn.getresponse()
        body = resp.read().decode("utf-8")
        assert resp.status == 502
        assert "scripted refusal" in body
        conn.request("GET", "/generate")  # same connection, no prompt
        resp = conn.getresponse()
        assert resp.status == 400 and b"prompt" in resp.read()
        conn.request("GET", "/elsewhere")
        resp = conn.getresponse()
        assert resp.status == 404
        resp.read()
    finally:
        conn.close()


# -- the blocking-use example -------------------------------------------------------------------
def test_blocking_use_example_runs(scripted: ScriptedOllama) -> None:
    scripted.set_script(Script.counting(40, delay=0.01))
    env = {**os.environ, "OLLAMA_HOST": scripted.base_url, "MELLEA_ACTORS_MODEL": "scripted"}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "blocking_use.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    out = proc.stdout
    assert "answer: t0 t1 " in out
    assert "essay status: cancelled" in out
    assert "second essay status: cancelled" in out
    assert "outcome: computed" in out
    assert "live thunks: []" in out
