"""``python -m mellea_actors.testing``: run the scripted Ollama-protocol server in this process.

Prints the base URL (``http://HOST:PORT``) as the first line of stdout, then serves until SIGTERM or
SIGINT, or until stdin reaches end-of-file (so a parent that dies takes the server with it; pass
``--ignore-stdin`` to serve with stdin closed or redirected from ``/dev/null``).

The event loop runs on the main thread; a daemon thread only watches stdin and asks the loop to
stop.

Examples::

    python -m mellea_actors.testing --tokens 5000              # 5,000 tokens, as fast as possible
    python -m mellea_actors.testing --tokens 100 --delay 0.05  # 20 tokens/s per stream
    python -m mellea_actors.testing --script-json '{"tokens": ["a", "b"], "drop_after": 1}'
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import sys
import threading

from mellea_actors.testing.script import Script
from mellea_actors.testing.scripted_server import _ServerCore


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mellea_actors.testing",
        description="A scripted Ollama-protocol server (real HTTP, deterministic answers, faults).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument(
        "--model", action="append", dest="models", help="a served model name (repeatable)"
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--tokens", type=int, help="answer N distinct tokens 't0 ', 't1 ', ...")
    what.add_argument("--text", help="answer this text, one token per word")
    what.add_argument("--script-json", help="the whole default Script as JSON (Script.to_json())")
    parser.add_argument("--delay", type=float, help="seconds between tokens")
    parser.add_argument("--first-delay", type=float, help="seconds before the first token")
    parser.add_argument(
        "--record-token-times", action="store_true", help="record each token's send time"
    )
    parser.add_argument(
        "--ignore-stdin", action="store_true", help="do not stop when stdin reaches EOF"
    )
    return parser.parse_args(argv)


def _script_from(args: argparse.Namespace) -> Script:
    if args.script_json:
        script = Script.from_json(json.loads(args.script_json))
    elif args.tokens is not None:
        script = Script.counting(args.tokens)
    elif args.text is not None:
        script = Script.from_text(args.text)
    else:
        script = Script()
    pacing: dict[str, float] = {}
    if args.delay is not None:
        pacing["delay"] = args.delay
    if args.first_delay is not None:
        pacing["first_delay"] = args.first_delay
    if pacing:
        script = Script.from_json({**script.to_json(), **pacing})
    return script


def _raise_open_files() -> None:
    """One socket per connection: let the server hold as many as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < limit:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))


async def _serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    core = _ServerCore(
        loop,
        _script_from(args),
        args.models or ["scripted"],
        args.host,
        args.port,
        args.record_token_times,
    )
    await core.open()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if not args.ignore_stdin:

        def watch_stdin() -> None:
            with contextlib.suppress(OSError, ValueError):
                while os.read(sys.stdin.fileno(), 65536):
                    pass
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(stop.set)

        threading.Thread(target=watch_stdin, name="stdin-watch", daemon=True).start()
    print(f"http://{args.host}:{core.port}", flush=True)
    await stop.wait()
    await core.shutdown()


def main(argv: list[str] | None = None) -> int:
    """Run the server until told to stop; returns the exit status."""
    args = _parse_args(argv)
    _raise_open_files()
    try:
        asyncio.run(_serve(args))
    except OSError as e:
        print(f"error: {e}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
