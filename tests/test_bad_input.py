"""Bad input gets a clear InvalidInputError (a ValueError) naming the parameter, before any
request reaches the server; shutdown refuses cleanly or completes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from typing import Any

import pytest

from mellea_actors import MelleaSession, start_session
from mellea_actors.backends import ModelOption
from mellea_actors.errors import InvalidInputError, QueueTimeoutError, RuntimeClosedError
from mellea_actors.stdlib.components import Instruction
from mellea_actors.stdlib.streaming import stream_with_chunking
from mellea_actors.testing import Script, ScriptedOllama

from .conftest import SCRIPTED_MODEL

WAIT = 10.0


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"base_url": 11434}, "base_url"),
        ({"base_url": "127.0.0.1:abc"}, "base_url"),
        ({"base_url": "http://[::1"}, "base_url"),
        ({"base_url": "127.0.0.1:99999"}, "base_url"),
        ({"model_options": [1, 2]}, "model_options"),
        ({"max_in_flight": 0}, "max_in_flight"),
        ({"max_in_flight": -1}, "max_in_flight"),
        ({"queue_timeout": "soon"}, "queue_timeout"),
        ({"restart_policy": "fast"}, "restart_policy"),
        ({"breaker_policy": 5}, "breaker_policy"),
        ({"model_id": ""}, "model_id"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_start_session_rejects_bad_arguments_by_name(kwargs: dict[str, Any], names: str) -> None:
    with pytest.raises(InvalidInputError, match=names):
        start_session(check=False, **{"base_url": "http://127.0.0.1:9", **kwargs})


def test_a_malformed_ollama_host_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "127.0.0.1:abc")
    with pytest.raises(InvalidInputError, match="OLLAMA_HOST"):
        start_session(check=False)


def test_a_single_string_requirement_is_an_error_not_eight_letters(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    """Regression: requirements="be short" became 8 one-letter requirements (18 requests)."""
    with pytest.raises(InvalidInputError, match=r"requirements=\['be short'\]"):
        scripted_session.instruct("x", requirements="be short")  # type: ignore[arg-type]
    assert scripted.requests == []


def test_a_strategy_must_be_a_sampling_strategy(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    with pytest.raises(InvalidInputError, match="strategy"):
        scripted_session.instruct("x", requirements=["be short"], strategy="rejection")
    assert scripted.requests == []


def test_a_lone_surrogate_fails_at_the_call(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    with pytest.raises(InvalidInputError, match="surrogate"):
        scripted_session.instruct("caf\udce9")
    assert scripted.requests == []


async def test_stream_with_chunking_needs_a_context(scripted_session: MelleaSession) -> None:
    with pytest.raises(InvalidInputError, match="ctx"):
        await stream_with_chunking(Instruction("x"), scripted_session.backend, None)  # type: ignore[arg-type]


def test_blocking_calls_reject_string_timeouts(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.set_script(Script(tokens=tuple(f"t{i} " for i in range(50)), delay=0.05))
    mot = scripted_session.submit("x", model_options={ModelOption.STREAM: True})
    with pytest.raises(InvalidInputError, match="timeout"):
        mot.wait(timeout="5")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="timeout"):
        next(iter(mot.iter_chunks(timeout="5")))  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="timeout"):  # it returned silently before
        mot.cancel_sync(timeout="x")  # type: ignore[arg-type]
    assert mot.status in ("pending", "streaming")  # nothing happened to it
    mot.cancel_sync(timeout=WAIT)
    assert mot.cancelled


def test_a_queued_request_waits_at_most_queue_timeout(scripted: ScriptedOllama) -> None:
    """Regression: the wait for a slot was unbounded (the stream timeout is armed only once a
    slot is won), so with the slots taken a generation could wait forever."""
    scripted.set_script(Script(tokens=tuple(f"t{i} " for i in range(100)), delay=0.05))
    with start_session(
        model_id=SCRIPTED_MODEL, base_url=scripted.base_url, max_in_flight=1, queue_timeout=0.2
    ) as m:
        holder = m.submit("first", model_options={ModelOption.STREAM: True})
        scripted.wait_for_requests(1, WAIT)
        queued = m.submit("second")
        with pytest.raises(QueueTimeoutError, match=r"queue_timeout|slot"):
            queued.wait(WAIT)
        assert len(scripted.requests) == 1
        holder.cancel_sync(timeout=WAIT)


def test_a_refused_close_leaves_the_session_closable(scripted: ScriptedOllama) -> None:
    """Regression: close(timeout="x") (or from the loop thread) marked the session closed
    before failing, so later close() and the exit hook skipped it and its thread lived on."""
    m = start_session(model_id=SCRIPTED_MODEL, base_url=scripted.base_url)
    with pytest.raises(InvalidInputError, match="timeout"):
        m.close(timeout="x")  # type: ignore[arg-type]

    errors: list[BaseException] = []

    async def close_from_the_loop() -> None:
        try:
            m.system.close()
        except RuntimeError as exc:
            errors.append(exc)

    m.system.loop.run_sync(close_from_the_loop(), timeout=WAIT)
    assert errors and "loop thread" in str(errors[0])
    thread = m.system.loop.thread
    assert thread.is_alive() and not m.system.closed
    m.close()
    m.close()  # idempotent
    assert not thread.is_alive()


def test_a_new_thread_after_close_gets_runtime_closed(scripted: ScriptedOllama) -> None:
    """Regression: a thread whose id reused the dead loop thread's was told it ran on the loop
    thread instead of getting RuntimeClosedError."""
    m = start_session(model_id=SCRIPTED_MODEL, base_url=scripted.base_url)
    m.close()
    seen: list[BaseException] = []

    def call() -> None:
        try:
            m.instruct("x")
        except BaseException as exc:
            seen.append(exc)

    for _ in range(5):  # thread ids are reused quickly; any of them may get the old one
        t = threading.Thread(target=call)
        t.start()
        t.join(WAIT)
    assert len(seen) == 5 and all(isinstance(e, RuntimeClosedError) for e in seen), seen


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_exits_at_once_and_must_start_its_own_session(
    scripted: ScriptedOllama,
) -> None:
    """Regression: after os.fork() a child that used nothing took 10 s to exit (the exit hook
    waited on a loop thread the child does not have); one that called submit() never
    returned."""
    script = textwrap.dedent(
        f"""
        import os, sys, time
        from mellea_actors import start_session
        from mellea_actors.errors import RuntimeClosedError
        m = start_session(model_id="scripted", base_url={scripted.base_url!r})
        pid = os.fork()
        if pid == 0:
            try:
                m.submit("x")
            except RuntimeClosedError as exc:
                assert "os.fork" in str(exc), exc
            else:
                raise SystemExit("an inherited session still answered")
            with start_session(model_id="scripted", base_url={scripted.base_url!r}) as own:
                assert own.instruct("y").value
            sys.exit(0)
        started = time.monotonic()
        _, status = os.waitpid(pid, 0)
        took = time.monotonic() - started
        assert m.instruct("z").value  # the parent's session was not touched
        m.close()
        print(os.waitstatus_to_exitcode(status), round(took, 2))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    code, took = proc.stdout.split()
    assert code == "0", proc.stderr
    assert float(took) < 3.0
