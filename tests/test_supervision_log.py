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
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog

import mellea_actors
import mellea_actors.runtime.log as log_module
from mellea_actors import MelleaSession, start_session
from mellea_actors.backends import ModelOption
from mellea_actors.errors import BackendError
from mellea_actors.runtime.log import (
    EVENT_LEVELS,
    LOGGER_NAME,
    SupervisionLog,
    configure_output,
)
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

    def install(as_json: bool, level: int = logging.DEBUG) -> io.StringIO:
        buf = io.StringIO()
        handlers.append(configure_output(json=as_json, stream=buf, level=level))
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


# -- levels and fields on stdlib logging ------------------------------------------------------
# An emit call with a literal event name: ``emit("x"``, ``_emit("x", gen``, ``emit_child(``,
# ``_emit_worker(log, "x"``, ``_emit_breaker("x"`` …
EMIT_CALL = re.compile(r"emit\w*\(\s*(?:\w+,\s*)?\"(\w+)\"")


def emitted_event_names() -> set[str]:
    package = Path(mellea_actors.__file__).parent
    return {
        name
        for path in package.rglob("*.py")
        for name in EMIT_CALL.findall(path.read_text(encoding="utf-8"))
    }


def test_every_event_the_package_emits_has_a_level() -> None:
    found = emitted_event_names()
    assert len(found) >= 30, f"the scan finds too little to test anything: {sorted(found)}"
    assert {"actor_started", "generation_failed", "ray_worker_died", "host_state"} <= found
    missing = sorted(found - set(EVENT_LEVELS))
    assert not missing, f"add these events to EVENT_LEVELS in runtime/log.py: {missing}"
    stale = sorted(set(EVENT_LEVELS) - found)
    assert not stale, f"EVENT_LEVELS lists events nothing emits: {stale}"


def test_lifecycle_is_debug_failures_are_warning_or_error() -> None:
    for name in (
        "actor_started",
        "actor_stopped",
        "generation_started",
        "first_chunk",
        "generation_completed",
        "system_started",
    ):
        assert EVENT_LEVELS[name] == logging.DEBUG, name
    for name in (
        "generation_failed",
        "actor_crashed",
        "actor_restarted",
        "generator_restarted",
        "failover",
        "breaker_opened",
        "breaker_closed",
        "escalated",
        "verdict_fail",
    ):
        assert EVENT_LEVELS[name] >= logging.WARNING, name


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def handler() -> Iterator[ListHandler]:
    """A handler on the supervision logger (level restored after); records still propagate."""
    logger = logging.getLogger(LOGGER_NAME)
    saved = logger.level
    h = ListHandler()
    logger.addHandler(h)
    try:
        yield h
    finally:
        logger.removeHandler(h)
        logger.setLevel(saved)


def test_a_completed_instruct_logs_nothing_at_info(
    scripted: ScriptedOllama, scripted_session: MelleaSession, handler: ListHandler
) -> None:
    logging.getLogger(LOGGER_NAME).setLevel(logging.INFO)
    scripted.enqueue(Script.counting(3))
    rid = run_one(scripted_session, model_options=STREAM)
    assert [r.getMessage() for r in handler.records] == []
    # the ring buffer keeps every record, whatever the logger's level
    assert_order(
        names(scripted_session.system.log.events(thunk=rid)),
        ["actor_started", "generation_started", "generation_completed", "actor_stopped"],
    )


def test_a_failure_is_logged_at_warning_with_its_fields(
    scripted: ScriptedOllama, scripted_session: MelleaSession, handler: ListHandler
) -> None:
    logging.getLogger(LOGGER_NAME).setLevel(logging.WARNING)
    scripted.enqueue(Script.counting(5, error_after=2, error_message="scripted breakdown"))
    rid = run_one(scripted_session, model_options=STREAM)
    failed = [r for r in handler.records if r.getMessage() == "generation_failed"]
    assert len(failed) == 1
    record: Any = failed[0]
    assert record.levelno == logging.WARNING and record.name == LOGGER_NAME
    assert record.event == "generation_failed" and record.thunk == rid
    assert record.kind == "generator" and record.actor == f"generator-{rid}"
    assert "scripted breakdown" in record.reason and record.chunks == 2
    assert all(r.levelno >= logging.WARNING for r in handler.records)


