"""Supervision inside Ray (SPEC §11, issue 12 part 2): under ``engine="ray"`` the generation
supervisors — restarts, busy retries, failover, breakers, the host pool — run in the Ray
generation supervisors; the caller's log tells the whole story with the Ray ids; the caller's
own supervisor does not retry again; ``session.hosts`` and the actor tree reach every Ray
supervisor. Real scripted servers, a local Ray (this module's fixture, as in
test_ray_engine.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from mellea_actors import MelleaSession, start_session
from mellea_actors.backends import ModelOption
from mellea_actors.errors import InvalidInputError, StreamDroppedError
from mellea_actors.runtime.host_pool import HostSpec, HostView
from mellea_actors.runtime.ray_transport import RayActorLostError
from mellea_actors.runtime.restart_policy import RestartPolicy
from mellea_actors.testing import Script, ScriptedOllama
from tests.conftest import SCRIPTED_MODEL
from tests.test_ray_engine import ray_cluster  # noqa: F401 (the module's local Ray)

pytestmark = pytest.mark.ray

TOKENS = [f"w{i} " for i in range(6)]
TEXT = "".join(TOKENS)
WAIT = 20.0


@pytest.fixture(autouse=True)
def _ray_installed() -> None:
    pytest.importorskip("ray", reason="pip install 'mellea_actors[ray]'")


def _session(base_url: Any, **kwargs: Any) -> MelleaSession:
    kwargs.setdefault("restart_policy", RestartPolicy(max_restarts=3, backoff_initial=0.05))
    return start_session(
        model_id=SCRIPTED_MODEL, base_url=base_url, engine="ray", ray_workers=2, **kwargs
    )


def wait_until(what: Callable[[], bool], timeout: float = WAIT) -> None:
    """Wait for a condition of the session's published state (bounded)."""
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.005)


def _from_ray(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("ray_actor_id")]


def _caller_own(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if not r.get("ray_actor_id")]


def views(m: MelleaSession) -> dict[str, HostView]:
    return {v.url: v for v in m.hosts}


def test_a_refused_host_fails_over_inside_ray_and_nothing_runs_twice(
    ray_cluster: str,  # noqa: F811
    servers: list[ScriptedOllama],
) -> None:
    a, b, c = servers
    a.refuse_connections(None)
    with _session([s.base_url for s in servers], check=False) as m:
        mots = [m.submit(f"p{i}") for i in range(4)]
        assert all(mot.wait(timeout=WAIT) == "Hello world." for mot in mots)
        log = m.system.log
        moved = 0
        for mot in mots:
            failovers = log.events(thunk=mot.request_id, event="failover")
            started = _from_ray(log.events(thunk=mot.request_id, event="generation_started"))
            # the caller's own supervisor did not retry (the Ray supervisor decided)
            own = log.events(thunk=mot.request_id, event=("generator_restarting", "failover"))
            assert not _caller_own(own)
            if not failovers:  # the Ray supervisor knew a was down already (its breaker)
                assert [r["host"] for r in started] in ([b.base_url], [c.base_url])
                continue
            moved += 1
            (failover,) = failovers
            assert failover["ray_actor_id"] and failover["node_id"]
            assert failover["ray_actor_id"] == started[0]["ray_actor_id"]
            assert failover["from_host"] == a.base_url
            assert failover["to_host"] in (b.base_url, c.base_url)
            assert [r["host"] for r in started] == [a.base_url, failover["to_host"]]
        assert moved >= 1  # at least each Ray supervisor's first try of a
        # each generation reached a working host exactly once
        assert len(b.requests) + len(c.requests) == len(mots)
        prompts = [str(r.messages[-1]["content"]) for s in (b, c) for r in s.requests]
        assert sorted(prompts) == sorted(f"p{i}" for i in range(4))


