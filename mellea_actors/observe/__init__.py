"""The live view of a runtime: an opt-in HTTP page, JSON API, Prometheus ``/metrics``, ``top``.

Opened with ``session.system.serve(host="127.0.0.1", port=0, token=None)`` (or the environment
variable ``MELLEA_ACTORS_DASHBOARD=127.0.0.1:PORT``, read when a system starts); closed with
the system. docs/live_view.md describes the endpoints, the metrics and the security rule.

Layering: this package sits beside the runtime, not above it: it imports nothing of
``mellea_actors.runtime`` nor of the facade. The runtime hands it a :class:`LiveSource` (thread-
safe snapshots: the actor tree, the supervision log's stored records, the live streams, the
hosts) and the server reads nothing else.

Modules: :mod:`.live_source` (the source protocol, the bind rule), :mod:`.live_state` (what
the view keeps: the log's tail, per-stream progress), :mod:`.live_metrics` (the Prometheus
collectors), :mod:`.live_server` (the HTTP server), :mod:`.top` (the terminal view).
"""

from mellea_actors.observe.live_server import LiveView, start_live_view
from mellea_actors.observe.live_source import (
    DASHBOARD_ENV,
    DASHBOARD_TOKEN_ENV,
    LiveSource,
    check_bind,
    parse_dashboard_env,
)

__all__ = [
    "DASHBOARD_ENV",
    "DASHBOARD_TOKEN_ENV",
    "LiveSource",
    "LiveView",
    "check_bind",
    "parse_dashboard_env",
    "start_live_view",
]
