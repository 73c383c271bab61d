"""A pool of Ollama hosts behind one session (SPEC §11), on scripted servers.

Routing by capacity and model, failover before the first delta (never after), the all-down
error naming every host, hosts added and removed while running, the tree and the log, and 300
generations through three hosts while one refuses, one drops connections and one is stopped and
restarted.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any

import pytest

from mellea_actors import start_session
from mellea_actors.backends import ModelOption
from mellea_actors.errors import (
    BackendError,
    BackendUnavailableError,
    InvalidInputError,
    StreamDroppedError,
)
from mellea_actors.runtime.breaker import BreakerPolicy
from mellea_actors.runtime.host_pool import HostSpec, HostView
from mellea_actors.runtime.restart_policy import RestartPolicy
from mellea_actors.testing import Script, ScriptedOllama
from mellea_actors.testing.script import RequestRecord

from .conftest import SCRIPTED_MODEL

TOKENS = [f"w{i} " for i in range(6)]
TEXT = "".join(TOKENS)
PACED = Script(tokens=TOKENS, first_delay=0.05, delay=0.01)


def tag(record: RequestRecord) -> str:
    """The prompt of a recorded request (each test prompt is unique)."""
    return str(record.messages[-1]["content"])


def wait_until(what: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for a condition of the session's published state (bounded)."""
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.005)


def views(m: Any) -> dict[str, HostView]:
    return {v.url: v for v in m.hosts}


def test_the_split_follows_the_capacities(servers: list[ScriptedOllama]) -> None:
    for server in servers:
        server.set_script(PACED)
    specs = [HostSpec(s.base_url, capacity=c) for s, c in zip(servers, (1, 2, 3), strict=True)]
    with start_session(model_id=SCRIPTED_MODEL, base_url=specs) as m:
        mots = [m.submit(f"p{i}") for i in range(120)]
        assert all(mot.wait(timeout=30) == TEXT for mot in mots)
        counts = [len(s.requests) for s in servers]
        assert sum(counts) == 120
        for count, capacity in zip(counts, (1, 2, 3), strict=True):
            assert abs(count - 20 * capacity) <= 4, counts
        assert not m.system.log.events(event="failover")


def test_a_refused_host_fails_over_at_once_and_is_logged_with_both_hosts(
    servers: list[ScriptedOllama],
) -> None:
    a, b, _ = servers
    with start_session(
        model_id=SCRIPTED_MODEL, base_url=[a.base_url, b.base_url], check=False
    ) as m:
        a.refuse_connections(None)
        mot = m.submit("x")
        assert mot.wait(timeout=10) == "Hello world."
        failover = m.system.log.wait_for("failover", thunk=mot.request_id, timeout=5)
        assert failover["from_host"] == a.base_url and failover["to_host"] == b.base_url
        assert "cannot reach" in str(failover["reason"])
        assert not m.system.log.events(event="generator_restarting", thunk=mot.request_id)
        assert len(b.requests) == 1


def test_a_busy_host_sends_the_work_to_a_host_with_room(servers: list[ScriptedOllama]) -> None:
    a, b, _ = servers
    a.set_script(Script(status=503, error_message="server busy, please try again"))
    with start_session(model_id=SCRIPTED_MODEL, base_url=[a.base_url, b.base_url]) as m:
        mot = m.submit("x")
        assert mot.wait(timeout=10) == "Hello world."
        failover = m.system.log.wait_for("failover", thunk=mot.request_id, timeout=5)
        assert "503" in str(failover["reason"]) and failover["to_host"] == b.base_url


def test_after_text_was_delivered_nothing_moves(servers: list[ScriptedOllama]) -> None:
    a, b, _ = servers
    a.set_script(Script(tokens=TOKENS, drop_after=2))
    with start_session(model_id=SCRIPTED_MODEL, base_url=[a.base_url, b.base_url]) as m:
        mot = m.submit("x", model_options={ModelOption.STREAM: True})
        with pytest.raises(StreamDroppedError, match=a.base_url):
            "".join(mot.iter_chunks(timeout=10))
        assert mot.partial_value == "".join(TOKENS[:2])
        assert b.requests == [] and len(a.requests) == 1
        assert not m.system.log.events(event="failover")


def test_every_host_down_gives_one_error_naming_them_all(
    servers: list[ScriptedOllama],
) -> None:
    urls = [s.base_url for s in servers]
    with start_session(
        model_id=SCRIPTED_MODEL,
        base_url=urls,
        check=False,
        restart_policy=RestartPolicy(max_restarts=1, backoff_initial=0.01),
    ) as m:
        for server in servers:
            server.refuse_connections(None)
        mot = m.submit("x")
        with pytest.raises(BackendUnavailableError) as info:
            mot.wait(timeout=10)
        assert isinstance(info.value, ConnectionError)
        for url in urls:
            assert url in str(info.value)


