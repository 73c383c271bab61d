"""mellea_actors: Mellea's async and streaming API on an actor runtime (pykka), against Ollama.

The public face mirrors Mellea 0.7.0 (replace ``mellea`` by ``mellea_actors`` in imports). The
engine lives in :mod:`mellea_actors.runtime` (actors, messages, supervision) and
:mod:`mellea_actors.transport` (the Ollama client); errors in :mod:`mellea_actors.errors`.
"""

from mellea_actors.stdlib.session import MelleaSession, start_session

__all__ = ["MelleaSession", "start_session"]
__version__ = "0.1.0"
