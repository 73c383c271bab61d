"""The supervision log in an application's own structlog + stdlib logging set-up.

The application configures structlog as its docs recommend for JSON lines (a stdlib handler
with ``structlog.stdlib.ProcessorFormatter`` and ``JSONRenderer``; ``merge_contextvars`` and
``ExtraAdder`` in the chain) and binds a request id with ``bind_contextvars`` per request. Our
records must arrive as fields (``event`` is the event name; ``thunk``, ``actor``, ``kind``… are
keys), and every record of a request's generation must carry that request's id — also those
emitted on the runtime's loop thread — and no other request's. Against the scripted
Ollama-protocol server.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from mellea_actors import start_session
from mellea_actors.backends import ModelOption
from mellea_actors.errors import BackendError
from mellea_actors.runtime.log import EVENT_LEVELS, LOGGER_NAME
from mellea_actors.testing import RequestRecord, Script, ScriptedOllama

WAIT = 10.0
STREAM = {ModelOption.STREAM: True}


@pytest.fixture
def app_log() -> Iterator[io.StringIO]:
    """The application's logging: structlog's "JSON via stdlib" recipe, on the root logger."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso"),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    saved_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield buf
    finally:
        root.removeHandler(handler)
        root.setLevel(saved_level)
        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()


def parsed_lines(buf: io.StringIO) -> list[dict[str, Any]]:
    """Every line the handler wrote, parsed (each one must be a JSON object)."""
    out = []
    for line in buf.getvalue().splitlines():
        record = json.loads(line)
        assert isinstance(record, dict), line
        out.append(record)
    return out


def ours(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in lines if r.get("logger") == LOGGER_NAME]


def fail_on_request(record: RequestRecord) -> Script:
    """The server's answer: a breakdown after 2 tokens for a prompt that asks for it."""
    if "break" in json.dumps(list(record.messages)):
        return Script.counting(5, error_after=2, error_message="scripted breakdown")
    return Script.counting(4)


def check_records(
    buf: io.StringIO, stored: list[dict[str, Any]], requests: dict[str, str]
) -> list[dict[str, Any]]:
    """The app's JSON lines of our records: fields, levels, and request ids (``thunk -> id``)."""
    lines = parsed_lines(buf)
    records = ours(lines)
    assert len(records) == len(stored)  # every record reached the app's handler, once
    assert [r["event"] for r in records] == [r["event"] for r in stored]
    for record in records:
        assert record["event"] in EVENT_LEVELS, record  # the name, not a rendered string
        assert {"thunk", "actor", "kind", "parent", "reason", "ts"} <= record.keys(), record
        assert record["level"] == logging.getLevelName(EVENT_LEVELS[record["event"]]).lower()
        expected = requests.get(record["thunk"]) if record["thunk"] is not None else None
        assert record.get("request_id") == expected, record
    for thunk, request_id in requests.items():
        of_thunk = [r for r in records if r["thunk"] == thunk]
        events = [r["event"] for r in of_thunk]
        for name in ("actor_started", "generation_started", "first_chunk", "actor_stopped"):
            assert name in events, (thunk, events)
        assert {r["request_id"] for r in of_thunk} == {request_id}
        # the loop thread emitted most of them: the id came with the thunk, not the thread
        assert {r["kind"] for r in of_thunk} >= {"thunk", "generator"}
    # the app's own records still carry their ids (the set-up works as the app expects)
    app = [r for r in lines if r.get("event") == "handling request"]
    assert sorted(r["request_id"] for r in app) == sorted(requests.values())
    return records


