"""The engine: actors, the messages between them, supervision, and the loop that serves them.

The public surface of the engine is re-exported here (pykka-style: one concept per module, a
curated ``__init__``); the modules themselves are listed in the README's design map.

Layers (data flows one way)::

    facade (core, stdlib, backends, helpers)  →  runtime (this package)  →  transport

The runtime never imports the facade, the transport never imports the runtime. Every
loop↔thread hand-off is in :mod:`~mellea_actors.runtime.crossing`; every private name of a
dependency is in :mod:`mellea_actors._compat`.

Words, used the same way everywhere in the engine:

* a **delta** is what Ollama sends in one streamed object (``message.content``): the unit of a
  thunk's buffer (``ThunkCell.deltas``, ``DeltasArrived``, ``astream()``'s pieces);
* a **chunk** is a piece of the text cut by a chunking strategy (a sentence, a word, a
  paragraph): the unit that validators judge and ``stream_with_chunking`` delivers
  (``ChunksFound``, ``ChunkEvent``).

The supervision log keeps SPEC §7's public record names, which predate the distinction:
``first_chunk`` is the first delta of a generation, and the ``chunks`` field of ``generation_*``
records counts deltas.
"""

from mellea_actors.runtime.actor_base import RuntimeActor, handles
from mellea_actors.runtime.breaker import BreakerPolicy, BreakerState
from mellea_actors.runtime.host_pool import HostSpec, HostState, HostView
from mellea_actors.runtime.log import LOGGER_NAME, SupervisionLog, configure_output
from mellea_actors.runtime.loop import ActorLoop, LoopActor, LoopFuture, ask_async
from mellea_actors.runtime.restart_policy import RestartPolicy
from mellea_actors.runtime.system import ActorSystem, Hosts
from mellea_actors.runtime.thunk_handle import ThunkHandle

__all__ = [
    "LOGGER_NAME",
    "ActorLoop",
    "ActorSystem",
    "BreakerPolicy",
    "BreakerState",
    "HostSpec",
    "HostState",
    "HostView",
    "Hosts",
    "LoopActor",
    "LoopFuture",
    "RestartPolicy",
    "RuntimeActor",
    "SupervisionLog",
    "ThunkHandle",
    "ask_async",
    "configure_output",
    "handles",
]