@pytest.mark.parametrize(
    "fault",
    [
        Script(status=503, error_message="server busy, please try again"),
        Script(drop_after=0),
    ],
    ids=["busy-503", "dropped-before-text"],
)
def test_a_transient_fault_before_text_is_restarted_inside_ray(
    ray_cluster: str,  # noqa: F811
    scripted: ScriptedOllama,
    fault: Script,
) -> None:
    scripted.enqueue(fault, Script(tokens=TOKENS))
    with _session(scripted.base_url) as m:
        mot = m.submit("x", model_options={ModelOption.STREAM: True})
        assert mot.wait(timeout=WAIT) == TEXT
        log = m.system.log
        restarting = log.wait_for("generator_restarting", thunk=mot.request_id, timeout=WAIT)
        assert restarting["ray_actor_id"] and restarting["node_id"]
        restarted = log.wait_for("generator_restarted", thunk=mot.request_id, timeout=WAIT)
        assert restarted["ray_actor_id"] == restarting["ray_actor_id"]
        assert restarted["thunk"] == mot.request_id
        events = ("generator_restarting", "generator_restarted", "failover")
        assert not _caller_own(log.events(thunk=mot.request_id, event=events))
        assert len(log.events(thunk=mot.request_id, event="ray_stream")) == 1  # one Ray call
        assert len(scripted.requests) == 2  # the fault, and the one restart: no double retry
        assert mot.generation is not None and mot.generation.finish_reason == "stop"
        assert mot.generation.attempts == 2  # the Ray side's count reaches the caller's stats
        # a single-host session: its Ray supervisor shows the one host in the tree
        engine = next(n for n in m.system.tree()["children"] if n["kind"] == "ray_engine")
        hosts = [h for s in engine["children"] for h in s["children"]]
        assert hosts and {h["url"] for h in hosts} == {scripted.base_url}
        assert all(h["state"] == "up" for h in hosts)


def test_hosts_added_and_removed_change_where_new_generations_go(
    ray_cluster: str,  # noqa: F811
    servers: list[ScriptedOllama],
) -> None:
    a, b, _ = servers
    a.set_script(Script(tokens=TOKENS, first_delay=0.5))
    with _session([a.base_url]) as m:
        running = [m.submit(f"on-a{i}") for i in range(2)]  # one on each Ray supervisor
        a.wait_for_requests(2, timeout=WAIT)
        assert m.system.ray_session is not None
        assert len(m.system.ray_session.channels) == 2
        view = m.hosts.add(b.base_url, capacity=2)
        assert view.url == b.base_url and view.capacity == 2
        m.hosts.remove(a.base_url, drain=True)
        assert views(m)[a.base_url].state == "draining"
        assert views(m)[a.base_url].in_flight == 2  # summed over the Ray supervisors
        later = [m.submit(f"later{i}") for i in range(5)]
        assert all(mot.wait(timeout=WAIT) == "Hello world." for mot in later)
        assert len(b.requests) == 5 and len(a.requests) == 2
        assert all(mot.wait(timeout=WAIT) == TEXT for mot in running)  # drained, not moved
        removed = m.system.log.wait_for("host_removed", count=2, timeout=WAIT)
        assert removed["host"] == a.base_url and removed["ray_actor_id"]
        wait_until(lambda: m.hosts.urls == [b.base_url])
        with pytest.raises(InvalidInputError, match="not in the pool"):
            m.hosts.remove(a.base_url)
        with pytest.raises(InvalidInputError, match="already in the pool"):
            m.hosts.add(b.base_url)
        # a host added back takes work again
        m.hosts.add(a.base_url, capacity=8)
        a.set_script(Script(tokens=TOKENS))
        again = [m.submit(f"back{i}") for i in range(3)]
        assert all(mot.wait(timeout=WAIT) == TEXT for mot in again)
        assert sorted(str(r.messages[-1]["content"]) for r in a.requests[2:]) == [
            f"back{i}" for i in range(3)
        ]


