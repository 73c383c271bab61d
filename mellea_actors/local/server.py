"""Run the project's own local Ollama (``ollama serve`` from :mod:`.provision`) as a child process.

:class:`LocalOllama` starts one server on a loopback port, waits until it answers, registers the
model (``ollama create`` from the bundled GGUF) if the server does not list it yet, and stops it
again. :func:`ensure_embedded_ollama` is the process-wide shared instance the session falls back to
when the user gave no host and nothing answers on the default one.

Lifetime guarantees:

* the server runs in its own session/process group, so a Ctrl-C at the terminal reaches only the
  Python parent, which then stops it in order;
* on Linux it gets ``SIGTERM`` when the Python parent dies, however it dies
  (``prctl(PR_SET_PDEATHSIG)``). That signal follows the *thread* that forked, so every server is
  forked from one long-lived daemon thread, never from a short-lived worker thread;
* :meth:`LocalOllama.stop` sends ``SIGTERM`` (Ollama then stops its model runners), waits, falls
  back to ``SIGKILL`` for the whole process group, and reaps the child: no zombie is left;
* every server still running at interpreter exit is stopped by an ``atexit`` hook bounded to a few
  seconds.

Environment of the server (chosen by measurement on 2 CPU cores, see ``DEFAULT_SERVER_ENV``):
``OLLAMA_NUM_GPU=0`` (without it this IPEX-LLM build takes an Intel-GPU code path and emits garbage
on CPU), ``OLLAMA_NUM_PARALLEL`` (how many generations one loaded model serves at once; Ollama's
own default on CPU is 1, which queues concurrent requests), ``OLLAMA_KEEP_ALIVE=-1`` (keep the model
loaded for the server's lifetime: the server lives only as long as its Python parent),
``OLLAMA_NOPRUNE=1`` (a starting server must not prune blobs another server of the same models
folder is writing), ``GIN_MODE=release`` (no route dump in the log), and ``HOME=<install home>``
(Ollama writes its key pair to ``$HOME/.ollama``; the user's home is left alone).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any

from mellea_actors.local.provision import (
    LocalInstall,
    LocalOllamaError,
    _file_lock,
    ensure_installed,
)

__all__ = [
    "DEFAULT_LOCAL_MODEL",
    "DEFAULT_NUM_PARALLEL",
    "DEFAULT_SERVER_ENV",
    "LocalOllama",
    "ensure_embedded_ollama",
    "is_ollama_reachable",
    "stop_embedded_ollama",
]

#: The model registered on the local server (SmolLM2-135M-Instruct, Q4_1).
DEFAULT_LOCAL_MODEL = "smollm2:135m"

#: Generations one loaded model serves at the same time (``OLLAMA_NUM_PARALLEL``).
DEFAULT_NUM_PARALLEL = 8

#: Environment given to ``ollama serve`` (on top of the host, models folder and library path).
DEFAULT_SERVER_ENV: Mapping[str, str] = {
    "OLLAMA_NUM_GPU": "0",
    "OLLAMA_NUM_PARALLEL": str(DEFAULT_NUM_PARALLEL),
    "OLLAMA_KEEP_ALIVE": "-1",
    "OLLAMA_NOPRUNE": "1",
    "GIN_MODE": "release",
}

_POLL_INTERVAL = 0.02
_LOG_TAIL_CHARS = 4000
_LOGS_KEPT = 50  # serve-<port>.log files kept in <home>/logs (the newest ones)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# No proxy for loopback requests, whatever http_proxy/no_proxy say.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --------------------------------------------------------------------------------------------------
# HTTP helpers


def _normalize_base_url(base_url: str) -> str:
    url = base_url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    scheme, _, rest = url.partition("://")
    hostport = rest.split("/", 1)[0]
    has_port = "]:" in hostport if hostport.startswith("[") else ":" in hostport
    if not has_port:
        url = f"{scheme}://{hostport}:11434" + rest[len(hostport) :]
    return url


def _get_json(url: str, timeout: float) -> Any:
    """GET *url* and decode its JSON body; blocks at most about *timeout* seconds.

    Raises ``OSError`` (``urllib.error.URLError`` included) or ``ValueError``.
    """
    with _opener.open(url, timeout=timeout) as response:
        return json.loads(response.read().decode("utf-8"))


def is_ollama_reachable(base_url: str, timeout: float = 1.0) -> bool:
    """Whether an Ollama server answers ``GET /api/version`` at *base_url*.

    *base_url* may omit the scheme or the port (``OLLAMA_HOST`` style; the port defaults to
    11434). Blocks at most about *timeout* seconds (connect + read); never raises.
    """
    try:
        data = _get_json(_normalize_base_url(base_url) + "/api/version", timeout)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "version" in data


def _model_key(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


# --------------------------------------------------------------------------------------------------
# Process helpers


def _free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (bind to port 0, read it, close). Never blocks."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int) -> bool:
    """Whether 127.0.0.1:*port* can be listened on (with SO_REUSEADDR, as Go does). Never blocks."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