def test_start_session_names_every_host_when_none_answers(
    servers: list[ScriptedOllama],
) -> None:
    urls = [s.base_url for s in servers]
    for server in servers:
        server.refuse_connections(None)
    with pytest.raises(BackendUnavailableError) as info:
        start_session(model_id=SCRIPTED_MODEL, base_url=urls)
    assert all(url in str(info.value) for url in urls)


def test_only_hosts_with_the_model_get_its_generations() -> None:
    with (
        ScriptedOllama(models=("other",)) as a,
        ScriptedOllama(models=(SCRIPTED_MODEL,)) as b,
        start_session(model_id=SCRIPTED_MODEL, base_url=[a.base_url, b.base_url]) as m,
    ):
        wait_until(lambda: views(m)[a.base_url].models is not None)
        assert views(m)[a.base_url].models == ("other:latest",)
        mots = [m.submit(f"p{i}") for i in range(10)]
        assert all(mot.wait(timeout=10) == "Hello world." for mot in mots)
        assert a.requests == [] and len(b.requests) == 10


def test_a_stale_tag_list_is_corrected_by_a_failover() -> None:
    """A host that says it has no such model (404): the generation moves, its tags refresh."""
    with (
        ScriptedOllama(models=(SCRIPTED_MODEL,)) as a,
        ScriptedOllama(models=(SCRIPTED_MODEL,)) as b,
        start_session(model_id=SCRIPTED_MODEL, base_url=[a.base_url, b.base_url]) as m,
    ):
        a.set_script(Script(status=404, error_message=f"model '{SCRIPTED_MODEL}' not found"))
        mot = m.submit("x")
        assert mot.wait(timeout=10) == "Hello world."
        failover = m.system.log.wait_for("failover", thunk=mot.request_id, timeout=5)
        assert failover["from_host"] == a.base_url


def test_hosts_are_added_and_drained_while_running(servers: list[ScriptedOllama]) -> None:
    a, b, _ = servers
    a.set_script(Script(tokens=TOKENS, first_delay=0.3))
    with start_session(model_id=SCRIPTED_MODEL, base_url=[a.base_url]) as m:
        running = m.submit("on-a")
        a.wait_for_requests(1, timeout=5)
        view = m.hosts.add(b.base_url, capacity=2)
        assert view.url == b.base_url and view.capacity == 2
        m.hosts.remove(a.base_url, drain=True)
        assert views(m)[a.base_url].state == "draining"
        later = [m.submit(f"later{i}") for i in range(5)]
        assert all(mot.wait(timeout=10) == "Hello world." for mot in later)
        assert len(b.requests) == 5 and len(a.requests) == 1
        assert running.wait(timeout=10) == TEXT  # drained: it finished where it ran
        removed = m.system.log.wait_for("host_removed", timeout=5)
        assert removed["host"] == a.base_url
        assert m.hosts.urls == [b.base_url] and a.base_url not in m.hosts
        with pytest.raises(InvalidInputError, match="not in the pool"):
            m.hosts.remove(a.base_url)
        with pytest.raises(InvalidInputError, match="already in the pool"):
            m.hosts.add(b.base_url)


def test_removing_without_drain_moves_what_had_no_text_and_fails_what_had(
    servers: list[ScriptedOllama],
) -> None:
    a, b, _ = servers
    silent = Script(tokens=TOKENS, first_delay=30)
    talking = Script(tokens=TOKENS, stall_after=2)
    with start_session(model_id=SCRIPTED_MODEL, base_url=[a.base_url, b.base_url]) as m:
        m.hosts.remove(b.base_url)  # both start on a
        m.system.log.wait_for("host_removed", timeout=5)
        a.enqueue(talking, silent)
        with_text = m.submit("talking", model_options={ModelOption.STREAM: True})
        m.system.log.wait_for("first_chunk", thunk=with_text.request_id, timeout=5)
        without = m.submit("silent")
        a.wait_for_requests(2, timeout=5)
        m.hosts.add(b.base_url)
        m.hosts.remove(a.base_url, drain=False)
        assert without.wait(timeout=10) == "Hello world."
        with pytest.raises(BackendUnavailableError, match="removed from the pool"):
            with_text.wait(timeout=10)
        assert with_text.partial_value == "".join(TOKENS[:2])
        failover = m.system.log.wait_for("failover", thunk=without.request_id, timeout=5)
        assert failover["from_host"] == a.base_url and failover["to_host"] == b.base_url


