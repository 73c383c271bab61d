"""The live view (mellea_actors.observe): the page in a real headless Chromium, the JSON API,
``/metrics``, the bind and token rules, ``top``, and that closing leaves nothing behind.

Against the scripted Ollama-protocol server. Waits are on log records and conditions, each
bounded; nothing sleeps to let things happen.

``MELLEA_ACTORS_UPDATE_SCREENSHOT=1 pytest tests/test_live_view.py -k screenshot`` regenerates
``docs/live_view.png`` (otherwise the screenshot goes to a temporary folder and is only checked).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mellea_actors import MelleaSession, start_session
from mellea_actors.backends import ModelOption
from mellea_actors.core.backend import Backend
from mellea_actors.core.base import Context
from mellea_actors.core.requirement import PartialValidationResult, Requirement, ValidationResult
from mellea_actors.observe import LiveView, check_bind, parse_dashboard_env
from mellea_actors.observe.live_state import LiveState
from mellea_actors.observe.top import render, run_top
from mellea_actors.stdlib.components import Instruction
from mellea_actors.stdlib.streaming import StreamChunkingResult, stream_with_chunking
from mellea_actors.testing import Script, ScriptedOllama
from tests.chromium_helper import dump_dom, ensure_chromium, screenshot

from .process_state import open_sockets

STREAM = {ModelOption.STREAM: True}
WAIT = 30.0  # bound of every wait on the runtime
ROOT = Path(__file__).resolve().parent.parent
#: long enough to outlive two Chromium runs on a busy machine (the session's close ends it)
LONG = Script(tokens=[f"w{i} " for i in range(6000)], delay=0.02)


# -- helpers ----------------------------------------------------------------------------------
class Passes(Requirement):
    """Says "pass" to every chunk (or "fail" from chunk ``fail_at`` on)."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__("passes" if fail_at is None else f"fails from chunk {fail_at}")
        self.fail_at = fail_at
        self.count = 0

    async def stream_validate(
        self, chunk: str, *, backend: Backend, ctx: Context
    ) -> PartialValidationResult:
        index = self.count
        self.count += 1
        if self.fail_at is not None and index >= self.fail_at:
            return PartialValidationResult("fail", reason=f"chunk {index} is not allowed")
        return PartialValidationResult("pass")

    async def validate(
        self, backend: Backend, ctx: Context, *, format: Any = None, model_options: Any = None
    ) -> ValidationResult:
        return ValidationResult(True)


def http(
    url: str, *, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def get_json(url: str, **kwargs: Any) -> Any:
    status, _, body = http(url, **kwargs)
    assert status == 200, (status, body[:500])
    return json.loads(body)


def live_view_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if "live-view" in t.name and t.is_alive()]


def wait_records(session: MelleaSession, event: str, count: int) -> None:
    session.system.log.wait_for(event, count=count, timeout=WAIT)


async def await_records(session: MelleaSession, event: str, count: int) -> None:
    await asyncio.to_thread(wait_records, session, event, count)


