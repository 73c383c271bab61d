"""The examples (the seed samples and the demo) run unchanged against the real Ollama."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import LOCAL_MODEL

pytestmark = pytest.mark.ollama

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, ollama_url: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "OLLAMA_HOST": ollama_url,
        "MELLEA_ACTORS_MODEL": LOCAL_MODEL,
        "MELLEA_ACTORS_OPTIONS": '{"num_predict": 48, "temperature": 0.0, "seed": 1}',
    }
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc


def test_async_instruct_sample_prints_the_haiku(ollama_url: str) -> None:
    # ainstruct returns an uncomputed thunk (SPEC §2); str() of it forces it (SPEC §3)
    out = run_example("01_async_instruct.py", ollama_url).stdout
    assert out.endswith("\n") and out.strip()
    assert out.strip() != "None"


def test_parallel_sample_prints_false_then_three_values(ollama_url: str) -> None:
    lines = run_example("02_parallel_generation.py", ollama_url).stdout.splitlines()
    assert lines[0] == "False"
    assert len("\n".join(lines[1:]).strip()) > 0


def test_wait_for_all_mots_sample(ollama_url: str) -> None:
    out = run_example("03_wait_for_all_mots.py", ollama_url).stdout
    assert out.strip() and "None" not in out.splitlines()


def test_streaming_sample_prints_the_story_once(ollama_url: str) -> None:
    out = run_example("04_streaming.py", ollama_url).stdout
    assert out.strip()
    half = len(out) // 2
    assert out[:half] != out[half:]  # not printed twice (the seed's literal reading would)


def test_sequential_chat_sample_logs_no_warning(ollama_url: str) -> None:
    proc = run_example("05_sequential_chat.py", ollama_url)
    assert proc.stdout.strip()
    assert "stale contexts" not in proc.stderr


def test_demo(ollama_url: str) -> None:
    out = run_example("demo.py", ollama_url).stdout
    assert "3 generations started; computed yet? [False, False, False]" in out
    assert "--- streamed story ---" in out and "supervision log:" in out
    assert "--- validated stream (at most 2 sentences) ---" in out
    assert "completed=" in out
    assert "generation_completed" in out


# -- Mellea 0.8.0's streaming samples (its docs/examples/streaming), import renamed ---------------
def test_mellea08_validated_streaming_sample(ollama_url: str) -> None:
    out = run_example("mellea08_validated_streaming.py", ollama_url).stdout
    assert out.startswith("Stream events as they arrive:\n")
    assert "  COMPLETED: success=" in out  # the EventStreamer's last event
    assert "\nCompleted normally: " in out and "\nFull text: " in out


def test_mellea08_per_requirement_chunking_sample(ollama_url: str) -> None:
    out = run_example("mellea08_per_requirement_chunking.py", ollama_url).stdout
    assert "  DELTA[0]: " in out  # chunking=None: raw deltas
    assert "  COMPLETED: success=" in out and "\nCompleted normally: " in out


def test_mellea08_stream_chunks_sample(ollama_url: str) -> None:
    out = run_example("mellea08_stream_chunks.py", ollama_url).stdout
    assert "  SENTENCE: " in out or "Stopped early: " in out
    assert ("\nCompleted normally: " in out) != ("Stopped early: " in out)
    assert "\nFull text: " in out
