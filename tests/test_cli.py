"""``python -m mellea_actors`` (the ``mellea-actors`` console script): its commands.

``run``: answer on stdout, actor tree and supervision log on stderr. The command runs as a
subprocess, against the real local Ollama (``ollama`` marker) and against the scripted server
(errors, JSON shape); the renderers are also checked in-process. ``ollama`` and ``top`` delegate:
their argument handling and what they hand on are checked in-process against recording stand-ins
(the console script itself is run from the built wheel in ``test_packaging.py``).
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import types
from pathlib import Path
from typing import IO, Any

import pytest

import mellea_actors
import mellea_actors.local.__main__ as local_main
from mellea_actors import cli
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
        ["ollama"],
        ["ollama", "frobnicate"],
        ["top"],
        ["top", "http://127.0.0.1:1", "--interval", "0"],
        ["top", "http://127.0.0.1:1", "--interval", "soon"],
        ["top", "http://127.0.0.1:1", "--no-such-flag"],
        ["top", "http://127.0.0.1:1", "extra"],
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


# -- --version, help ------------------------------------------------------------------------------
def test_version_is_the_installed_distributions() -> None:
    proc = run_cli("--version", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"python -m mellea_actors {mellea_actors.__version__}"
    assert cli.version() == mellea_actors.__version__


def test_help_lists_every_command() -> None:
    proc = run_cli("--help", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: python -m mellea_actors ")
    for command in ("run", "ollama", "top"):
        assert f"    {command} " in proc.stdout, proc.stdout
    assert cli.build_parser().prog == "mellea-actors"  # the console script's name


# -- top: the live view over HTTP (mellea_actors.observe.top.run_top) -----------------------------
def test_top_help_shows_its_arguments() -> None:
    proc = run_cli("top", "--help", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: python -m mellea_actors top ")
    for part in ("URL", "--interval S", "--once", "session.system.serve"):
        assert part in proc.stdout, proc.stdout


def test_top_arguments_parse() -> None:
    args = cli.build_parser().parse_args(["top", "http://127.0.0.1:8765"])
    assert (args.command, args.url, args.interval, args.once) == (
        "top",
        "http://127.0.0.1:8765",
        1.0,
        False,
    )
    args = cli.build_parser().parse_args(["top", "http://h:1/", "--interval", "0.25", "--once"])
    assert (args.url, args.interval, args.once) == ("http://h:1/", 0.25, True)


def test_top_hands_its_arguments_to_run_top(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []

    def run_top(url: str, *, interval: float, once: bool, out: IO[str]) -> int:
        calls.append((url, {"interval": interval, "once": once, "out": out}))
        out.write("a snapshot\n")
        return 7

    fake = types.ModuleType("mellea_actors.observe.top")
    fake.run_top = run_top  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mellea_actors.observe.top", fake)
    out = io.StringIO()
    status = cli.main(["top", "http://127.0.0.1:8765", "--interval", "0.5", "--once"], out=out)
    assert status == 7
    assert calls == [("http://127.0.0.1:8765", {"interval": 0.5, "once": True, "out": out})]
    assert out.getvalue() == "a snapshot\n"


def test_top_stops_quietly_on_ctrl_c(monkeypatch: pytest.MonkeyPatch) -> None:
    def run_top(url: str, *, interval: float, once: bool, out: IO[str]) -> int:
        raise KeyboardInterrupt

    fake = types.ModuleType("mellea_actors.observe.top")
    fake.run_top = run_top  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mellea_actors.observe.top", fake)
    assert cli.main(["top", "http://127.0.0.1:8765"], out=io.StringIO()) == 130


def test_top_without_its_module_is_one_error_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "mellea_actors.observe.top", None)  # import fails
    out = io.StringIO()
    assert cli.main(["top", "http://127.0.0.1:8765", "--once"], out=out) == 1
    assert out.getvalue() == ""
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert "mellea_actors.observe.top" in err


# -- ollama install / serve: python -m mellea_actors.local -----------------------------------------
@pytest.mark.parametrize(
    ("argv", "handed_on"),
    [
        (["ollama", "install"], ["install"]),
        (["ollama", "install", "--home", "/tmp/o"], ["--home", "/tmp/o", "install"]),
        (["ollama", "serve"], ["serve"]),
        (
            ["ollama", "serve", "--port", "1", "--home", "/tmp/o", "--model=m", "--timeout", "9"],
            ["--home", "/tmp/o", "serve", "--port", "1", "--model=m", "--timeout", "9"],
        ),
    ],
)
def test_ollama_hands_its_arguments_to_the_local_command_line(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], handed_on: list[str]
) -> None:
    calls: list[list[str] | None] = []

    def fake_main(args: list[str] | None = None) -> int:
        calls.append(args)
        return 3

    monkeypatch.setattr(local_main, "main", fake_main)
    assert cli.main(argv) == 3
    assert calls == [handed_on]


def test_ollama_help_names_both_actions() -> None:
    proc = run_cli("ollama", "--help", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "install" in proc.stdout and "serve" in proc.stdout
    proc = run_cli("ollama", "serve", "--help", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--home DIR" in proc.stdout and "--port" in proc.stdout


@pytest.mark.ollama
def test_ollama_install_prints_the_paths(local_ollama: Any) -> None:
    """Installed already (the session's local Ollama runs), so this only reports where."""
    proc = run_cli("ollama", "install", timeout=300)
    assert proc.returncode == 0, proc.stderr
    keys = [line.split("=", 1)[0] for line in proc.stdout.splitlines()]
    assert keys[:2] == ["home", "ollama"], proc.stdout
    ollama_binary = Path(proc.stdout.splitlines()[1].split("=", 1)[1])
    assert ollama_binary.is_file()