def test_the_tree_and_the_log_show_each_host(servers: list[ScriptedOllama]) -> None:
    a, b, _ = servers
    a.set_script(Script(tokens=TOKENS, stall_after=1))
    specs = [HostSpec(a.base_url, capacity=3), HostSpec(b.base_url, capacity=5, weight=2)]
    with start_session(model_id=SCRIPTED_MODEL, base_url=specs) as m:
        m.hosts.remove(b.base_url)  # every generation on a, in flight
        m.system.log.wait_for("host_removed", timeout=5)
        m.hosts.add(b.base_url, capacity=5, weight=2)
        m.hosts.remove(b.base_url, drain=True)
        mot = m.submit("x", model_options={ModelOption.STREAM: True})
        m.system.log.wait_for("first_chunk", thunk=mot.request_id, timeout=5)
        supervisor = m.system.tree()["children"][0]["children"][0]
        pool = supervisor["children"][0]
        assert pool["kind"] == "hosts"
        (host,) = pool["children"]
        assert host["url"] == a.base_url and host["kind"] == "host"
        assert host["state"] == "up" and host["in_flight"] == 1 and host["capacity"] == 3
        added = m.system.log.events(event="host_added")
        assert {e["host"] for e in added} == {a.base_url, b.base_url}
        assert all("capacity" in e and "in_flight" in e and "state" in e for e in added)
        draining = m.system.log.events(event="host_state")
        assert any(e["state"] == "draining" for e in draining)


def test_a_single_host_session_is_not_a_pool(scripted: ScriptedOllama) -> None:
    with start_session(model_id=SCRIPTED_MODEL, base_url=scripted.base_url) as m:
        assert list(m.hosts) == [] and not m.system.pooled
        with pytest.raises(InvalidInputError, match="one host"):
            m.hosts.add("http://127.0.0.1:1")


def test_ollama_host_may_list_several_hosts(
    servers: list[ScriptedOllama], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OLLAMA_HOST", ",".join(s.host for s in servers))
    with start_session(model_id=SCRIPTED_MODEL) as m:
        assert m.hosts.urls == [s.base_url for s in servers]
        assert m.submit("x").wait(timeout=10) == "Hello world."


def test_bad_pools_are_refused(servers: list[ScriptedOllama]) -> None:
    with pytest.raises(InvalidInputError, match="empty"):
        start_session(model_id=SCRIPTED_MODEL, base_url=[])
    with pytest.raises(InvalidInputError, match="twice"):
        start_session(model_id=SCRIPTED_MODEL, base_url=[servers[0].base_url] * 2)
    with pytest.raises(InvalidInputError, match="capacity"):
        HostSpec(servers[0].base_url, capacity=0)


def test_300_generations_through_three_faulty_hosts(servers: list[ScriptedOllama]) -> None:
    """One host refuses for a while, one drops some connections (before and after text), one
    is stopped and restarted: every generation completes, or fails with a clear error only if
    it had text; none hangs, none is lost, none ran twice with text."""
    refusing, dropping, restarted = servers
    paced = Script(tokens=TOKENS, first_delay=0.01, delay=0.004)

    def dropping_script(record: RequestRecord) -> Script:
        if record.index % 3 == 1:
            return Script(tokens=TOKENS, drop_after=0)  # before any text: moves
        if record.index % 10 == 7:
            return Script(tokens=TOKENS, drop_after=3, delay=0.004)  # after text: an error
        return paced

    refusing.set_script(paced)
    dropping.set_script(dropping_script)
    restarted.set_script(paced)
    port = restarted.port
    n = 300
    with start_session(
        model_id=SCRIPTED_MODEL,
        base_url=[s.base_url for s in servers],
        restart_policy=RestartPolicy(
            max_restarts=6, backoff_initial=0.02, intensity_restarts=10_000
        ),
        breaker_policy=BreakerPolicy(failure_threshold=3, probe_initial=0.02, probe_max=0.1),
    ) as m:
        mots = [m.submit(f"gen-{i}", model_options={ModelOption.STREAM: True}) for i in range(100)]
        refusing.refuse_connections(None)
        mots += [m.submit(f"gen-{i}") for i in range(100, 200)]
        restarted.stop()
        # the faults are seen before they end (a breaker may or may not open meanwhile: that
        # depends on how many attempts the routing sends to a failing host in a row)
        m.system.log.wait_for("failover", count=1, timeout=10)
        refusing.refuse_connections(0)
        back = ScriptedOllama(paced, models=(SCRIPTED_MODEL,), port=port).start()
        servers[2] = back
        mots += [m.submit(f"gen-{i}") for i in range(200, n)]
        completed, failed = 0, 0
        for mot in mots:
            try:
                assert mot.wait(timeout=60) == TEXT
                completed += 1
            except BackendError as exc:
                failed += 1
                assert mot.partial_value, f"failed without text: {exc!r}"
                assert "127.0.0.1" in str(exc)
        assert completed + failed == n and completed > n // 2
        records = refusing.requests + dropping.requests + restarted.requests + back.requests
        with_text = collections.Counter(tag(r) for r in records if r.tokens_sent > 0)
        assert max(with_text.values()) == 1, "a generation ran twice with text"
        assert failed == sum(
            1 for r in records if r.outcome in ("dropped", "server_stopped") and r.tokens_sent
        )
        assert m.system.live_thunks() == []
        failovers = m.system.log.events(event="failover")
        assert failovers and all(f["from_host"] != f["to_host"] for f in failovers)
        assert back.requests, "the restarted host got work again"
        print(f"completed={completed} failed={failed} failovers={len(failovers)}")