class _Dom(HTMLParser):
    """The live view's data attributes in a dumped DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.streams: list[dict[str, str]] = []
        self.actors: list[dict[str, str]] = []
        self.records: list[dict[str, str]] = []
        self.updates = 0
        self.system = ""
        self._in_system = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        classes = a.get("class", "").split()
        if tag == "tr" and "stream" in classes:
            self.streams.append(a)
        elif tag == "tr" and "record" in classes:
            self.records.append(a)
        elif tag == "li" and "actor" in classes:
            self.actors.append(a)
        elif a.get("id") == "updates":
            self.updates = int(a.get("data-updates") or 0)
        self._in_system = a.get("id") == "system"

    def handle_data(self, data: str) -> None:
        if self._in_system:
            self.system += data
            self._in_system = False


def parse_dom(html: str) -> _Dom:
    dom = _Dom()
    dom.feed(html)
    return dom


@pytest.fixture(scope="session")
def chromium() -> str:
    return ensure_chromium()


@pytest.fixture
def session(scripted: ScriptedOllama) -> Iterator[MelleaSession]:
    with start_session(model_id="scripted", base_url=scripted.base_url) as m:
        yield m


async def start_generations(session: MelleaSession, n: int) -> list[Any]:
    return [await session.ainstruct(f"prompt {i}", model_options=STREAM) for i in range(n)]


async def start_streams(
    session: MelleaSession, n: int, *, fail_at: int | None = None
) -> list[StreamChunkingResult]:
    return [
        await stream_with_chunking(
            Instruction(f"stream {i}"),
            session.backend,
            session.ctx,
            requirements=[Passes(fail_at if i == 0 else None)],
            chunking="word",
        )
        for i in range(n)
    ]


# -- the page, in a real browser --------------------------------------------------------------
@pytest.mark.timeout(400)
async def test_the_page_shows_streams_and_actors_and_updates_in_chromium(
    scripted: ScriptedOllama, session: MelleaSession, chromium: str
) -> None:
    scripted.set_script(LONG)
    view = session.system.serve()
    thunks = await start_generations(session, 15)
    streams = await start_streams(session, 5)
    await await_records(session, "first_chunk", 20)
    first = parse_dom(await asyncio.to_thread(dump_dom, chromium, view.url))
    second = parse_dom(await asyncio.to_thread(dump_dom, chromium, view.url))

    for dom in (first, second):
        assert dom.system.strip() == session.system.id
        running = [s for s in dom.streams if s["data-state"] == "streaming"]
        assert len(running) >= 20, [s.get("data-state") for s in dom.streams]
        kinds = [a["data-kind"] for a in dom.actors]
        assert kinds.count("thunk") >= 20, kinds
        assert kinds.count("stream") == 5 and kinds.count("validator") == 5, kinds
        assert {"system", "root_supervisor", "generation_supervisor"} <= set(kinds)
        assert dom.records, "the supervision log's tail is shown"
        assert dom.updates >= 2, "the page polls: several updates within one dump"
    ids = {t.request_id for t in thunks} | {r.request_id for r in streams if r.request_id}
    shown = {s["data-thunk"] for s in second.streams}
    assert {t.request_id for t in thunks} <= shown
    tokens = [
        {s["data-thunk"]: int(s["data-tokens"]) for s in dom.streams if s["data-thunk"] in ids}
        for dom in (first, second)
    ]
    assert sum(tokens[1].values()) > sum(tokens[0].values()), "the streams' progress advanced"


@pytest.mark.timeout(300)
async def test_screenshot_of_the_page(
    scripted: ScriptedOllama, session: MelleaSession, chromium: str, tmp_path: Path
) -> None:
    """A screenshot of the page (docs/live_view.png with MELLEA_ACTORS_UPDATE_SCREENSHOT=1)."""
    scripted.set_script(LONG)
    for _ in range(4):
        scripted.enqueue(Script(tokens=[f"t{i} " for i in range(40)], delay=0.005))
    scripted.enqueue(
        Script(tokens=LONG.tokens, delay=0.01, error_after=12, error_message="out of memory")
    )
    view = session.system.serve()
    done = await start_generations(session, 5)
    await asyncio.gather(*(t.avalue() for t in done[:4]))
    await await_records(session, "generation_failed", 1)
    await start_generations(session, 10)
    await start_streams(session, 4, fail_at=6)
    await await_records(session, "verdict_fail", 1)
    await await_records(session, "first_chunk", 19)
    update = os.environ.get("MELLEA_ACTORS_UPDATE_SCREENSHOT") == "1"
    target = ROOT / "docs" / "live_view.png" if update else tmp_path / "live_view.png"
    await asyncio.to_thread(screenshot, chromium, view.url, target, size=(1440, 1800))
    data = target.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


@pytest.mark.timeout(300)
async def test_the_page_works_with_a_token_in_chromium(
    scripted: ScriptedOllama, session: MelleaSession, chromium: str
) -> None:
    scripted.set_script(LONG)
    view = session.system.serve(token="a token/with?odd&chars")
    await start_generations(session, 2)
    await await_records(session, "first_chunk", 2)
    page = view.url_with_token
    assert page == view.url + "?token=a%20token%2Fwith%3Fodd%26chars"
    status, _, body = http(page)
    assert status == 200 and b"live.js?token=a%20token%2Fwith%3Fodd%26chars" in body
    html = await asyncio.to_thread(dump_dom, chromium, page)
    dom = parse_dom(html)
    assert dom.updates >= 1 and len(dom.streams) == 2, html[-2000:]
    assert 'class="badge live"' in html  # the API answered the page (its token was passed on)
    refused = await asyncio.to_thread(dump_dom, chromium, view.url)
    assert parse_dom(refused).updates == 0 and "a token is required" in refused


# -- /metrics ----------------------------------------------------------------------------------
def metrics_of(view: LiveView) -> dict[str, Any]:
    status, headers, body = http(view.url + "metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def sample(families: dict[str, Any], name: str, **labels: str) -> float:
    family = families[name]
    wanted = family.name + ("_total" if family.type == "counter" else "")
    for s in family.samples:
        if s.name == wanted and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    raise AssertionError(f"no sample {name}{labels}: {family.samples}")


async def test_metrics_parse_and_their_counters_match_the_log(
    scripted: ScriptedOllama, session: MelleaSession
) -> None:
    view = session.system.serve()
    scripted.set_script(Script(tokens=LONG.tokens, delay=0.01, error_after=5, error_message="boom"))
    await start_generations(session, 1)
    await await_records(session, "generation_failed", 1)
    scripted.set_script(LONG)
    (cancelled,) = await start_generations(session, 1)
    await await_records(session, "first_chunk", 2)

    during = metrics_of(view)
    assert sample(during, "mellea_actors_active_streams", kind="generation") == 1
    assert sample(during, "mellea_actors_tokens") >= 6

    session.system.cancel(cancelled.request_id, "the test cancels it")
    await await_records(session, "generation_cancelled", 1)
    scripted.set_script(Script(tokens=[f"m{i} " for i in range(25)], delay=0.002))
    completed = await start_generations(session, 8)
    await asyncio.gather(*(t.avalue() for t in completed))

    families = metrics_of(view)
    log = session.system.log
    for outcome in ("completed", "failed", "cancelled"):
        records = log.events(event=f"generation_{outcome}")
        assert sample(families, "mellea_actors_generations", outcome=outcome) == len(records)
    assert sample(families, "mellea_actors_generations", outcome="completed") == 8
    started = log.events(event="generation_started")
    assert sample(families, "mellea_actors_generation_attempts") == len(started) == 10
    ended = log.events(event=["generation_completed", "generation_failed", "generation_cancelled"])
    assert sample(families, "mellea_actors_tokens") == sum(r["chunks"] for r in ended)
    ttfc = families["mellea_actors_time_to_first_chunk_seconds"]
    count = next(s.value for s in ttfc.samples if s.name.endswith("_count"))
    assert count == len(log.events(event="first_chunk")) == 10
    delay = families["mellea_actors_chunk_delay_seconds"]
    with_gaps = [r for r in ended if r["chunks"] >= 2]
    assert next(s.value for s in delay.samples if s.name.endswith("_count")) == len(with_gaps)
    error_type = log.events(event="generation_failed")[0]["error_type"]
    assert sample(families, "mellea_actors_errors", event="generation_failed", kind=error_type) == 1
    assert sample(families, "mellea_actors_restarts", kind="generator") == len(
        log.events(event="generator_restarted")
    )
    assert sample(families, "mellea_actors_active_streams", kind="generation") == 0
    assert sample(families, "mellea_actors_breaker_open", host=started[0]["host"]) == 0
    assert sample(families, "mellea_actors_log_records", event="first_chunk") == 10
    assert sample(families, "mellea_actors_log_records_missed") == 0
    # a per-system registry: a second system's view counts only its own generations
    with start_session(model_id="scripted", base_url=scripted.base_url) as other:
        other_view = other.system.serve()
        await (await other.ainstruct("one", model_options=STREAM)).avalue()
        assert sample(metrics_of(other_view), "mellea_actors_generations", outcome="completed") == 1


def test_metrics_follow_breakers_restarts_and_a_ring_that_turned_over() -> None:
    """LiveState on a fake source: the breaker gauge, restarts, and records the ring lost."""

    class Source:
        id = "system-fake"
        ring: list[dict[str, Any]] = []

        def tree(self) -> dict[str, Any]:
            return {"id": self.id, "kind": "system", "children": []}

        def records(self) -> list[dict[str, Any]]:
            return list(self.ring)

        def streams(self) -> list[dict[str, Any]]:
            return []

        def hosts(self) -> list[dict[str, Any]]:
            return []

    def rec(event: str, **fields: Any) -> dict[str, Any]:
        return {"event": event, "ts": time.time(), "actor": "a", "kind": "k", "thunk": None,
                "reason": None, **fields}  # fmt: skip

    source = Source()
    state = LiveState(source)
    source.ring = [rec("breaker_opened", host="h1"), rec("actor_restarted", kind="gs")]
    assert state.ingest() == 2
    assert state.ingest() == 0  # nothing new
    families = {
        f.name: f for f in text_string_to_metric_families(state.metrics.exposition().decode())
    }
    assert sample(families, "mellea_actors_breaker_open", host="h1") == 1
    assert sample(families, "mellea_actors_restarts", kind="gs") == 1
    source.ring.append(rec("breaker_closed", host="h1"))
    assert state.ingest() == 1
    # the ring turned over: none of the records read before is left in it
    source.ring = [rec("first_chunk", latency=0.01), rec("first_chunk", latency=0.02)]
    assert state.ingest() == 2
    families = {
        f.name: f for f in text_string_to_metric_families(state.metrics.exposition().decode())
    }
    assert sample(families, "mellea_actors_breaker_open", host="h1") == 0
    assert sample(families, "mellea_actors_log_records_missed") == 1
    assert sample(families, "mellea_actors_log_records", event="first_chunk") == 2
    events, last = state.events(event="first_chunk")
    assert [e["seq"] for e in events] == [4, 5] and last == 5


# -- the JSON API ------------------------------------------------------------------------------
async def test_api_tree_and_events_shape_and_filters(
    scripted: ScriptedOllama, session: MelleaSession
) -> None:
    scripted.set_script(Script(tokens=["a ", "b ", "c "], delay=0.001))
    view = session.system.serve()
    done = await start_generations(session, 3)
    await asyncio.gather(*(t.avalue() for t in done))
    scripted.set_script(LONG)
    running = await start_generations(session, 2)
    streams = await start_streams(session, 1)
    await await_records(session, "first_chunk", 6)

    tree = get_json(view.url + "api/tree")
    assert tree["id"] == session.system.id and tree["kind"] == "system"
    root = tree["children"][0]
    assert root["kind"] == "root_supervisor" and root["state"] == "alive"
    supervisor = root["children"][0]
    assert supervisor["kind"] == "generation_supervisor" and supervisor["restarts"] == 0
    thunks = {n["id"]: n for n in supervisor["children"] if n["kind"] == "thunk"}
    for mot in running:
        node = thunks[f"thunk-{mot.request_id}"]
        assert node["state"] == "streaming" and node["host"] == scripted.base_url.rstrip("/")
        assert node["restarts"] == 0 and node["children"] == []
    stream_nodes = [n for n in tree["children"] if n["kind"] == "stream"]
    assert [n["id"] for n in stream_nodes] == [f"stream-{streams[0].request_id}"]
    assert [c["kind"] for c in stream_nodes[0]["children"]] == ["validator"]

    answer = get_json(view.url + "api/events")
    events, seq = answer["events"], answer["seq"]
    assert seq == events[-1]["seq"] and [e["seq"] for e in events] == sorted(
        e["seq"] for e in events
    )
    assert {"seq", "event", "ts", "actor", "kind", "parent", "thunk", "reason"} <= set(events[0])
    assert events[0]["event"] == "system_started"

    rid = done[0].request_id
    by_thunk = get_json(view.url + f"api/events?thunk={rid}")["events"]
    assert by_thunk and {e["thunk"] for e in by_thunk} == {rid}
    assert [e["event"] for e in by_thunk] == [
        e["event"] for e in session.system.log.events(thunk=rid)
    ][: len(by_thunk)]
    by_actor = get_json(view.url + f"api/events?actor=thunk-{rid}")["events"]
    assert by_actor and {e["actor"] for e in by_actor} == {f"thunk-{rid}"}
    prefix = get_json(view.url + "api/events?actor=generator-*&event=first_chunk")["events"]
    assert len(prefix) == 6 and all(e["actor"].startswith("generator-") for e in prefix)
    two = get_json(view.url + "api/events?event=generation_completed,first_chunk&limit=2")
    assert len(two["events"]) == 2 and {e["event"] for e in two["events"]} <= {
        "generation_completed",
        "first_chunk",
    }
    later = get_json(view.url + f"api/events?since={seq}")
    assert all(e["seq"] > seq for e in later["events"])
    assert get_json(view.url + f"api/events?since={later['seq']}&event=nothing")["events"] == []

    streams_answer = get_json(view.url + "api/streams")
    rows = {r["thunk"]: r for r in streams_answer["streams"]}
    assert rows[done[0].request_id]["outcome"] == "completed"
    assert rows[done[0].request_id]["tokens"] == 3
    live = rows[running[0].request_id]
    assert live["state"] == "streaming" and live["tokens"] >= 1 and live["age_s"] >= 0
    assert rows[streams[0].request_id]["verdicts"]["validators"] == 1

    state = get_json(view.url + "api/state?limit=5")
    assert {"system", "tree", "streams", "hosts", "breakers", "events", "seq", "updates"} <= set(
        state
    )
    assert len(state["events"]) == 5

    assert http(view.url + "api/events?limit=zero")[0] == 400
    assert http(view.url + "api/events?limit=0")[0] == 400
    assert http(view.url + "api/nothing")[0] == 404
    assert http(view.url + "api/tree", method="POST")[0] == 405
    status, headers, body = http(view.url)
    assert (
        status == 200
        and b"live.js" in body
        and "script-src 'self'" in headers["Content-Security-Policy"]
    )
    for name in ("live.js", "live.css"):
        assert http(view.url + f"static/{name}")[0] == 200
    assert http(view.url + "static/../live_server.py")[0] == 404


# -- where it listens, and who may read it -------------------------------------------------------
def test_a_non_loopback_bind_needs_an_explicit_host_and_a_token(session: MelleaSession) -> None:
    sockets, threads = open_sockets(), live_view_threads()
    with pytest.raises(ValueError, match="without a token"):
        session.system.serve(host="0.0.0.0")
    with pytest.raises(ValueError, match="not a loopback address"):
        check_bind("0.0.0.0", 0, "secret", explicit=False)
    with pytest.raises(ValueError, match="port"):
        session.system.serve(port=70000)
    with pytest.raises(ValueError, match="token"):
        session.system.serve(token="")
    assert session.system.live_view is None
    assert open_sockets() == sockets and live_view_threads() == threads  # nothing was bound

    view = session.system.serve(host="0.0.0.0", token="s3cret")
    base = f"http://127.0.0.1:{view.port}/"
    assert view.url == base and view.url_with_token == base + "?token=s3cret"
    for path in ("", "api/tree", "api/events", "metrics"):
        status, headers, _ = http(base + path)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        assert http(base + path, headers={"Authorization": "Bearer wrong"})[0] == 401
        assert http(base + path, headers={"Authorization": "Bearer s3cret"})[0] == 200
        sep = "&" if "?" in path else "?"
        assert http(base + path + sep + "token=s3cret")[0] == 200
        assert http(base + path + sep + "token=s3cre")[0] == 401
    with pytest.raises(RuntimeError, match="already serves"):
        session.system.serve()


def test_a_loopback_view_refuses_other_host_names_and_honours_a_token(
    session: MelleaSession,
) -> None:
    view = session.system.serve(token="tok")
    assert http(view.url + "api/tree", headers={"Authorization": "Bearer tok"})[0] == 200
    assert http(view.url + "api/tree")[0] == 401
    # a web page reaching the view by DNS rebinding sends its own host name
    status, _, body = http(
        view.url + "api/tree", headers={"Host": "evil.example", "Authorization": "Bearer tok"}
    )
    assert status == 403 and b"loopback" in body
    assert http(view.url + "?token=tok", headers={"Host": f"localhost:{view.port}"})[0] == 200


# -- the environment variable --------------------------------------------------------------------
def test_the_environment_variable_opens_a_loopback_view(
    scripted: ScriptedOllama, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert parse_dashboard_env("127.0.0.1:8765") == ("127.0.0.1", 8765)
    assert parse_dashboard_env("[::1]:0") == ("::1", 0)
    assert parse_dashboard_env("0") == ("127.0.0.1", 0)
    monkeypatch.setenv("MELLEA_ACTORS_DASHBOARD", "127.0.0.1:0")
    with start_session(model_id="scripted", base_url=scripted.base_url) as m:
        view = m.system.live_view
        assert view is not None and view.url.startswith("http://127.0.0.1:")
        assert get_json(view.url + "api/tree")["id"] == m.system.id
    assert view.closed and m.system.live_view is None

    threads = live_view_threads()
    for bad, problem in (
        ("0.0.0.0:8765", "not a loopback address"),
        ("127.0.0.1:port", "HOST:PORT"),
        ("127.0.0.1:99999", "0..65535"),
    ):
        monkeypatch.setenv("MELLEA_ACTORS_DASHBOARD", bad)
        with pytest.raises(ValueError, match=problem):
            start_session(model_id="scripted", base_url=scripted.base_url)
    assert live_view_threads() == threads


def test_a_taken_port_from_the_environment_warns_and_the_session_runs(
    scripted: ScriptedOllama, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setenv("MELLEA_ACTORS_DASHBOARD", f"127.0.0.1:{taken.getsockname()[1]}")
        with (
            pytest.warns(RuntimeWarning, match="could not listen"),
            start_session(model_id="scripted", base_url=scripted.base_url) as m,
        ):
            assert m.system.live_view is None
            assert m.instruct("x").value


# -- closing --------------------------------------------------------------------------------------
def test_closing_the_system_stops_the_view_and_leaves_no_thread_or_socket(
    scripted: ScriptedOllama,
) -> None:
    with start_session(model_id="scripted", base_url=scripted.base_url) as warm:
        warm.instruct("warm up")  # imports, first connections
        warm.system.serve().close()
    threads, sockets = live_view_threads(), open_sockets()
    m = start_session(model_id="scripted", base_url=scripted.base_url)
    view = m.system.serve()
    assert view.thread.is_alive() and view.thread.name.startswith("mellea-actors-live-view")
    assert get_json(view.url + "api/tree")["id"] == m.system.id
    idle = socket.create_connection(("127.0.0.1", view.port))  # connected, says nothing
    idle.settimeout(10)
    try:
        started = time.monotonic()
        m.close()
        assert time.monotonic() - started < 5.0, "an idle client must not hold the close up"
        with contextlib.suppress(ConnectionResetError):  # closed before it was accepted
            assert idle.recv(1) == b""  # the server shut the connection
    finally:
        idle.close()
    assert view.closed and not view.thread.is_alive()
    assert live_view_threads() == threads
    assert open_sockets() <= sockets
    with pytest.raises(urllib.error.URLError):
        urllib.request.build_opener(urllib.request.ProxyHandler({})).open(view.url, timeout=5)
    view.close()  # idempotent


# -- top ----------------------------------------------------------------------------------------
async def test_top_prints_the_same_view_once(
    scripted: ScriptedOllama, session: MelleaSession
) -> None:
    scripted.set_script(LONG)
    view = session.system.serve(token="t0p")
    running = await start_generations(session, 3)
    await await_records(session, "first_chunk", 3)
    out = io.StringIO()
    status = await asyncio.to_thread(run_top, view.url_with_token, interval=1.0, once=True, out=out)
    text = out.getvalue()
    assert status == 0, text
    assert session.system.id in text and "STREAMS" in text and "ACTORS" in text and "LOG" in text
    for mot in running:
        assert mot.request_id in text and f"thunk-{mot.request_id}" in text
    assert "streaming" in text and "generation_started" in text
    assert "\x1b[" not in text  # once: no screen clearing

    refused = io.StringIO()
    assert await asyncio.to_thread(run_top, view.url, interval=1.0, once=True, out=refused) == 1
    assert "401" in refused.getvalue()
    view.close()
    gone = io.StringIO()
    assert await asyncio.to_thread(run_top, view.url, interval=1.0, once=True, out=gone) == 1
    assert "cannot read the live view" in gone.getvalue()


def test_top_renders_an_empty_state() -> None:
    frame = render({"system": "system-x", "streams": [], "tree": None, "events": [], "seq": 0})
    assert "system-x" in frame and "STREAMS" in frame
