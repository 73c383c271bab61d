"""Supervision: restarts, the circuit breaker, crashes reaching a supervisor (scripted server)."""

from __future__ import annotations

import time

import pytest

from mellea_actors import start_session
from mellea_actors.backends import ModelOption
from mellea_actors.errors import (
    BackendUnavailableError,
    CircuitOpenError,
    StreamDroppedError,
    ThunkError,
)
from mellea_actors.runtime.breaker import BreakerPolicy
from mellea_actors.runtime.restart_policy import RestartPolicy
from mellea_actors.testing import Script, ScriptedOllama

TOKENS = [f"w{i} " for i in range(10)]


def events(m: object, name: str, thunk: str | None = None) -> list[dict[str, object]]:
    return m.system.log.events(event=name, thunk=thunk)  # type: ignore[attr-defined, no-any-return]


def test_refused_connections_are_restarted_transparently(scripted: ScriptedOllama) -> None:
    scripted.set_script(Script(tokens=TOKENS))
    policy = RestartPolicy(max_restarts=3, backoff_initial=0.3)
    with start_session(
        model_id="scripted", base_url=scripted.base_url, check=False, restart_policy=policy
    ) as m:
        scripted.refuse_connections(None)
        mot = m.submit("x")
        # the second restart decision: let connections through during its backoff
        second = m.system.log.wait_for(
            "generator_restarting", thunk=mot.request_id, count=2, timeout=10
        )
        assert second["attempt"] == 2
        scripted.refuse_connections(0)
        assert mot.wait(timeout=10) == "".join(TOKENS)
        restarts = events(m, "generator_restarting", mot.request_id)
        assert len(restarts) == 2
        assert all("cannot reach Ollama" in str(r["reason"]) for r in restarts)
        assert len(events(m, "generator_restarted", mot.request_id)) == 2
        assert mot.generation is not None and mot.generation.attempts == 3


def test_breaker_opens_fails_fast_and_closes_when_the_host_is_back(
    scripted: ScriptedOllama,
) -> None:
    scripted.set_script(Script(tokens=TOKENS))
    with start_session(
        model_id="scripted",
        base_url=scripted.base_url,
        check=False,
        restart_policy=RestartPolicy(max_restarts=1, backoff_initial=0.01),
        breaker_policy=BreakerPolicy(failure_threshold=3, probe_initial=0.05, probe_max=0.2),
    ) as m:
        scripted.refuse_connections(None)
        first = m.submit("a")
        with pytest.raises(BackendUnavailableError, match="cannot reach"):
            first.wait(timeout=10)  # a clear error after the configured restarts
        assert first.generation is not None and first.generation.attempts == 2
        second = m.submit("b")
        with pytest.raises(BackendUnavailableError):
            second.wait(timeout=10)
        opened = m.system.log.wait_for("breaker_opened", timeout=5)
        assert opened["host"] == scripted.base_url
        started = time.monotonic()
        third = m.submit("c")
        with pytest.raises(CircuitOpenError, match="circuit breaker") as info:
            third.wait(timeout=10)
        assert time.monotonic() - started < 0.5  # no connect attempt, no timeout to wait for
        assert scripted.base_url in str(info.value)
        scripted.refuse_connections(0)
        m.system.log.wait_for("breaker_closed", timeout=10)
        assert m.submit("d").wait(timeout=10) == "".join(TOKENS)


def test_a_drop_after_text_was_delivered_is_not_retried(scripted: ScriptedOllama) -> None:
    scripted.enqueue(Script(tokens=TOKENS, drop_after=3))
    with start_session(model_id="scripted", base_url=scripted.base_url) as m:
        mot = m.submit("x", model_options={ModelOption.STREAM: True})
        with pytest.raises(StreamDroppedError):
            "".join(mot.iter_chunks(timeout=10))
        assert mot.partial_value == "".join(TOKENS[:3])
        assert len(scripted.requests) == 1  # no silent retry
        failed = events(m, "generation_failed", mot.request_id)
        assert failed and "not retried" in str(failed[0]["reason"])
        assert not events(m, "generator_restarting", mot.request_id)


def test_a_crashed_thunk_actor_reaches_its_supervisor(scripted: ScriptedOllama) -> None:
    scripted.enqueue(Script(tokens=TOKENS, stall_after=2))
    with start_session(model_id="scripted", base_url=scripted.base_url) as m:
        mot = m.submit("x", model_options={ModelOption.STREAM: True})
        m.system.log.wait_for("first_chunk", thunk=mot.request_id, timeout=10)
        assert mot.actor_ref is not None
        mot.actor_ref.tell("not a message the thunk understands")  # crashes it
        with pytest.raises(ThunkError, match="crashed"):
            mot.wait(timeout=10)
        crash = m.system.log.wait_for("child_crashed", thunk=mot.request_id, timeout=5)
        assert "TypeError" in str(crash["reason"])
        # the supervisor stopped the generation: the server saw the disconnect
        assert scripted.wait_for_disconnect(-1, timeout=5).disconnected_at is not None
        assert m.system.live_thunks() == []


def test_a_crashed_generation_supervisor_is_restarted_by_the_root(
    scripted: ScriptedOllama,
) -> None:
    scripted.enqueue(Script(tokens=TOKENS, stall_after=2))
    with start_session(model_id="scripted", base_url=scripted.base_url) as m:
        mot = m.submit("x", model_options={ModelOption.STREAM: True})
        m.system.log.wait_for("first_chunk", thunk=mot.request_id, timeout=10)
        old = m.system.supervisor
        old.tell("garbage")  # crashes the generation supervisor
        with pytest.raises(Exception, match="supervisor crashed"):
            mot.wait(timeout=10)
        m.system.log.wait_for("actor_restarted", timeout=5)
        assert m.system.supervisor is not old and m.system.supervisor.is_alive()
        assert m.submit("again").wait(timeout=10) == "Hello world."


def test_a_failed_ask_is_answered_logged_and_leaves_the_actor_alive(
    scripted: ScriptedOllama,
) -> None:
    import pykka

    with start_session(model_id="scripted", base_url=scripted.base_url) as m:
        supervisor = m.system.supervisor
        with pytest.raises(TypeError, match="does not understand"):
            supervisor.ask("garbage", timeout=5)
        assert supervisor.is_alive()
        failed = m.system.log.wait_for("ask_failed", timeout=5)
        assert "TypeError" in str(failed["reason"])
        assert m.submit("x").wait(timeout=10) == "Hello world."
        assert isinstance(supervisor, pykka.ActorRef)