def test_the_tree_shows_each_ray_supervisor_with_its_hosts(
    ray_cluster: str,  # noqa: F811
    servers: list[ScriptedOllama],
) -> None:
    a, b, _ = servers
    a.set_script(Script(tokens=TOKENS, stall_after=1))
    specs = [HostSpec(a.base_url, capacity=3), HostSpec(b.base_url, capacity=5, weight=2)]
    with _session(specs) as m:
        m.hosts.remove(b.base_url, drain=True)  # the generation goes to a
        mot = m.submit("x", model_options={ModelOption.STREAM: True})
        m.system.log.wait_for("first_chunk", thunk=mot.request_id, timeout=WAIT)
        stream = m.system.log.events(thunk=mot.request_id, event="ray_stream")[-1]

        def engine() -> dict[str, Any]:
            tree = m.system.tree()
            return next(n for n in tree["children"] if n["kind"] == "ray_engine")

        def busy_host() -> dict[str, Any] | None:
            for sup in engine()["children"]:
                for host in sup["children"]:
                    if host["url"] == a.base_url and host["in_flight"] == 1:
                        return host
            return None

        wait_until(lambda: busy_host() is not None)
        supervisors = engine()["children"]
        assert len(supervisors) == 2
        assert all(s["kind"] == "ray_generation_supervisor" for s in supervisors)
        assert all(s["ray_actor_id"] and s["node_id"] and s["alive"] for s in supervisors)
        mine = next(s for s in supervisors if s["id"] == stream["actor"])
        (host,) = mine["children"]  # b left the pool there (drained: nothing ran on it)
        assert host["kind"] == "host" and host["url"] == a.base_url
        assert host["state"] == "up" and host["in_flight"] == 1 and host["capacity"] == 3
        # the session's own pool node aggregates the Ray supervisors' hosts
        caller = m.system.tree()["children"][0]["children"][0]
        pool = caller["children"][0]
        assert pool["kind"] == "hosts"
        assert [(h["url"], h["in_flight"]) for h in pool["children"]] == [(a.base_url, 1)]
        mot.cancel_sync()


def test_what_the_ray_supervisor_gave_up_on_is_not_retried_by_the_caller(
    ray_cluster: str,  # noqa: F811
    scripted: ScriptedOllama,
) -> None:
    scripted.enqueue(Script(drop_after=0), Script(drop_after=0), Script(tokens=TOKENS))
    with _session(
        scripted.base_url, restart_policy=RestartPolicy(max_restarts=1, backoff_initial=0.01)
    ) as m:
        mot = m.submit("x", model_options={ModelOption.STREAM: True})
        with pytest.raises(StreamDroppedError) as info:
            mot.wait(timeout=WAIT)
        assert not isinstance(info.value, RayActorLostError)  # the Ray side's own error
        log = m.system.log
        failed = log.wait_for("generation_failed", thunk=mot.request_id, timeout=WAIT)
        assert failed["ray_actor_id"]  # decided in Ray (the caller's record may follow)
        restarts = log.events(thunk=mot.request_id, event="generator_restarting")
        assert len(restarts) == 1 and not _caller_own(restarts)
        assert len(scripted.requests) == 2  # one try and one restart: the caller added none
        assert len(log.events(thunk=mot.request_id, event="ray_stream")) == 1


def test_each_step_of_a_generation_is_recorded_once(
    ray_cluster: str,  # noqa: F811
    scripted: ScriptedOllama,
) -> None:
    """Regression (the log and the live view's counts): the caller's relay recorded every
    attempt's start, first chunk, end and cancel a second time, beside the Ray supervisor's
    records, so a Ray session counted each generation twice."""
    scripted.set_script(Script(tokens=TOKENS, delay=0.02))
    with _session(scripted.base_url) as m:
        done = m.submit("done")
        assert done.wait(timeout=WAIT) == TEXT
        cut = m.submit("cut", model_options={ModelOption.STREAM: True})
        log = m.system.log
        log.wait_for("first_chunk", thunk=cut.request_id, timeout=WAIT)
        cut.cancel_sync(timeout=WAIT)
        log.wait_for("actor_stopped", thunk=cut.request_id, timeout=WAIT)
        steps = ("generation_started", "first_chunk", "generation_completed")
        for name in steps:
            (record,) = log.events(thunk=done.request_id, event=name)
            assert record["ray_actor_id"] and record["node_id"]
        (cancelled,) = log.events(thunk=cut.request_id, event="generation_cancelled")
        assert not log.events(thunk=cut.request_id, event="generation_completed")
        # the Ray side's own generation_cancelled would come after the thunk stopped: none did
        m.submit("after").wait(timeout=WAIT)
        assert log.events(thunk=cut.request_id, event="generation_cancelled") == [cancelled]