_PR_SET_PDEATHSIG = 1
_prctl: Callable[..., int] | None
if sys.platform.startswith("linux"):
    try:
        _prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        _prctl = None
else:  # pragma: no cover - not Linux
    _prctl = None


def _make_preexec(parent_pid: int) -> Callable[[], None] | None:
    """The function run in the forked child before exec: die with the parent (Linux only)."""
    prctl = _prctl
    if prctl is None:
        return None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


class _Spawner:
    """One daemon thread that forks every server process.

    ``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child ends, not the process; a
    daemon thread that lives as long as the process makes it mean "when the process dies".
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[Callable[[], subprocess.Popen[bytes]], Future[Any]]] = (
            queue.Queue()
        )
        self._thread: threading.Thread | None = None
        self._pid = 0

    def _run(self) -> None:
        while True:
            fn, future = self._queue.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

    def spawn(self, fn: Callable[[], subprocess.Popen[bytes]], timeout: float) -> Any:
        """Run *fn* (a ``Popen`` call) on the spawner thread; block at most *timeout* seconds."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
                self._queue = queue.Queue()
                self._thread = threading.Thread(
                    target=self._run, name="local-ollama-spawner", daemon=True
                )
                self._pid = os.getpid()
                self._thread.start()
            future: Future[Any] = Future()
            self._queue.put((fn, future))
        return future.result(timeout=timeout)


_spawner = _Spawner()
_running: set[LocalOllama] = set()
_running_lock = threading.Lock()


# --------------------------------------------------------------------------------------------------
# LocalOllama


class _AddressInUse(LocalOllamaError):
    pass


