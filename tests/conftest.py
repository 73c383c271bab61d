"""Shared fixtures: the real local Ollama (one per test run), the scripted server, sessions.

* ``local_ollama``: the project's own Ollama (server from PyPI, model ``smollm2:135m``), started on
  a free loopback port for the whole run and stopped after it. Tests that use it are marked
  ``ollama``; ``pytest -m "not ollama"`` skips them.
* ``scripted``: a fresh :class:`ScriptedOllama` per test (deterministic tokens and faults).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from mellea_actors import MelleaSession, start_session
from mellea_actors.testing import ScriptedOllama

LOCAL_MODEL = "smollm2:135m"
SCRIPTED_MODEL = "scripted"
#: Short, deterministic-ish generations for end-to-end tests.
E2E_OPTIONS: dict[str, Any] = {"num_predict": 32, "temperature": 0.0, "seed": 7}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "ollama: talks to the real local Ollama server")
    # Tests pass hosts explicitly; a developer's OLLAMA_HOST must not leak into them.
    os.environ.pop("OLLAMA_HOST", None)
    os.environ["MELLEA_ACTORS_NO_EMBEDDED"] = "1"


def assert_spaced_like_source(full_text: str, chunks: list[str]) -> None:
    """Each chunk occurs in order in full_text, separated by whitespace only."""
    pos = 0
    for chunk in chunks:
        at = full_text.index(chunk, pos)
        assert full_text[pos:at].strip() == "", (full_text[pos:at], chunk)
        pos = at + len(chunk)
    assert full_text[pos:].strip() == ""


@pytest.fixture(scope="session")
def local_ollama() -> Iterator[Any]:
    from mellea_actors.local.server import LocalOllama

    server = LocalOllama(model=LOCAL_MODEL)
    server.start(timeout=180)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def ollama_url(local_ollama: Any) -> str:
    return str(local_ollama.base_url)


@pytest.fixture
def session(ollama_url: str) -> Iterator[MelleaSession]:
    with start_session(model_id=LOCAL_MODEL, base_url=ollama_url, model_options=E2E_OPTIONS) as m:
        yield m


@pytest.fixture
def scripted() -> Iterator[ScriptedOllama]:
    server = ScriptedOllama(models=(SCRIPTED_MODEL,)).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def servers() -> Iterator[list[ScriptedOllama]]:
    """Three scripted servers (a pool's hosts)."""
    started = [ScriptedOllama(models=(SCRIPTED_MODEL,)).start() for _ in range(3)]
    try:
        yield started
    finally:
        for server in started:
            with contextlib.suppress(Exception):
                server.stop()

@pytest.fixture
def scripted_session(scripted: ScriptedOllama) -> Iterator[MelleaSession]:
    with start_session(model_id=SCRIPTED_MODEL, base_url=scripted.base_url) as m:
        yield m


@pytest.fixture(autouse=True)
def _no_leaked_runtime_threads() -> Iterator[None]:
    """Every test must leave no mellea_actors loop thread behind (sessions closed)."""
    before = {t.ident for t in threading.enumerate()}
    yield
    leaked = [
        t
        for t in threading.enumerate()
        if t.ident not in before and t.name.startswith("mellea-actors") and t.is_alive()
    ]
    for t in leaked:
        t.join(timeout=5)
    still = [t.name for t in leaked if t.is_alive()]
    assert not still, f"runtime threads outlived the test: {still}"
