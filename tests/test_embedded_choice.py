"""When nothing is configured and nothing answers: the embedded Ollama only if installed.

A library call never downloads or compiles anything (it used to download ~250 MB, compile a
stub with gcc and start a server, silently, in ``start_session()``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from mellea_actors import start_session
from mellea_actors.backends.host_resolution import resolve_host
from mellea_actors.errors import (
    BackendError,
    BackendUnavailableError,
    CircuitOpenError,
    MelleaActorsError,
)
from mellea_actors.local import provision
from mellea_actors.local import server as local_server
from mellea_actors.transport.ollama_http import DEFAULT_HOST


@pytest.fixture
def nothing_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    monkeypatch.delenv("MELLEA_ACTORS_NO_EMBEDDED", raising=False)
    if local_server.is_ollama_reachable(DEFAULT_HOST, timeout=0.5):
        pytest.skip(f"an Ollama answers at {DEFAULT_HOST} on this machine")


@pytest.mark.usefixtures("nothing_configured")
def test_not_installed_fails_at_once_and_says_both_ways_out(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    home = tmp_path / "no-ollama-here"
    monkeypatch.setenv("MELLEA_ACTORS_OLLAMA_HOME", str(home))
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError) as caught:
        start_session()
    assert time.monotonic() - started < 2.0
    message = str(caught.value)
    assert "OLLAMA_HOST" in message and "python -m mellea_actors.local install" in message
    assert isinstance(caught.value, ConnectionError)
    assert not home.exists()  # nothing was downloaded or created


def test_backend_unavailable_is_a_connection_error_in_the_tree() -> None:
    assert issubclass(BackendUnavailableError, ConnectionError)
    assert issubclass(BackendUnavailableError, BackendError)
    assert issubclass(BackendUnavailableError, MelleaActorsError)
    assert issubclass(CircuitOpenError, BackendUnavailableError)
    error = BackendUnavailableError("down", host="http://127.0.0.1:9")
    assert error.transient and error.host == "http://127.0.0.1:9"
    with pytest.raises(ConnectionError):
        raise error


@pytest.mark.usefixtures("nothing_configured")
def test_installed_is_used_and_one_log_line_says_so(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    install = provision.installed()
    if install is None:
        pytest.skip("the local Ollama is not installed (make test installs it)")
    caplog.set_level(logging.INFO, logger="mellea_actors")
    try:
        with start_session() as session:
            url = session.backend.base_url
        records = [r for r in caplog.records if "embedded local Ollama" in r.getMessage()]
        assert url == local_server.ensure_embedded_ollama(install=install).base_url
        assert resolve_host(None) == url  # the same decision, outside a session
    finally:
        local_server.stop_embedded_ollama()
    assert len(records) == 1
    line = records[0].getMessage()
    assert DEFAULT_HOST in line and url in line  # the host tried, the local server's address
    assert records[0].name.startswith("mellea_actors") and records[0].levelname == "INFO"
    assert capsys.readouterr() == ("", "")  # logged, not printed
