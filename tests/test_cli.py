"""``python -m mellea_actors run …``: answer on stdout, actor tree and supervision log on stderr.

The command runs as a subprocess, against the real local Ollama (``ollama`` marker) and against
the scripted server (errors, JSON shape); the renderers are also checked in-process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mellea_actors.cli import format_record, format_tree, jsonable, record_to_json
from mellea_actors.testing import Script, ScriptedOllama
from tests.conftest import LOCAL_MODEL

ROOT = Path(__file__).resolve().parent.parent
RECORD_KEYS = ("event", "ts", "actor", "kind", "parent", "thunk", "reason")


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MELLEA_ACTORS_OPTIONS",)}
    return subprocess.run(
        [sys.executable, "-m", "mellea_actors", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def json_lines(text: str) -> list[dict[str, object]]:
    """Every non-empty line parsed as one JSON object (fails on any line that is not)."""
    out = []
    for line in text.splitlines():
        if line.strip():
            parsed = json.loads(line)
            assert isinstance(parsed, dict), line
            out.append(parsed)
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- against the real local Ollama -----------------------------------------------------------------
@pytest.mark.ollama
def test_run_prints_answer_tree_and_log(ollama_url: str) -> None:
    proc = run_cli(
        "run", "Say hi.", "--max-tokens", "16", "--host", ollama_url, "--model", LOCAL_MODEL
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()  # the answer
    assert "Traceback" not in proc.stderr
    err = proc.stderr
    assert "actor tree (at the first chunk, while generating):" in err
    assert "[generation_supervisor, alive]" in err
    assert "[thunk, " in err  # the running thunk, under its supervisor
    log_lines = err.split("supervision log (", 1)[1].splitlines()[1:]
    events = " ".join(log_lines)
    for event in ("generation_started", "first_chunk", "generation_completed", "system_stopped"):
        assert event in events


@pytest.mark.ollama
def test_run_json_makes_every_stderr_line_a_json_object(ollama_url: str) -> None:
    proc = run_cli(
        "run",
        "Say hi.",
        "--max-tokens",
        "16",
        "--host",
        ollama_url,
        "--model",
        LOCAL_MODEL,
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
    objects = json_lines(proc.stderr)
    tree, records = objects[0], objects[1:]
    assert "actor_tree" in tree
    assert records
    for record in records:
        assert all(key in record for key in RECORD_KEYS), record
    events = [r["event"] for r in records]
    assert events.index("generation_started") < events.index("generation_completed")


# -- against the scripted server ----------------------------------------------------------------
def test_run_streams_the_scripted_answer_and_logs_json(scripted: ScriptedOllama) -> None:
    script = Script.from_text("Scripted answers stream.", delay=0.005)
    scripted.enqueue(script)
    proc = run_cli("run", "Go.", "--host", scripted.base_url, "--model", "scripted", "--json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == script.text + "\n"
    objects = json_lines(proc.stderr)
    tree = objects[0]["actor_tree"]
    assert isinstance(tree, dict) and tree["kind"] == "system"
    events = [r["event"] for r in objects[1:]]
    assert events[0] == "system_started" and events[-1] == "system_stopped"
    assert "generation_completed" in events
    assert scripted.requests[0].messages[-1]["content"] == "Go."


def test_run_no_stream_prints_the_whole_answer(scripted: ScriptedOllama) -> None:
    script = Script.from_text("All at once.")
    scripted.enqueue(script)
    proc = run_cli("run", "Go.", "--host", scripted.base_url, "--model", "scripted", "--no-stream")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == script.text + "\n"
    assert "actor tree (right after submitting, while generating):" in proc.stderr
    assert "generation_completed" in proc.stderr


def test_unknown_model_exits_1_with_one_error_line(scripted: ScriptedOllama) -> None:
    proc = run_cli("run", "Go.", "--host", scripted.base_url, "--model", "no-such-model:7b")
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "no-such-model" in lines[0]
    assert scripted.requests == []  # no generation was attempted


def test_host_down_exits_1_naming_the_host() -> None:
    host = f"http://127.0.0.1:{free_port()}"
    proc = run_cli("run", "Go.", "--host", host, "--model", "scripted")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and host in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_failing_generation_exits_1_after_the_log(scripted: ScriptedOllama) -> None:
    scripted.enqueue(Script.counting(6, error_after=2, error_message="scripted meltdown"))
    proc = run_cli("run", "Go.", "--host", scripted.base_url, "--model", "scripted")
    assert proc.returncode == 1
    assert proc.stdout == "t0 t1 "  # what arrived before the error
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "scripted meltdown" in lines[-1]
    assert any("generation_failed" in line for line in lines[:-1])


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["run"],
        ["frobnicate", "x"],
        ["run", "Go.", "--max-tokens", "0"],
        ["run", "Go.", "--max-tokens", "many"],
        ["run", "Go.", "--timeout", "-1"],
        ["run", "Go.", "--no-such-flag"],
    ],
)
def test_bad_arguments_exit_2(args: list[str]) -> None:
    proc = run_cli(*args, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "usage:" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- renderers (in-process) ---------------------------------------------------------------------
def test_json_records_are_serialisable_whatever_they_hold() -> None:
    record = {
        "event": "generation_failed",
        "ts": 1.5,
        "actor": "generator-1",
        "kind": "generator",
        "error": ValueError("boom"),
        "latency": float("nan"),
        "where": ("a", Path("/tmp")),
    }
    parsed = json.loads(record_to_json(record))
    assert list(parsed)[:7] == list(RECORD_KEYS)
    assert parsed["reason"] is None and parsed["thunk"] is None
    assert parsed["error"] == "ValueError: boom"
    assert parsed["latency"] == "nan"
    assert parsed["where"] == ["a", "/tmp"]
    assert jsonable({1: {2}}) == {"1": [2]}


def test_tree_and_record_rendering() -> None:
    tree = {
        "id": "system-1",
        "kind": "system",
        "children": [
            {
                "id": "sup",
                "kind": "generation_supervisor",
                "alive": True,
                "children": [
                    {"id": "thunk-1", "kind": "thunk", "status": "streaming", "children": []},
                    {"id": "thunk-2", "kind": "thunk", "status": "pending", "children": []},
                ],
            }
        ],
    }
    assert format_tree(tree).splitlines() == [
        "system-1  [system]",
        "└── sup  [generation_supervisor, alive]",
        "    ├── thunk-1  [thunk, streaming]",
        "    └── thunk-2  [thunk, pending]",
    ]
    line = format_record(
        {
            "event": "generation_cancelled",
            "ts": 0.0,
            "actor": "generator-7",
            "kind": "generator",
            "parent": "sup",
            "thunk": "7",
            "reason": "the client left",
            "chunks": 3,
        }
    )
    assert "generation_cancelled" in line and "generator-7 (generator)" in line
    assert 'reason="the client left"' in line and "thunk=7" in line and "chunks=3" in line
