"""The supervision log (SPEC §7, issue 5 part 3): records, order, filters, console and JSON output.

Against the scripted Ollama-protocol server. The records come from
``session.system.log`` (a ring buffer, no output parsing); the printed forms from
:func:`mellea_actors.runtime.log.configure_output`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from mellea_actors import MelleaSession, start_session
from mellea_actors.backends import ModelOption
from mellea_actors.errors import BackendError
from mellea_actors.runtime.log import LOGGER_NAME, SupervisionLog, configure_output
from mellea_actors.testing import Script, ScriptedOllama

RECORD_KEYS = ("event", "ts", "actor", "kind", "parent", "thunk", "reason")
STREAM = {ModelOption.STREAM: True}


def run_one(session: MelleaSession, **kwargs: Any) -> str:
    """Submit, wait for the end and for the thunk actor's stop record; return the request id."""
    thunk = session.submit("Go.", **kwargs)
    with contextlib.suppress(BackendError):  # failures are what some tests look at
        thunk.wait(timeout=5)
    rid = thunk.request_id
    assert rid is not None
    session.system.log.wait_for("actor_stopped", thunk=rid, timeout=5)
    return rid


def names(records: Sequence[dict[str, Any]]) -> list[str]:
    return [r["event"] for r in records]


def assert_order(events: Sequence[str], expected: Sequence[str]) -> None:
    """Each expected event occurs exactly once, in this order (others may come between)."""
    for name in expected:
        assert events.count(name) == 1, f"{name!r} occurs {events.count(name)} times in {events}"
    positions = [events.index(name) for name in expected]
    assert positions == sorted(positions), f"wanted {list(expected)} in order, got {events}"


@pytest.fixture
def captured() -> Iterator[Any]:
    """``configure_output`` into a StringIO; the handler and logger settings are restored after."""
    logger = logging.getLogger(LOGGER_NAME)
    saved = (logger.level, logger.propagate)
    handlers: list[logging.Handler] = []

    def install(as_json: bool) -> io.StringIO:
        buf = io.StringIO()
        handlers.append(configure_output(json=as_json, stream=buf))
        return buf

    try:
        yield install
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


# -- the records ------------------------------------------------------------------------------
def test_events_of_one_completed_thunk_come_back_in_order(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script.counting(5, delay=0.005))
    started = time.time()
    rid = run_one(scripted_session, model_options=STREAM)
    records = scripted_session.system.log.events(thunk=rid)
    assert_order(
        names(records),
        [
            "actor_started",
            "generation_started",
            "first_chunk",
            "generation_completed",
            "actor_stopped",
        ],
    )
    assert all(r["thunk"] == rid for r in records)
    assert all(started - 1 <= r["ts"] <= time.time() + 1 for r in records)
    completed = records[names(records).index("generation_completed")]
    assert completed["chunks"] == 5


def test_events_of_a_cancelled_thunk_say_why(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script.counting(500, delay=0.01))
    thunk = scripted_session.submit("Go on and on.", model_options=STREAM)
    for _ in thunk.iter_chunks(timeout=5):
        thunk.cancel_sync("enough for this test", timeout=5)
    rid = thunk.request_id
    scripted_session.system.log.wait_for("actor_stopped", thunk=rid, timeout=5)
    records = scripted_session.system.log.events(thunk=rid)
    assert_order(
        names(records),
        ["generation_started", "first_chunk", "generation_cancelled", "actor_stopped"],
    )
    assert "generation_completed" not in names(records)
    cancelled = records[names(records).index("generation_cancelled")]
    assert cancelled["reason"] == "enough for this test"


def test_events_of_a_failed_thunk_say_why(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script.counting(5, error_after=2, error_message="scripted breakdown"))
    rid = run_one(scripted_session, model_options=STREAM)
    records = scripted_session.system.log.events(thunk=rid)
    assert_order(
        names(records),
        ["generation_started", "first_chunk", "generation_failed", "actor_stopped"],
    )
    failed = records[names(records).index("generation_failed")]
    assert isinstance(failed["reason"], str) and "scripted breakdown" in failed["reason"]


def test_every_record_has_the_common_keys(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script.counting(3), Script.counting(5, error_after=1))
    run_one(scripted_session)
    run_one(scripted_session, model_options=STREAM)
    records = scripted_session.system.log.events()
    assert len(records) >= 10
    for record in records:
        missing = [key for key in RECORD_KEYS if key not in record]
        assert not missing, f"{record} lacks {missing}"
        assert isinstance(record["event"], str) and isinstance(record["ts"], float)
        assert isinstance(record["actor"], str) and isinstance(record["kind"], str)
        for key in ("parent", "thunk", "reason"):
            assert record[key] is None or isinstance(record[key], str), (key, record)
    # generation records name their thunk and their parent
    for record in records:
        if record["event"].startswith("generation_") or record["event"] == "first_chunk":
            assert record["thunk"] and record["parent"], record


