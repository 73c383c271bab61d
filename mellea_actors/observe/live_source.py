"""What the live view reads (:class:`LiveSource`), and where it may listen (:func:`check_bind`).

The runtime (``mellea_actors.runtime.system``) implements :class:`LiveSource`; every method is
called from the server's threads, never from the runtime's loop, so each must be a thread-safe
snapshot that costs the runtime nothing per chunk.

The bind rule: the view listens on a loopback address unless told otherwise. Any other address
needs an explicit ``host`` argument *and* a ``token``; with a token every request must carry
``Authorization: Bearer <token>`` or ``?token=<token>``.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Protocol

__all__ = [
    "DASHBOARD_ENV",
    "DASHBOARD_TOKEN_ENV",
    "LiveSource",
    "check_bind",
    "is_loopback",
    "parse_dashboard_env",
]

#: ``HOST:PORT`` (a loopback host; port 0 picks a free one): serve the live view of every
#: system started while it is set.
DASHBOARD_ENV = "MELLEA_ACTORS_DASHBOARD"
#: An optional token for the live view opened by :data:`DASHBOARD_ENV`.
DASHBOARD_TOKEN_ENV = "MELLEA_ACTORS_DASHBOARD_TOKEN"


class LiveSource(Protocol):
    """Thread-safe snapshots of one actor system (see the module docstring)."""

    @property
    def id(self) -> str:
        """The system's id (``system-…``)."""
        ...

    def tree(self) -> dict[str, Any]:
        """The live actor tree: nested dicts with ``id``, ``kind``, ``children`` (and, where the
        runtime knows them, ``alive``, ``status``, ``state``…)."""
        ...

    def records(self) -> list[dict[str, Any]]:
        """The supervision log's stored records, oldest first: the objects themselves, not
        copies (the view only reads them, and finds the new ones by identity). The log is a
        bounded ring: records may have left it since the last call."""
        ...

    def streams(self) -> list[dict[str, Any]]:
        """The generations under way: ``thunk`` (request id), ``status``, ``tokens`` (deltas
        received so far) and ``streaming_for`` (seconds since the first delta, or None)."""
        ...

    def hosts(self) -> list[dict[str, Any]]:
        """The pool's hosts (``url``, ``state``, ``in_flight``, ``capacity``…); empty without a
        pool."""
        ...


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and the loopback addresses (127.0.0.0/8, ``::1``)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind(host: str, port: int, token: str | None, *, explicit: bool) -> None:
    """Raise ValueError, naming the problem, unless the view may listen on ``host:port``.

    ``explicit``: ``host`` was passed as an argument by the caller (not a default, not the
    environment). Checked before anything binds.
    """
    if not isinstance(host, str) or not host.strip():
        raise ValueError(f"live view: host must be a non-empty string, got {host!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"live view: port must be an int in 0..65535 (0: any free), got {port!r}")
    if token is not None and (not isinstance(token, str) or not token.strip()):
        raise ValueError("live view: token must be a non-empty string (or None)")
    if is_loopback(host):
        return
    if not explicit:
        raise ValueError(
            f"live view: refusing to listen on {host!r}, which is not a loopback address: only "
            f"an explicit host argument with a token may do that, e.g. "
            f"session.system.serve(host={host!r}, token=...); {DASHBOARD_ENV} takes loopback "
            "addresses only"
        )
    if token is None:
        raise ValueError(
            f"live view: refusing to listen on {host!r} without a token: an address other than "
            "loopback exposes the actor tree and the supervision log (prompts' request ids, "
            f"hosts, errors) to the network; pass token=... (serve(host={host!r}, token=...)); "
            "requests must then carry 'Authorization: Bearer <token>' or '?token=<token>'"
        )


def parse_dashboard_env(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``[v6]:PORT``, or ``PORT`` alone for 127.0.0.1) → (host, port).

    Raises ValueError naming :data:`DASHBOARD_ENV` when it cannot be read.
    """
    text = value.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "127.0.0.1", text
    host = host.strip().strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(
            f"{DASHBOARD_ENV}={value!r}: expected HOST:PORT, e.g. 127.0.0.1:8765 (port 0: any "
            "free port)"
        ) from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{DASHBOARD_ENV}={value!r}: the port must be in 0..65535")
    return host, port
