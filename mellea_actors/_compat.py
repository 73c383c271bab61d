"""Every internal of a dependency that mellea_actors relies on, fenced in one module.

Nothing else in the package touches a private name of pykka or ollama; it calls the helpers
here. ``tests/test_compat.py`` pins each assumption, so an upgrade of pykka or ollama that
changes one fails that test loudly, by name, instead of some actor hanging.

pykka (4.x):

* ``pykka._threading.ThreadingFuture``: the base of our awaitable future
  (:class:`mellea_actors.runtime.loop.LoopFuture`). We read its ``_condition`` (the lock that
  guards the result), ``_result`` (None until set) and ``_get_hook`` (set by
  ``Future.map``/``join``-style conversions).
* ``pykka._envelope.Envelope`` (``message``, ``reply_to``): what ``ActorRef.tell``/``ask`` put
  in an actor's inbox; our inbox hands each one to the actor loop.
* ``pykka.messages._ActorStop``: the message ``ActorRef.stop()`` sends.
* ``pykka.Actor``'s implementation hooks: ``_create_actor_inbox``, ``_create_future``,
  ``_start_actor_loop`` (overridden to serve the mailbox from an event loop), ``_handle_receive``
  (dispatches one message; answers ``_ActorStop`` by calling ``_stop``) and ``_stop``
  (overridden: our stop runs ``on_stop`` on the loop thread).

ollama (0.6.x):

* ``ollama._client._parse_host``: the client's own host normalisation (``host:port``,
  ``http://host`` …), so that our host strings mean what the client's do.
* ``ollama.AsyncClient._client``: its ``httpx.AsyncClient``, for the one request the client has
  no method for (``GET /api/version``) and for closing the connection pool.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

import httpx
import ollama
import pykka
from pykka import _envelope as _pykka_envelope
from pykka import _threading as _pykka_threading
from pykka import messages as _pykka_messages

__all__ = [
    "PYKKA_ACTOR_HOOKS",
    "ActorStop",
    "Envelope",
    "ThreadingFuture",
    "future_condition",
    "future_has_get_hook",
    "future_is_set",
    "handle_receive",
    "http_client_of",
    "make_actor_stop",
    "parse_host",
]

ThreadingFuture = _pykka_threading.ThreadingFuture
Envelope = _pykka_envelope.Envelope
ActorStop: type[Any] = _pykka_messages._ActorStop

# ``ollama._client`` as an attribute of the package is its default *Client instance*, which
# shadows the submodule of the same name: import the module itself.
_ollama_client: Any = importlib.import_module("ollama._client")

#: The private methods of ``pykka.Actor`` that :class:`~mellea_actors.runtime.loop.LoopActor`
#: overrides or calls.
PYKKA_ACTOR_HOOKS: tuple[str, ...] = (
    "_create_actor_inbox",
    "_create_future",
    "_start_actor_loop",
    "_handle_receive",
    "_stop",
)


def make_actor_stop() -> Any:
    """The message ``ActorRef.stop()`` sends (to stop an actor behind its queued messages)."""
    return ActorStop()


def future_condition(future: Any) -> threading.Condition:
    """The lock that guards a ThreadingFuture's result."""
    condition: threading.Condition = future._condition
    return condition


def future_is_set(future: Any) -> bool:
    """Whether a value or an exception was set (read under :func:`future_condition`, or racy)."""
    return future._result is not None


def future_has_get_hook(future: Any) -> bool:
    """Whether the future is a converted one (``set_get_hook``): it has no result of its own."""
    return future._get_hook is not None


def handle_receive(actor: pykka.Actor, message: Any) -> Any:
    """pykka's dispatch of one message (``on_receive``, proxies' calls, ``_ActorStop``)."""
    return actor._handle_receive(message)


def parse_host(host: str) -> str:
    """The ollama client's normalisation of a host string into a base URL."""
    return str(_ollama_client._parse_host(host))


def http_client_of(client: ollama.AsyncClient) -> httpx.AsyncClient:
    """The ``httpx.AsyncClient`` inside an ``ollama.AsyncClient``."""
    http: httpx.AsyncClient = client._client
    return http