def test_filter_by_thunk_by_actor_by_event_and_limit(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted.enqueue(Script.counting(3), Script.counting(4))
    log = scripted_session.system.log
    a = run_one(scripted_session)
    b = run_one(scripted_session)

    of_a, of_b = log.events(thunk=a), log.events(thunk=b)
    assert of_a and of_b
    assert {r["thunk"] for r in of_a} == {a} and {r["thunk"] for r in of_b} == {b}
    assert "generation_completed" in names(of_a) and "generation_completed" in names(of_b)

    # the thunk actor of a: its own records only
    thunk_actor = next(r["actor"] for r in of_a if r["kind"] == "thunk")
    own = log.events(actor=thunk_actor)
    assert names(own) == ["actor_started", "actor_stopped"]
    assert all(r["actor"] == thunk_actor for r in own)
    # the generation supervisor is the parent of the generator and of the thunk actor
    parent = next(r["parent"] for r in of_a if r["event"] == "generation_started")
    assert "actor_started" in names(log.events(actor=parent))
    assert own[0]["parent"] == parent

    completed = log.events(event="generation_completed")
    assert [r["thunk"] for r in completed] == [a, b]
    assert [r["thunk"] for r in log.events(event="generation_completed", limit=1)] == [b]
    assert log.events(thunk=a, event={"first_chunk", "generation_completed"}) == [
        r for r in of_a if r["event"] in {"first_chunk", "generation_completed"}
    ]
    assert log.events(thunk="no-such-thunk") == []


def test_the_ring_buffer_is_bounded() -> None:
    log = SupervisionLog(capacity=5)
    for i in range(12):
        log.emit("tick", actor=f"a{i}", kind="test", reason=str(i))
    records = log.events()
    assert [r["reason"] for r in records] == ["7", "8", "9", "10", "11"]
    with pytest.raises(TimeoutError):
        log.wait_for("tick", actor="a0", timeout=0.01)  # evicted


# -- printed output -----------------------------------------------------------------------------
def test_json_output_is_one_parsable_object_per_line(
    scripted: ScriptedOllama, captured: Any
) -> None:
    buf = captured(True)
    with start_session(model_id="scripted", base_url=scripted.base_url) as session:
        rid = run_one(session, model_options=STREAM)
        log = session.system.log
    lines = [line for line in buf.getvalue().splitlines() if line.strip()]
    records = log.events()
    assert len(lines) == len(records)  # every record printed once, nothing else
    by_key = {(r["event"], r["actor"], r["ts"]): r for r in records}
    for line in lines:
        parsed = json.loads(line)
        assert isinstance(parsed, dict)
        for key in ("event", "ts", "actor", "kind"):
            assert key in parsed, f"{key!r} missing from {line}"
        record = by_key[(parsed["event"], parsed["actor"], parsed["ts"])]
        for key in RECORD_KEYS:  # parent/thunk/reason: equal when present (null may be omitted)
            assert parsed.get(key) == record[key], (key, line)
    printed = [json.loads(line) for line in lines]
    assert_order(
        [p["event"] for p in printed if p.get("thunk") == rid],
        ["generation_started", "first_chunk", "generation_completed", "actor_stopped"],
    )


def test_console_output_is_human_readable(scripted: ScriptedOllama, captured: Any) -> None:
    buf = captured(False)
    with start_session(model_id="scripted", base_url=scripted.base_url) as session:
        rid = run_one(session)
    text = buf.getvalue()
    lines = text.splitlines()
    completed = [line for line in lines if "generation_completed" in line]
    assert len(completed) == 1
    assert rid in completed[0]
    assert not completed[0].lstrip().startswith("{")  # not JSON
    with pytest.raises(json.JSONDecodeError):
        json.loads(completed[0])
    assert any("system_stopped" in line for line in lines)


def test_output_is_silent_until_configured() -> None:
    """A fresh process that never calls configure_output prints no supervision record."""
    code = (
        "from mellea_actors import start_session\n"
        "from mellea_actors.testing import ScriptedOllama\n"
        "with ScriptedOllama() as server:\n"
        "    with start_session(model_id='scripted', base_url=server.base_url) as m:\n"
        "        t = m.submit('Go.')\n"
        "        t.wait(timeout=5)\n"
        "        assert m.system.log.events(event='generation_completed')\n"
        "        print('ok')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "ok\n"
    assert proc.stderr == ""
