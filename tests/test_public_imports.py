"""Every public import path: SPEC §1's table and the names the README documents.

Each row imports the module with ``importlib`` and checks that the name is there; where the same
object is offered under two paths, it must be the *same* object (a re-export, not a copy).
"""

from __future__ import annotations

import builtins
import importlib
import re

import pytest

# -- SPEC §1 --------------------------------------------------------------------------------------
SPEC_ROWS: list[tuple[str, str]] = [
    ("mellea_actors", "start_session"),
    ("mellea_actors", "MelleaSession"),
    ("mellea_actors.stdlib.session", "start_session"),
    ("mellea_actors.stdlib.session", "MelleaSession"),
    ("mellea_actors.helpers.async_helpers", "wait_for_all_mots"),
    ("mellea_actors.backends", "ModelOption"),
    ("mellea_actors.stdlib.context", "SimpleContext"),
    ("mellea_actors.stdlib.context", "ChatContext"),
    ("mellea_actors.core.backend", "Backend"),
    *[
        ("mellea_actors.core.base", n)
        for n in ("Context", "ModelOutputThunk", "CBlock", "Component")
    ],
    *[
        ("mellea_actors.core.requirement", n)
        for n in ("Requirement", "ValidationResult", "PartialValidationResult")
    ],
    ("mellea_actors.stdlib.components", "Instruction"),
    ("mellea_actors.stdlib.components", "Message"),
    *[
        ("mellea_actors.stdlib.streaming", n)
        for n in (
            "stream_with_chunking",
            "StreamChunkingResult",
            "StreamEvent",
            "ChunkEvent",
            "QuickCheckEvent",
            "StreamingDoneEvent",
            "FullValidationEvent",
            "CompletedEvent",
            "ErrorEvent",
            "RetryEvent",
        )
    ],
    *[
        (module, n)
        for module in ("mellea_actors.stdlib.chunking", "mellea_actors.stdlib.streaming")
        for n in ("ChunkingStrategy", "SentenceChunker", "WordChunker", "ParagraphChunker")
    ],
    *[
        ("mellea_actors.backends.model_ids", n)
        for n in (
            "ModelIdentifier",
            "IBM_GRANITE_4_HYBRID_MICRO",
            "IBM_GRANITE_4_1_3B",
            "IBM_GRANITE_4_2_3B",
            "IBM_GRANITE_3_3_8B",
            "META_LLAMA_3_2_1B",
            "QWEN3_0_6B",
        )
    ],
    *[
        ("mellea_actors.stdlib.requirements", n)
        for n in ("req", "check", "simple_validate", "reqify")
    ],
    # the Mellea 0.8 face, same engine
    *[("mellea_actors.stdlib.streaming", n) for n in ("stream", "Streamer", "EventStreamer")],
    *[
        ("mellea_actors.core.chunking", n)
        for n in (
            "ChunkingStrategy",
            "SentenceChunking",
            "WordChunking",
            "ParagraphChunking",
            "Chunker",
            "resolve_chunking_strategy",
        )
    ],
    ("mellea_actors.core.requirement", "PartialValidationSummary"),
]

#: ``Requirement`` members SPEC §1 names for the Mellea 0.8 face (not module-level names).
REQUIREMENT_MEMBERS = ["_stream_validate", "stream_flush", "stream_validate", "chunking"]

# -- the README -----------------------------------------------------------------------------------
README_ROWS: list[tuple[str, str]] = [
    # "Use", "Without async", "Command line", "Streaming with per-chunk validation"
    ("mellea_actors.runtime.messages", "AwaitOutcome"),
    ("mellea_actors.runtime.messages", "ReadNew"),
    ("mellea_actors.runtime.messages", "ReaderGone"),
    ("mellea_actors.runtime.log", "configure_output"),
    ("mellea_actors.runtime.log", "SupervisionLog"),
    ("mellea_actors.testing", "ScriptedOllama"),
    ("mellea_actors.testing", "Script"),
    ("mellea_actors.testing", "RequestRecord"),
    *[
        ("mellea_actors.errors", n)
        for n in (
            "BackendUnavailableError",
            "ModelNotFoundError",
            "SingleReaderError",
            "CircuitOpenError",
            "AskTimeoutError",
        )
    ],
    # the design map
    *[("mellea_actors.core.context_chain", n) for n in ("Context", "SimpleContext", "ChatContext")],
    ("mellea_actors.core.message", "Message"),
    ("mellea_actors.core.model_output", "ModelOutputThunk"),
    *[("mellea_actors.core.requirement", n) for n in ("req", "check")],
    *[("mellea_actors.core.cblock", n) for n in ("CBlock", "Component")],
    *[("mellea_actors.stdlib.mobject", n) for n in ("Query", "Transform")],
    ("mellea_actors.backends.ollama", "OllamaBackend"),
    ("mellea_actors.backends.model_options", "ModelOption"),
    *[("mellea_actors.runtime.crossing", n) for n in ("hop", "Waker", "Signal", "Channel")],
    *[("mellea_actors.runtime.loop", n) for n in ("ActorLoop", "LoopActor")],
    ("mellea_actors.runtime.actor_base", "RuntimeActor"),
    ("mellea_actors.runtime.system", "ActorSystem"),
    ("mellea_actors.runtime.root_supervisor", "RootSupervisor"),
    ("mellea_actors.runtime.generation_supervisor", "GenerationSupervisor"),
    *[("mellea_actors.runtime.thunk_actor", n) for n in ("ThunkActor", "ThunkCell")],
    ("mellea_actors.runtime.thunk_handle", "ThunkHandle"),
    ("mellea_actors.runtime.stream_actor", "StreamActor"),
    ("mellea_actors.runtime.validator_actor", "ValidatorActor"),
    *[("mellea_actors.transport.chat_request", n) for n in ("GenerationRequest", "ChatMessage")],
]

