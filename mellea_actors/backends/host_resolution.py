"""Which Ollama host a session talks to, and when the embedded local Ollama is used.

One decision, in one place (``start_session`` and the command line both call
:func:`resolve_host`), in this order:

1. ``base_url``, when given;
2. else ``OLLAMA_HOST``, when set;
3. else ``http://127.0.0.1:11434`` if an Ollama answers there (probed for 0.5 s);
4. else the project's embedded local Ollama (:mod:`mellea_actors.local`), started on demand and
   stopped at exit — unless ``MELLEA_ACTORS_NO_EMBEDDED=1``, in which case the default host is
   returned and the session's check names it.

Host strings are normalised as the ``ollama`` client does (``host:port``, ``http://host`` …).
"""

from __future__ import annotations

import os

from mellea_actors.transport.ollama_http import DEFAULT_HOST, normalize_host

__all__ = ["DEFAULT_HOST", "resolve_host"]


def resolve_host(base_url: str | None) -> str:
    """The base URL of the Ollama host to use (see the module docstring for the order)."""
    if base_url:
        return normalize_host(base_url)
    env = os.environ.get("OLLAMA_HOST")
    if env:
        return normalize_host(env, name="OLLAMA_HOST")
    from mellea_actors.local import server as local_server  # only when nothing is configured

    if local_server.is_ollama_reachable(DEFAULT_HOST, timeout=0.5):
        return DEFAULT_HOST
    if os.environ.get("MELLEA_ACTORS_NO_EMBEDDED") != "1":
        return local_server.ensure_embedded_ollama().base_url
    return DEFAULT_HOST
