"""Which Ollama host a session talks to, and when the embedded local Ollama is used.

One decision, in one place (``start_session`` and the command line both call
:func:`resolve_host`), in this order:

1. ``base_url``, when given;
2. else ``OLLAMA_HOST``, when set;
3. else ``http://127.0.0.1:11434`` if an Ollama answers there (probed for 0.5 s);
4. else the project's embedded local Ollama (:mod:`mellea_actors.local`), started on demand and
   stopped at exit, **only if it is already installed** (one log line says so, with the host
   that was tried and the local server's address): a library call never downloads or compiles
   anything. Not installed: :class:`~mellea_actors.errors.BackendUnavailableError` (a
   ``ConnectionError``) at once, giving both ways out (set ``OLLAMA_HOST``, or run
   ``python -m mellea_actors.local install``). ``MELLEA_ACTORS_NO_EMBEDDED=1`` skips this step:
   the default host is returned and the session's check names it.

Host strings are normalised as the ``ollama`` client does (``host:port``, ``http://host`` …).

A pool of hosts (SPEC §11): ``base_url`` may be a list (or tuple) of hosts — URLs or
:class:`~mellea_actors.runtime.host_pool.HostSpec` (per-host capacity and weight) — and
``OLLAMA_HOST`` a comma-separated list; :func:`resolve_hosts` returns the list then (a list of
one is a pool of one, which can grow), and a plain ``str`` otherwise (the single-host path).

The model of a session started without ``model_id`` is chosen here too
(:func:`choose_default_model`), in this order:

1. ``MELLEA_ACTORS_MODEL``, when set (an explicit choice always wins);
2. else Mellea's default model when the host has it: ``granite4.2:3b`` (Mellea 0.8's
   ``IBM_GRANITE_4_2_3B``), else ``granite4.1:3b`` (Mellea 0.7.0's ``IBM_GRANITE_4_1_3B``);
3. else ``smollm2:135m``, the model of the project's embedded local Ollama.

Step 2 needs the host's model list, which ``start_session`` fetches when it checks the host
(``check=True``, the default); with ``check=False`` nothing is asked and step 3 applies.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Sequence

from mellea_actors.backends.model_ids import IBM_GRANITE_4_1_3B, IBM_GRANITE_4_2_3B
from mellea_actors.errors import BackendUnavailableError, InvalidInputError
from mellea_actors.runtime.host_pool import HostSpec
from mellea_actors.transport.ollama_http import DEFAULT_HOST, normalize_host

__all__ = [
    "DEFAULT_HOST",
    "MELLEA_DEFAULT_MODELS",
    "MODEL_ENV",
    "choose_default_model",
    "configured_model",
    "resolve_host",
    "resolve_hosts",
]

_log = logging.getLogger("mellea_actors")

#: The environment variable that names the default model.
MODEL_ENV = "MELLEA_ACTORS_MODEL"

#: Mellea's default models, preferred in this order when the host has them: Mellea 0.8's,
#: then Mellea 0.7.0's.
MELLEA_DEFAULT_MODELS: tuple[str, ...] = tuple(
    m.ollama_name for m in (IBM_GRANITE_4_2_3B, IBM_GRANITE_4_1_3B) if m.ollama_name
)


def resolve_host(base_url: str | None) -> str:
    """The base URL of the Ollama host to use (see the module docstring for the order)."""
    if base_url:
        return normalize_host(base_url)
    env = os.environ.get("OLLAMA_HOST")
    if env:
        return normalize_host(env, name="OLLAMA_HOST")
    from mellea_actors.local import provision
    from mellea_actors.local import server as local_server  # only when nothing is configured

    if local_server.is_ollama_reachable(DEFAULT_HOST, timeout=0.5):
        return DEFAULT_HOST
    if os.environ.get("MELLEA_ACTORS_NO_EMBEDDED") == "1":
        return DEFAULT_HOST
    install = provision.installed()
    if install is None:
        raise BackendUnavailableError(
            f"no Ollama answers at {DEFAULT_HOST} and none is configured, and the embedded "
            "local Ollama is not installed (a library call never downloads it). Either set "
            "OLLAMA_HOST (or base_url=) to an Ollama server, or install the local one once: "
            "`python -m mellea_actors.local install` (about 200 MB, into "
            f"{provision.default_home()})",
            host=DEFAULT_HOST,
        )
    server = local_server.ensure_embedded_ollama(install=install)
    _log.info(
        "no Ollama answers at %s and none is configured: using the embedded local Ollama at %s",
        DEFAULT_HOST,
        server.base_url,
    )
    return server.base_url


def resolve_hosts(base_url: str | Sequence[str | HostSpec] | None) -> str | list[HostSpec]:
    """The single host (a str), or the pool (a list of specs): ``base_url`` as a list, else a
    comma-separated ``OLLAMA_HOST``, else :func:`resolve_host`. Duplicates and empty lists are
    refused (``InvalidInputError`` naming where they came from)."""
    if isinstance(base_url, list | tuple):
        specs = [HostSpec.of(item, "base_url") for item in base_url]
        return _checked_pool(specs, "base_url")
    if base_url is not None and not isinstance(base_url, str):
        raise InvalidInputError(
            "base_url must be a host URL (str) or a list of them, got "
            f"{type(base_url).__name__}: {base_url!r}"
        )
    env = os.environ.get("OLLAMA_HOST")
    if not base_url and env and "," in env:
        parts = [part.strip() for part in env.split(",") if part.strip()]
        specs = [HostSpec(normalize_host(part, name="OLLAMA_HOST")) for part in parts]
        return _checked_pool(specs, "OLLAMA_HOST")
    return resolve_host(base_url)


def _checked_pool(specs: list[HostSpec], name: str) -> list[HostSpec]:
    if not specs:
        raise InvalidInputError(f"{name} is an empty list: name at least one Ollama host")
    seen: set[str] = set()
    for spec in specs:
        if spec.url in seen:
            raise InvalidInputError(f"host {spec.url} is listed twice in {name}")
        seen.add(spec.url)
    return specs


def configured_model() -> str | None:
    """The model named by ``MELLEA_ACTORS_MODEL`` (None when unset or empty)."""
    return os.environ.get(MODEL_ENV) or None


def choose_default_model(available: Collection[str] | None) -> str:
    """The model of a session started without ``model_id`` (see the module docstring).

    Args:
        available: the models the host lists (``/api/tags``), or None if it was not asked.
    """
    configured = configured_model()
    if configured:
        return configured
    if available is not None:
        for model in MELLEA_DEFAULT_MODELS:
            if model in available:
                return model
    from mellea_actors.local.server import DEFAULT_LOCAL_MODEL  # lazily, as in resolve_host

    return DEFAULT_LOCAL_MODEL