#: (path, name) pairs that must be the very same object.
SAME_OBJECT: list[tuple[tuple[str, str], tuple[str, str]]] = [
    (("mellea_actors", "start_session"), ("mellea_actors.stdlib.session", "start_session")),
    (("mellea_actors", "MelleaSession"), ("mellea_actors.stdlib.session", "MelleaSession")),
    *[
        ((f"mellea_actors.{a}", n), ("mellea_actors.core.context_chain", n))
        for a, n in (
            ("stdlib.context", "SimpleContext"),
            ("stdlib.context", "ChatContext"),
            ("stdlib.context", "Context"),
            ("core.base", "Context"),
        )
    ],
    (("mellea_actors.stdlib.components", "Message"), ("mellea_actors.core.message", "Message")),
    *[
        ((module, n), ("mellea_actors.core.cblock", n))
        for module in ("mellea_actors.core.base", "mellea_actors.stdlib.components")
        for n in ("CBlock", "Component")
    ],
    (
        ("mellea_actors.core.base", "ModelOutputThunk"),
        ("mellea_actors.core.model_output", "ModelOutputThunk"),
    ),
    (
        ("mellea_actors.backends", "ModelOption"),
        ("mellea_actors.backends.model_options", "ModelOption"),
    ),
    (("mellea_actors.backends", "Backend"), ("mellea_actors.core.backend", "Backend")),
    *[
        (("mellea_actors.stdlib.requirements", n), ("mellea_actors.core.requirement", n))
        for n in ("req", "check", "simple_validate", "reqify", "Requirement", "ValidationResult")
    ],
    *[
        (("mellea_actors.stdlib.streaming", n), ("mellea_actors.stdlib.chunking", n))
        for n in ("ChunkingStrategy", "SentenceChunker", "WordChunker", "ParagraphChunker")
    ],
    # Mellea 0.8's core.chunking serves the 0.7 objects (one implementation)
    (
        ("mellea_actors.core.chunking", "ChunkingStrategy"),
        ("mellea_actors.stdlib.chunking", "ChunkingStrategy"),
    ),
    *[
        (("mellea_actors.core.chunking", f"{n}ing"), ("mellea_actors.stdlib.chunking", f"{n}er"))
        for n in ("SentenceChunk", "WordChunk", "ParagraphChunk")
    ],
    *[
        (("mellea_actors.stdlib.streaming", n), ("mellea_actors.stdlib.stream_events", n))
        for n in (
            "StreamEvent",
            "ChunkEvent",
            "QuickCheckEvent",
            "StreamingDoneEvent",
            "FullValidationEvent",
            "CompletedEvent",
            "ErrorEvent",
            "RetryEvent",
        )
    ],
    *[
        (("mellea_actors.stdlib.streaming", n), ("mellea_actors.errors", n))
        for n in ("ValidatorError", "ValidatorTimeoutError", "InvalidVerdictError")
    ],
    *[
        (("mellea_actors.runtime.messages", n), ("mellea_actors.transport.chat_request", n))
        for n in ("GenerationRequest", "ChatMessage")
    ],
    (
        ("mellea_actors.runtime.validator_actor", "ValidationCheck"),
        ("mellea_actors.runtime.stream_contract", "ValidationCheck"),
    ),
    (
        ("mellea_actors.testing", "ScriptedOllama"),
        ("mellea_actors.testing.scripted_server", "ScriptedOllama"),
    ),
    (("mellea_actors.testing", "Script"), ("mellea_actors.testing.script", "Script")),
    # the engine's curated __init__ (README: "__init__ re-exports it")
    *[
        (("mellea_actors.runtime", n), (f"mellea_actors.runtime.{module}", n))
        for module, n in (
            ("loop", "ActorLoop"),
            ("loop", "LoopActor"),
            ("loop", "LoopFuture"),
            ("loop", "ask_async"),
            ("system", "ActorSystem"),
            ("restart_policy", "RestartPolicy"),
            ("breaker", "BreakerPolicy"),
            ("breaker", "BreakerState"),
            ("log", "SupervisionLog"),
            ("log", "configure_output"),
            ("log", "LOGGER_NAME"),
            ("actor_base", "RuntimeActor"),
            ("actor_base", "handles"),
            ("thunk_handle", "ThunkHandle"),
        )
    ],
]