def test_a_plain_stdlib_formatter_sees_the_fields(
    scripted: ScriptedOllama, scripted_session: MelleaSession, handler: ListHandler
) -> None:
    logging.getLogger(LOGGER_NAME).setLevel(logging.DEBUG)
    scripted.enqueue(Script.counting(3))
    rid = run_one(scripted_session)
    formatter = logging.Formatter("%(levelname)s %(message)s thunk=%(thunk)s kind=%(kind)s")
    lines = [formatter.format(r) for r in handler.records]
    assert f"DEBUG generation_completed thunk={rid} kind=generator" in lines
    assert f"DEBUG actor_stopped thunk={rid} kind=thunk" in lines


def test_a_key_logging_reserves_gets_an_underscore(handler: ListHandler) -> None:
    logging.getLogger(LOGGER_NAME).setLevel(logging.DEBUG)
    log = SupervisionLog()
    log.emit("tick", actor="a", kind="test", name="mine", module="m", message="hi", n=1)
    record: Any = handler.records[-1]
    assert record.name == LOGGER_NAME and record.getMessage() == "tick"
    assert (record.name_, record.module_, record.message_, record.n) == ("mine", "m", "hi", 1)
    assert log.events()[-1]["name"] == "mine"  # the ring buffer keeps the record as emitted


def test_configure_output_at_warning_prints_failures_only(
    scripted: ScriptedOllama, captured: Any
) -> None:
    buf = captured(True, logging.WARNING)
    with start_session(model_id="scripted", base_url=scripted.base_url) as session:
        scripted.enqueue(Script.counting(3), Script.counting(5, error_after=1))
        run_one(session, model_options=STREAM)
        bad = run_one(session, model_options=STREAM)
    printed = [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]
    assert [p["event"] for p in printed] == ["generation_failed"]
    assert printed[0]["thunk"] == bad and printed[0]["level"] == "warning"


# -- the caller's structlog contextvars, kept by thunk id ----------------------------------------
def test_a_captured_context_is_merged_into_that_thunks_records_only(handler: ListHandler) -> None:
    logging.getLogger(LOGGER_NAME).setLevel(logging.DEBUG)
    log = SupervisionLog()
    with structlog.contextvars.bound_contextvars(request_id="r-1", user="ann"):
        log.capture_context("t1")
    log.capture_context("t2")  # nothing bound: nothing kept
    assert list(log._contexts) == ["t1"]
    with structlog.contextvars.bound_contextvars(request_id="ambient"):  # never merged
        log.emit("generation_started", actor="g", kind="generator", thunk="t1")
        log.emit("generation_started", actor="g", kind="generator", thunk="t2")
        log.emit("host_state", actor="h", kind="host")
        log.emit("tick", actor="a", kind="test", thunk="t1", user="own")  # own key wins
    keys = ("thunk", "request_id", "user")
    got = [tuple(getattr(r, k, None) for k in keys) for r in handler.records]
    assert got == [
        ("t1", "r-1", "ann"),
        ("t2", None, None),
        (None, None, None),
        ("t1", "r-1", "own"),
    ]
    assert "request_id" not in log.events()[0]  # the ring buffer holds the runtime's fields


def test_a_captured_context_lingers_after_its_thunk_ends_then_goes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(log_module, "_LINGER", 2)
    log = SupervisionLog()
    with structlog.contextvars.bound_contextvars(request_id="r"):
        for t in ("t1", "t2", "t3"):
            log.capture_context(t)
    log.emit("actor_stopped", actor="x", kind="validator", thunk="t1")  # not the thunk actor
    log.emit("actor_stopped", actor="thunk-t1", kind="thunk", thunk="t1")
    log.emit("actor_crashed", actor="thunk-t2", kind="thunk", thunk="t2")
    log.emit("actor_stopped", actor="thunk-t2", kind="thunk", thunk="t2")  # counted once
    assert list(log._contexts) == ["t1", "t2", "t3"]  # ended ones linger for late records
    log.emit("actor_stopped", actor="thunk-t3", kind="thunk", thunk="t3")
    assert list(log._contexts) == ["t2", "t3"]


def test_the_number_of_captured_contexts_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(log_module, "_MAX_CONTEXTS", 3)
    log = SupervisionLog()
    with structlog.contextvars.bound_contextvars(request_id="r"):
        for i in range(5):
            log.capture_context(f"t{i}")
    assert list(log._contexts) == ["t2", "t3", "t4"]
