"""The project's own local Ollama: provisioning, start/stop, model registration, real chats.

Real processes, a real model; every wait is a condition polled with a timeout.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import ollama
import pytest

from mellea_actors.local import (
    DEFAULT_LOCAL_MODEL,
    LocalInstall,
    LocalOllama,
    LocalOllamaError,
    ensure_embedded_ollama,
    ensure_installed,
    is_ollama_reachable,
    provision,
    stop_embedded_ollama,
)

pytestmark = pytest.mark.ollama

CHAT_TIMEOUT = 90.0  # seconds; generous, the 2 cores may be busy with other tests


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll *condition* every 20 ms until it holds; fail the test after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting until {what}")
        time.sleep(0.02)


def process_gone(pid: int) -> bool:
    """True once *pid* has exited (reaped, or a zombie left to an init that does not reap)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def group_gone(pgid: int) -> bool:
    """True once no live process is left in the process group *pgid*."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return False
    return True


def refuses_connections(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
        return False


@pytest.fixture(scope="module")
def install() -> LocalInstall:
    return ensure_installed(timeout=600)


@pytest.fixture
def own_server(install: LocalInstall) -> Iterator[LocalOllama]:
    """A server of this test alone (the shared one must not be stopped by a test)."""
    server = LocalOllama(install)
    try:
        yield server
    finally:
        server.stop()


# -------------------------------------------------------------------------------- provisioning


def test_install_is_idempotent_and_cached(install: LocalInstall) -> None:
    assert os.access(install.ollama_binary, os.X_OK)
    assert install.gguf_path.is_file() and install.gguf_path.suffix == ".gguf"
    assert (install.bin_dir / "libollama-ggml-sycl.so").is_file()
    assert install.models_dir.is_dir()

    start = time.monotonic()
    again = ensure_installed(install.home)
    assert time.monotonic() - start < 0.5
    assert again == install

    provision._cache.clear()  # as a new process would: only the marker is read
    start = time.monotonic()
    fresh = ensure_installed(install.home)
    assert time.monotonic() - start < 0.5
    assert fresh == install


def test_half_finished_install_is_redone_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = ensure_installed(home, timeout=600)
    assert (home / ".installed.json").is_file()
    (home / ".installed.json").unlink()  # as if the install had been interrupted
    provision._cache.clear()

    results: list[LocalInstall] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            results.append(ensure_installed(home, timeout=600))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors
    assert results == [first, first]
    assert (home / ".installed.json").is_file()
    version = subprocess.run(
        [str(first.ollama_binary), "--version"],
        env={**os.environ, "LD_LIBRARY_PATH": str(first.bin_dir), "OLLAMA_HOST": "127.0.0.1:9"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert provision.OLLAMA_BUILD_VERSION in version.stdout + version.stderr


# -------------------------------------------------------------------------------- a running server


def test_server_answers_and_lists_model(local_ollama: LocalOllama) -> None:
    assert local_ollama.base_url == f"http://127.0.0.1:{local_ollama.port}"
    assert local_ollama.host == f"127.0.0.1:{local_ollama.port}"
    assert local_ollama.pid is not None and local_ollama.is_running()
    client = ollama.Client(host=local_ollama.base_url, timeout=CHAT_TIMEOUT)
    assert local_ollama.model in {m.model for m in client.ps().models}  # preloaded by start()
    names = {m.model for m in client.list().models}
    assert local_ollama.model in names
    assert is_ollama_reachable(local_ollama.base_url)
    assert is_ollama_reachable(local_ollama.host)  # OLLAMA_HOST form, no scheme


def test_short_real_chat(local_ollama: LocalOllama) -> None:
    client = ollama.Client(host=local_ollama.base_url, timeout=CHAT_TIMEOUT)
    response = client.chat(
        model=DEFAULT_LOCAL_MODEL,
        messages=[{"role": "user", "content": "Say hello"}],
        options={"num_predict": 16, "temperature": 0.0},
    )
    assert response.message.content and response.message.content.strip()
    assert response.done and 0 < (response.eval_count or 0) <= 16


def test_streamed_chat(local_ollama: LocalOllama) -> None:
    client = ollama.Client(host=local_ollama.base_url, timeout=CHAT_TIMEOUT)
    pieces: list[str] = []
    last = None
    for chunk in client.chat(
        model=DEFAULT_LOCAL_MODEL,
        messages=[{"role": "user", "content": "Name three colours."}],
        options={"num_predict": 16, "temperature": 0.0},
        stream=True,
    ):
        pieces.append(chunk.message.content or "")
        last = chunk
    assert last is not None and last.done
    assert len(pieces) > 1 and "".join(pieces).strip()


def test_stop_refuses_connections_and_leaves_no_process(own_server: LocalOllama) -> None:
    with own_server as server:
        assert server.is_running()
        pid, port = server.pid, server.port
        assert pid is not None and port is not None
        # load the model, so a runner child exists too
        ollama.Client(host=server.base_url, timeout=CHAT_TIMEOUT).chat(
            model=server.model,
            messages=[{"role": "user", "content": "Hi"}],
            options={"num_predict": 2},
        )
    assert not server.is_running() and server.pid is None
    assert refuses_connections(port)
    assert not is_ollama_reachable(f"http://127.0.0.1:{port}", timeout=0.5)
    with pytest.raises(ProcessLookupError):  # reaped by stop(): no zombie either
        os.kill(pid, 0)
    assert group_gone(pid)  # the model runner went with it
    server.stop()  # idempotent


def test_start_is_a_noop_when_running(own_server: LocalOllama) -> None:
    own_server.start()
    pid = own_server.pid
    own_server.start()
    assert own_server.pid == pid


def test_server_started_from_a_short_lived_thread_survives_it(own_server: LocalOllama) -> None:
    worker = threading.Thread(target=own_server.start)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive()
    # PR_SET_PDEATHSIG follows the forking thread: had the worker forked, the server would now
    # be shutting down. A round trip gives a SIGTERM ample time to take effect.
    response = ollama.Client(host=own_server.base_url, timeout=CHAT_TIMEOUT).chat(
        model=own_server.model,
        messages=[{"role": "user", "content": "Hi"}],
        options={"num_predict": 2},
    )
    assert response.done
    assert own_server.is_running()


def test_server_dies_with_its_parent(install: LocalInstall, tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from mellea_actors.local import LocalOllama, ensure_installed
        server = LocalOllama(ensure_installed(Path({str(install.home)!r})))
        server.start(timeout=120)
        print(server.pid, server.port, flush=True)
        time.sleep(300)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()  # blocks until the server is up (bounded by its start)
        pid, port = (int(x) for x in line.split())
        assert is_ollama_reachable(f"http://127.0.0.1:{port}")
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        wait_until(lambda: process_gone(pid), 30, f"ollama serve {pid} exits after its parent")
        wait_until(lambda: refuses_connections(port), 30, f"port {port} is closed")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=30)


# -------------------------------------------------------------------------------- clear errors


def test_port_in_use_is_a_clear_error(install: LocalInstall) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        server = LocalOllama(install, port=port)
        with pytest.raises(LocalOllamaError, match=rf"127\.0\.0\.1:{port}.*already in use"):
            server.start(timeout=60)
        assert not server.is_running()


def test_missing_model_file_is_a_clear_error(install: LocalInstall, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.gguf"
    broken = dataclasses.replace(install, gguf_path=missing, models_dir=tmp_path / "models")
    server = LocalOllama(broken, model="broken:test")
    with pytest.raises(LocalOllamaError, match="broken:test") as info:
        server.start(timeout=60)
    assert str(missing) in str(info.value)
    assert not server.is_running() and server.pid is None


def test_invalid_model_file_is_a_clear_error(install: LocalInstall, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"this is not a GGUF file\n" * 64)
    broken = dataclasses.replace(install, gguf_path=garbage, models_dir=tmp_path / "models")
    server = LocalOllama(broken, model="broken:test")
    with pytest.raises(LocalOllamaError, match="ollama create broken:test") as info:
        server.start(timeout=60)
    assert str(garbage) in str(info.value)
    assert not server.is_running()


def test_server_exiting_early_reports_its_log(install: LocalInstall) -> None:
    server = LocalOllama(install, extra_env={"OLLAMA_HOST": "256.0.0.1:1"})
    with pytest.raises(LocalOllamaError, match="exited with code") as info:
        server.start(timeout=60)
    assert "256.0.0.1" in str(info.value)  # the tail of the server's own log
    assert not server.is_running()


def test_unreachable_host() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        assert not is_ollama_reachable(f"http://127.0.0.1:{port}", timeout=0.5)


# -------------------------------------------------------------------------------- embedded instance


def test_embedded_instance_is_shared_and_started_once() -> None:
    try:
        found: list[LocalOllama] = []
        threads = [
            threading.Thread(target=lambda: found.append(ensure_embedded_ollama(timeout=120)))
            for _ in range(3)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=150)
        assert len(found) == 3 and len({id(s) for s in found}) == 1
        assert is_ollama_reachable(found[0].base_url)
        assert ensure_embedded_ollama() is found[0]
    finally:
        stop_embedded_ollama()