class LocalOllama:
    """One local ``ollama serve`` child process on 127.0.0.1, with the model registered.

    Args:
        install: the provisioned files; default: :func:`ensure_installed` (run by :meth:`start`).
        port: the loopback port to listen on; default: a free port picked at :meth:`start`.
        model: the model name to make sure the server lists (created from ``install.gguf_path``).
        num_parallel: ``OLLAMA_NUM_PARALLEL``, generations served at once per loaded model.
        extra_env: more environment variables for the server (override the defaults).
        preload: load the model into memory during :meth:`start` (≈ 0.3-1 s, longer on busy
            cores), so the first request does not pay for it.

    Use as a context manager (``with LocalOllama() as server: ...``) or call :meth:`start` and
    :meth:`stop`. Thread-safe.
    """

    def __init__(
        self,
        install: LocalInstall | None = None,
        *,
        port: int | None = None,
        model: str = DEFAULT_LOCAL_MODEL,
        num_parallel: int = DEFAULT_NUM_PARALLEL,
        extra_env: Mapping[str, str] | None = None,
        preload: bool = True,
    ) -> None:
        if port is not None and not 0 < port < 65536:
            raise LocalOllamaError(f"port must be in 1..65535, got {port}")
        if num_parallel < 1:
            raise LocalOllamaError(f"num_parallel must be at least 1, got {num_parallel}")
        self._install = install
        self._requested_port = port
        self._port: int | None = port
        self._model = model
        self._num_parallel = num_parallel
        self._extra_env = dict(extra_env or {})
        self._preload = preload
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None
        self._lock = threading.RLock()

    # ---------------------------------------------------------------- properties

    @property
    def install(self) -> LocalInstall | None:
        """The install in use (None until :meth:`start` provisioned it, when none was given)."""
        return self._install

    @property
    def port(self) -> int | None:
        """The port (None until :meth:`start` picked one, when none was given)."""
        return self._port

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, the ``OLLAMA_HOST`` form. Raises if no port is known yet."""
        if self._port is None:
            raise LocalOllamaError("the local Ollama has no port yet: call start() first")
        return f"127.0.0.1:{self._port}"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``. Raises if no port is known yet."""
        return f"http://{self.host}"

    @property
    def model(self) -> str:
        """The model name the server lists once started."""
        return self._model

    @property
    def pid(self) -> int | None:
        """The ``ollama serve`` process id while it runs, else None."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def log_path(self) -> Path | None:
        """The server's log file (``<home>/logs/serve-<port>.log``), once started."""
        return self._log_path

    def is_running(self) -> bool:
        """Whether the server process is alive (it may not be ready yet). Never blocks."""
        proc = self._proc
        return proc is not None and proc.poll() is None

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.is_running() else "stopped"
        return f"LocalOllama(port={self._port}, model={self._model!r}, {state})"

    # ---------------------------------------------------------------- start

    def start(self, timeout: float = 60) -> None:
        """Start the server, wait until it answers, and make sure it lists :attr:`model`.

        A no-op if already running. Blocks until ready: ≈ 0.05 s for the server to answer with a
        finished install and a registered model, + ≈ 0.3-1 s to load the model (``preload``),
        + ≈ 0.3-1 s the first time the model is created in the models folder, + the install
        itself (≈ 5-10 s) the very first time; never longer than *timeout* seconds overall (the
        install included), after which it stops what it started and raises.

        Raises:
            LocalOllamaError: the requested port is in use, the server exited or did not answer in
                time (the message includes the tail of its log), the model file is missing, or
                ``ollama create`` failed.
        """
        with self._lock:
            if self.is_running():
                return
            self._reap()
            deadline = time.monotonic() + timeout
            if self._install is None:
                self._install = ensure_installed(timeout=_left(deadline, "installing"))
            install = self._install
            attempts = 1 if self._requested_port is not None else 3
            for attempt in range(attempts):
                port = self._requested_port if self._requested_port is not None else _free_port()
                if not _port_is_free(port):
                    raise LocalOllamaError(
                        f"cannot start the local Ollama on 127.0.0.1:{port}: the port is already "
                        "in use (another server? pick another port or leave it unset)"
                    )
                try:
                    self._launch(install, port, deadline)
                    break
                except _AddressInUse:
                    if attempt + 1 == attempts:
                        raise
            try:
                self._ensure_model(install, deadline)
                if self._preload:
                    self._load_model(deadline)
            except BaseException:
                self._stop_locked(timeout=5)
                raise
            with _running_lock:
                _running.add(self)

    def _server_env(self, install: LocalInstall, port: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_")}
        env.update(DEFAULT_SERVER_ENV)
        env["OLLAMA_NUM_PARALLEL"] = str(self._num_parallel)
        env.update(
            OLLAMA_HOST=f"127.0.0.1:{port}",
            OLLAMA_MODELS=str(install.models_dir),
            LD_LIBRARY_PATH=os.pathsep.join(
                p for p in (str(install.bin_dir), os.environ.get("LD_LIBRARY_PATH", "")) if p
            ),
            HOME=str(install.home),
        )
        env.update(self._extra_env)
        return env

    def _launch(self, install: LocalInstall, port: int, deadline: float) -> None:
        """Spawn ``ollama serve`` on *port* and wait for ``/api/version``, until *deadline*."""
        install.models_dir.mkdir(parents=True, exist_ok=True)
        log_dir = install.home / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"serve-{port}.log"
        _prune_logs(log_dir, keep=_LOGS_KEPT)
        env = self._server_env(install, port)
        cmd = [str(install.ollama_binary), "serve"]
        preexec = _make_preexec(os.getpid())

        with open(log_path, "wb") as log:

            def popen() -> subprocess.Popen[bytes]:
                return subprocess.Popen(
                    cmd,
                    env=env,
                    cwd=str(install.home),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=preexec,
                    close_fds=True,
                )

            try:
                proc = _spawner.spawn(popen, timeout=_left(deadline, "starting"))
            except OSError as exc:
                raise LocalOllamaError(f"could not run {cmd[0]}: {exc}") from exc
        self._proc, self._port, self._log_path = proc, port, log_path

        url = f"http://127.0.0.1:{port}/api/version"
        while True:
            rc = proc.poll()
            if rc is not None:
                tail = _log_tail(log_path)
                self._reap()
                if "address already in use" in tail:
                    raise _AddressInUse(
                        f"cannot start the local Ollama on 127.0.0.1:{port}: the port is already "
                        f"in use. Log {log_path}:\n{tail}"
                    )
                raise LocalOllamaError(
                    f"the local Ollama ({cmd[0]} serve on 127.0.0.1:{port}) exited with code "
                    f"{rc} before answering. Log {log_path}:\n{tail}"
                )
            remaining = deadline - time.monotonic()
            with contextlib.suppress(OSError, ValueError):
                data = _get_json(url, timeout=max(0.05, min(1.0, remaining)))
                if isinstance(data, dict) and "version" in data and proc.poll() is None:
                    return
            if time.monotonic() >= deadline:
                self._stop_locked(timeout=5)
                raise LocalOllamaError(
                    f"the local Ollama on 127.0.0.1:{port} did not answer /api/version in time. "
                    f"Log {log_path}:\n{_log_tail(log_path)}"
                )
            time.sleep(_POLL_INTERVAL)

    def _list_models(self, timeout: float) -> set[str]:
        data = _get_json(self.base_url + "/api/tags", timeout)
        models = data.get("models") if isinstance(data, dict) else None
        return {
            _model_key(str(m.get("name") or m.get("model")))
            for m in models or []
            if isinstance(m, dict)
        }

    def _ensure_model(self, install: LocalInstall, deadline: float) -> None:
        """Register :attr:`model` from the GGUF unless listed; blocks until *deadline* at most."""
        key = _model_key(self._model)
        try:
            if key in self._list_models(timeout=min(10.0, _left(deadline, "listing models"))):
                return
        except (OSError, ValueError) as exc:
            raise LocalOllamaError(
                f"the local Ollama at {self.base_url} did not list its models: {exc}"
            ) from exc
        # Servers sharing a models folder create one at a time (and see each other's result).
        with _file_lock(install.home / ".models.lock", deadline):
            if key in self._list_models(timeout=min(10.0, _left(deadline, "listing models"))):
                return
            self._create_model(install, deadline)
            if key not in self._list_models(timeout=min(10.0, _left(deadline, "listing models"))):
                raise LocalOllamaError(
                    f"ollama create {self._model} reported success but {self.base_url} does not "
                    f"list the model. Log {self._log_path}:\n{_log_tail(self._log_path)}"
                )

    def _load_model(self, deadline: float) -> None:
        """Load :attr:`model` into memory (an empty ``/api/generate``); blocks until *deadline*."""
        body = json.dumps({"model": self._model}).encode()
        request = urllib.request.Request(
            self.base_url + "/api/generate",
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with _opener.open(request, timeout=_left(deadline, "loading the model")) as response:
                response.read()
        except (OSError, ValueError) as exc:
            raise LocalOllamaError(
                f"the local Ollama at {self.base_url} could not load the model {self._model!r}: "
                f"{exc}. Log {self._log_path}:\n{_log_tail(self._log_path)}"
            ) from exc

    def _create_model(self, install: LocalInstall, deadline: float) -> None:
        gguf = install.gguf_path
        if not gguf.is_file():
            raise LocalOllamaError(
                f"cannot create the model {self._model!r}: its GGUF file {gguf} does not exist "
                "(a broken install? remove the marker "
                f"{install.home / '.installed.json'} to reinstall)"
            )
        env = self._server_env(install, self._port or 0)
        fd, modelfile = tempfile.mkstemp(prefix="Modelfile-", dir=install.home)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(f"FROM {gguf}\n")
            try:
                proc = subprocess.run(
                    [str(install.ollama_binary), "create", self._model, "-f", modelfile],
                    env=env,
                    cwd=str(install.home),
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=_left(deadline, f"creating the model {self._model}"),
                )
            except subprocess.TimeoutExpired:
                raise LocalOllamaError(
                    f"timed out creating the model {self._model!r} from {gguf}"
                ) from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(modelfile)
        if proc.returncode != 0:
            output = _ANSI.sub("", (proc.stdout + proc.stderr).decode("utf-8", "replace"))
            raise LocalOllamaError(
                f"ollama create {self._model} from {gguf} failed (exit {proc.returncode}):\n"
                f"{output.strip()[-_LOG_TAIL_CHARS:]}"
            )

    # ---------------------------------------------------------------- stop

    def stop(self, timeout: float = 10) -> None:
        """Stop the server and reap it; idempotent.

        ``SIGTERM`` (Ollama then stops its model runners), wait up to *timeout* seconds, then
        ``SIGKILL`` to the whole process group and wait up to 5 s more. Blocks for the shutdown:
        ≈ 10-100 ms normally, never more than *timeout* + 5 s.
        """
        with self._lock:
            self._stop_locked(timeout)

    def _stop_locked(self, timeout: float) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=max(0.0, timeout))
            except subprocess.TimeoutExpired:
                _killpg(proc.pid)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
        _killpg(proc.pid)  # runners left behind, if any (the group outlives its leader)
        self._reap()

    def _reap(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is not None:
            self._proc = None
            with _running_lock:
                _running.discard(self)

    def __enter__(self) -> LocalOllama:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError as exc:
        if exc.errno not in (errno.ESRCH, errno.EPERM):
            raise


def _left(deadline: float, doing: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise LocalOllamaError(f"timed out {doing} (local Ollama)")
    return left


def _prune_logs(log_dir: Path, keep: int) -> None:
    """Delete all but the *keep* newest ``serve-*.log`` files (best effort, never blocks long)."""
    try:
        logs = sorted(log_dir.glob("serve-*.log"), key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return
    for old in logs[keep:]:
        with contextlib.suppress(OSError):
            old.unlink()


def _log_tail(path: Path | None, limit: int = _LOG_TAIL_CHARS) -> str:
    if path is None:
        return "(no log)"
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            text = f.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(log unreadable: {exc})"
    return _ANSI.sub("", text).strip() or "(empty log)"


# --------------------------------------------------------------------------------------------------
# Process-wide embedded instance and exit hook


_embedded: LocalOllama | None = None
_embedded_lock = threading.Lock()


def ensure_embedded_ollama(
    timeout: float = 120.0, *, install: LocalInstall | None = None
) -> LocalOllama:
    """The process-wide local Ollama, started on first use (install included, unless
    ``install`` names an existing one) and shared.

    Thread-safe: concurrent callers wait for the one start. If the server died since, a new one
    is started. Stopped at interpreter exit (bounded, never hangs the exit). Blocks: first call
    ≈ 1 s (start + model load; + ≈ 5-10 s for a first install), later calls return at once; at
    most *timeout* seconds, including the wait for a concurrent caller's start.

    Raises:
        LocalOllamaError: as :meth:`LocalOllama.start`, or *timeout* passed.
    """
    global _embedded
    deadline = time.monotonic() + timeout
    if not _embedded_lock.acquire(timeout=timeout):
        raise LocalOllamaError("timed out waiting for another thread to start the local Ollama")
    try:
        if _embedded is not None and _embedded.is_running():
            return _embedded
        if _embedded is not None:
            _embedded.stop(timeout=5)
        server = LocalOllama(install)
        server.start(timeout=_left(deadline, "starting the embedded Ollama"))
        _embedded = server
        return server
    finally:
        _embedded_lock.release()


def stop_embedded_ollama(timeout: float = 10.0) -> None:
    """Stop the process-wide instance if it runs (see :meth:`LocalOllama.stop` for how long)."""
    global _embedded
    with _embedded_lock:
        server, _embedded = _embedded, None
    if server is not None:
        server.stop(timeout=timeout)


def _stop_all_at_exit(timeout: float = 3.0) -> None:
    """Stop every running server: ``SIGTERM`` to all, then wait; ≤ *timeout* + 5 s in total."""
    with _running_lock:
        servers = list(_running)
    for server in servers:
        proc = server._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGTERM)
    end = time.monotonic() + timeout
    for server in servers:
        # Not under the instance lock: a thread stuck in start() must not hang the exit.
        proc = server._proc
        if proc is None:
            continue
        try:
            proc.wait(timeout=max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            _killpg(proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        _killpg(proc.pid)


def _forget_servers_in_child() -> None:
    """After ``os.fork()``, in the child: the servers are the parent's, not ours to stop."""
    global _running_lock, _embedded_lock, _embedded
    _running.clear()
    _running_lock = threading.Lock()  # a lock another thread held at the fork stays held
    _embedded_lock = threading.Lock()
    _embedded = None


atexit.register(_stop_all_at_exit)
if hasattr(os, "register_at_fork"):  # POSIX; the module must still import elsewhere
    os.register_at_fork(after_in_child=_forget_servers_in_child)