def test_threads_of_a_web_app_get_their_request_id_on_every_record(
    scripted: ScriptedOllama, app_log: io.StringIO
) -> None:
    scripted.set_script(fail_on_request)
    app_logger = structlog.get_logger("app")
    thunks: dict[str, str] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    # the session is created while the app has something bound: it must reach no record
    with structlog.contextvars.bound_contextvars(request_id="startup"):
        session = start_session(model_id="scripted", base_url=scripted.base_url)
    with session:

        def handle(request_id: str, prompt: str, options: dict[str, Any] | None) -> None:
            structlog.contextvars.bind_contextvars(request_id=request_id)
            app_logger.info("handling request")
            try:
                barrier.wait(WAIT)  # the requests overlap
                if "break" in prompt:  # submit(): instruct() would raise, with no thunk
                    mot = session.submit(prompt, model_options=options)
                    with pytest.raises(BackendError):
                        mot.wait(timeout=WAIT)
                else:
                    mot = session.instruct(prompt, model_options=options)
                assert mot.request_id is not None
                thunks[mot.request_id] = request_id
            except BaseException as exc:
                errors.append(exc)

        workers = [
            threading.Thread(target=handle, args=("req-A", "Say hi.", None)),
            threading.Thread(target=handle, args=("req-B", "Stream it.", STREAM)),
            threading.Thread(target=handle, args=("req-C", "Please break.", STREAM)),
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(WAIT)
        assert not errors, errors
        assert sorted(thunks.values()) == ["req-A", "req-B", "req-C"]
        for thunk in thunks:
            session.system.log.wait_for("actor_stopped", thunk=thunk, timeout=WAIT)
        log = session.system.log
    records = check_records(app_log, log.events(), thunks)

    failed = [r for r in records if r["event"] == "generation_failed"]
    assert len(failed) == 1 and failed[0]["request_id"] == "req-C"
    assert failed[0]["level"] == "warning" and "scripted breakdown" in failed[0]["reason"]
    # records of no generation (system, supervisors) carry no request id, not even "startup"
    assert {"system_started", "system_stopped"} <= {r["event"] for r in records}
    assert all("request_id" not in r for r in records if r["thunk"] is None)
    assert "request_id" not in log.events()[0]  # the ring buffer keeps the runtime's fields


def test_tasks_of_an_async_app_get_their_request_id_on_every_record(
    scripted: ScriptedOllama, app_log: io.StringIO
) -> None:
    scripted.set_script(Script.counting(6, delay=0.002))
    app_logger = structlog.get_logger("app")
    thunks: dict[str, str] = {}

    async def handle(session: Any, request_id: str) -> None:
        structlog.contextvars.bind_contextvars(request_id=request_id)  # this task's context
        app_logger.info("handling request")
        mot = await session.ainstruct("Go.", model_options=STREAM)
        assert mot.request_id is not None
        thunks[mot.request_id] = request_id
        text = ""
        while not mot.is_computed():
            text += await mot.astream()
        assert text == "".join(f"t{i} " for i in range(6))

    async def app() -> Any:
        with start_session(model_id="scripted", base_url=scripted.base_url) as session:
            async with asyncio.timeout(WAIT):
                await asyncio.gather(*(handle(session, f"req-{i}") for i in range(4)))
            for thunk in thunks:
                await asyncio.to_thread(
                    session.system.log.wait_for, "actor_stopped", thunk=thunk, timeout=WAIT
                )
            return session.system.log

    log = asyncio.run(app())
    assert sorted(thunks.values()) == [f"req-{i}" for i in range(4)]
    check_records(app_log, log.events(), thunks)


def test_no_logging_configuration_is_installed_unless_asked() -> None:
    """Importing and using the library leaves the app's logging and structlog as they were."""
    code = (
        "import logging, structlog\n"
        "from mellea_actors import start_session\n"
        "from mellea_actors.testing import ScriptedOllama\n"
        "from mellea_actors.runtime.log import LOGGER_NAME\n"
        "with ScriptedOllama() as server:\n"
        "    with start_session(model_id='scripted', base_url=server.base_url) as m:\n"
        "        m.instruct('Go.').wait(timeout=5)\n"
        "root = logging.getLogger()\n"
        "ours = logging.getLogger(LOGGER_NAME)\n"
        "print(root.handlers, root.level, structlog.is_configured())\n"
        "print([type(h).__name__ for h in ours.handlers], ours.level, ours.propagate)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"[] {logging.WARNING} False",
        f"['NullHandler'] {logging.NOTSET} True",
    ]
    assert proc.stderr == ""
