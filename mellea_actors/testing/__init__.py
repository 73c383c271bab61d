"""Testing helpers: a scripted Ollama-protocol server for deterministic tests, faults, benches.

* :class:`ScriptedOllama`: the server in a daemon thread (tests).
* :class:`ScriptedOllamaProcess` / ``python -m mellea_actors.testing``: the server in a subprocess
  (benchmarks; it does not share the caller's GIL).
* :class:`Script`: what the server answers to one generation request (tokens, pacing, faults).
* :class:`RequestRecord`: an immutable snapshot of what the server saw and did for one request.
"""

from mellea_actors.testing.script import GENERATION_PATHS, Outcome, RequestRecord, Script
from mellea_actors.testing.scripted_server import (
    OLLAMA_VERSION,
    ScriptedOllama,
    ScriptedOllamaProcess,
    ScriptSource,
)

__all__ = [
    "GENERATION_PATHS",
    "OLLAMA_VERSION",
    "Outcome",
    "RequestRecord",
    "Script",
    "ScriptSource",
    "ScriptedOllama",
    "ScriptedOllamaProcess",
]