def error_tree() -> list[tuple[str, str | None, tuple[str, ...]]]:
    """The exception tree drawn in ``mellea_actors/errors.py``'s docstring (the README points to
    it): ``(name, parent, also)`` per node, ``also`` the extra bases written ``(also X)``."""
    errors = importlib.import_module("mellea_actors.errors")
    line_re = re.compile(r"^(?P<lead>[ │├└─]*?)(?P<name>[A-Z]\w*Error)(?: \(also (?P<also>\w+)\))?")
    nodes: list[tuple[str, str | None, tuple[str, ...]]] = []
    stack: list[tuple[int, str]] = []  # (column of the name, name)
    for line in (errors.__doc__ or "").splitlines():
        match = line_re.match(line)
        if match is None or (nodes and not match["lead"].strip(" ")):
            continue  # prose, or an indented name that is not in the drawing
        column = len(match["lead"])
        while stack and stack[-1][0] >= column:
            stack.pop()
        parent = stack[-1][1] if stack else None
        nodes.append((match["name"], parent, (match["also"],) if match["also"] else ()))
        stack.append((column, match["name"]))
    return nodes


ERROR_TREE = error_tree()


def resolve(path: str, name: str) -> object:
    module = importlib.import_module(path)
    assert hasattr(module, name), f"`from {path} import {name}` fails: {path} has no {name!r}"
    return getattr(module, name)


def ids(rows: list[tuple[str, str]]) -> list[str]:
    return [f"{path}:{name}" for path, name in rows]


@pytest.mark.parametrize(("path", "name"), SPEC_ROWS, ids=ids(SPEC_ROWS))
def test_spec_import_path(path: str, name: str) -> None:
    assert resolve(path, name) is not None


@pytest.mark.parametrize("member", REQUIREMENT_MEMBERS)
def test_requirement_members_of_the_08_face(member: str) -> None:
    requirement = resolve("mellea_actors.core.requirement", "Requirement")
    assert hasattr(requirement, member), f"Requirement has no {member!r}"
    assert hasattr(requirement("x", chunking="sentence"), member)


@pytest.mark.parametrize(("path", "name"), README_ROWS, ids=ids(README_ROWS))
def test_readme_import_path(path: str, name: str) -> None:
    assert resolve(path, name) is not None


@pytest.mark.parametrize(
    ("one", "other"), SAME_OBJECT, ids=[f"{a[0]}:{a[1]}={b[0]}" for a, b in SAME_OBJECT]
)
def test_reexports_are_the_same_object(one: tuple[str, str], other: tuple[str, str]) -> None:
    assert resolve(*one) is resolve(*other), f"{one} and {other} are different objects"


def base_class(name: str) -> type:
    errors = importlib.import_module("mellea_actors.errors")
    cls = getattr(errors, name, None) or getattr(builtins, name)
    assert isinstance(cls, type)
    return cls


def test_the_error_tree_was_read() -> None:
    assert ERROR_TREE[0] == ("MelleaActorsError", None, ())
    assert len(ERROR_TREE) >= 17, ERROR_TREE


@pytest.mark.parametrize(("name", "parent", "also"), ERROR_TREE, ids=[n for n, _, _ in ERROR_TREE])
def test_the_error_tree(name: str, parent: str | None, also: tuple[str, ...]) -> None:
    errors = importlib.import_module("mellea_actors.errors")
    cls = resolve("mellea_actors.errors", name)
    assert isinstance(cls, type) and issubclass(cls, Exception)
    assert name in errors.__all__
    for base in (parent or "Exception", *also):
        assert issubclass(cls, base_class(base)), f"{name} is not a {base}, as errors.py draws it"


def test_the_error_tree_is_complete() -> None:
    errors = importlib.import_module("mellea_actors.errors")
    assert sorted(errors.__all__) == sorted(n for n, _, _ in ERROR_TREE)


def test_backend_unavailable_is_a_connection_error() -> None:
    assert issubclass(base_class("BackendUnavailableError"), ConnectionError)


PUBLIC_MODULES = sorted({path for path, _ in SPEC_ROWS + README_ROWS} | {"mellea_actors.runtime"})


@pytest.mark.parametrize("path", PUBLIC_MODULES)
def test_every_name_in_dunder_all_exists(path: str) -> None:
    module = importlib.import_module(path)
    missing = [n for n in getattr(module, "__all__", ()) if not hasattr(module, n)]
    assert not missing, f"{path}.__all__ lists names it does not have: {missing}"
