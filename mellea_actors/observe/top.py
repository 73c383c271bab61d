"""``mellea-actors top URL``: the live view in a terminal (reads ``URL/api/state``).

``run_top(url, interval=1.0, once=False, out=sys.stdout)``: fetch, render, repeat every
``interval`` seconds (the screen is cleared between two frames when ``out`` is a terminal)
until interrupted (``KeyboardInterrupt`` goes up to the caller: the CLI exits 130);
``once=True`` prints one frame and returns. A token in the URL
(``?token=…``, as ``serve()``'s ``url_with_token`` gives it) is sent as a Bearer header; so is
the environment's ``MELLEA_ACTORS_DASHBOARD_TOKEN`` when the URL has none.

Exit status: 0, or 1 when the view cannot be read (the message says why).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import IO, Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from mellea_actors.observe.live_source import DASHBOARD_TOKEN_ENV, is_loopback

__all__ = ["fetch_state", "render", "run_top"]

CLEAR = "\x1b[H\x1b[2J"
STREAM_ROWS = 25
EVENT_ROWS = 12
TREE_ROWS = 30


def _api_url(url: str) -> tuple[str, str | None]:
    """``url`` (the page's address, with or without ``?token=``) → (its api/state URL, token)."""
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    params = parse_qs(parts.query)
    token = params.pop("token", [None])[-1] or os.environ.get(DASHBOARD_TOKEN_ENV) or None
    path = parts.path.rstrip("/")
    if path.endswith("/api/state"):
        path = path.removesuffix("/api/state")
    query = urlencode({k: v[-1] for k, v in params.items()} | {"limit": EVENT_ROWS})
    return urlunsplit((parts.scheme, parts.netloc, f"{path}/api/state", query, "")), token


def fetch_state(url: str, timeout: float = 5.0) -> dict[str, Any]:
    """The view's ``/api/state`` (raises OSError/ValueError when it cannot be read)."""
    api, token = _api_url(url)
    request = urllib.request.Request(api, headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    # a loopback view is never reached through the environment's HTTP proxy
    handlers = (
        [urllib.request.ProxyHandler({})] if is_loopback(urlsplit(api).hostname or "") else []
    )
    with urllib.request.build_opener(*handlers).open(request, timeout=timeout) as response:
        state = json.loads(response.read().decode("utf-8"))
    if not isinstance(state, dict):
        raise ValueError(f"{api} did not answer a live view's state")
    return state


def _f(value: Any, digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def _tree_lines(node: dict[str, Any], depth: int = 0) -> Iterator[str]:
    extra = []
    if node.get("host") and node.get("kind") != "host":
        extra.append(f"host {node['host']}")
    if node.get("restarts"):
        extra.append(f"restarts {node['restarts']}")
    if "in_flight" in node:
        extra.append(f"in flight {node.get('in_flight')}/{node.get('capacity')}")
    tail = f"  ({', '.join(extra)})" if extra else ""
    yield f"{'  ' * depth}{node.get('id')}  [{node.get('kind')}] {node.get('state') or ''}{tail}"
    for child in node.get("children") or ():
        if isinstance(child, dict):
            yield from _tree_lines(child, depth + 1)


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = min(max(widths[i], len(cell)), 60)
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line.rstrip(), "  ".join("-" * w for w in widths)]
    for row in rows:
        cells = [c if len(c) <= 60 else c[:57] + "..." for c in row]
        out.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
    return out


def render(state: dict[str, Any], url: str = "") -> str:
    """One frame of text for ``state`` (an ``/api/state`` answer)."""
    streams = state.get("streams") or []
    running = [s for s in streams if s.get("outcome") is None]
    rate = sum(s.get("tokens_per_s") or 0 for s in running)
    lines = [
        f"mellea-actors top  {state.get('system')}  {url}".rstrip(),
        f"streams running {len(running)}  recently ended {len(streams) - len(running)}  "
        f"tokens/s {rate:.1f}  log records {state.get('seq')}  "
        f"at {time.strftime('%H:%M:%S', time.localtime(state.get('time') or time.time()))}",
        "",
        "STREAMS",
    ]
    rows = []
    for s in streams[:STREAM_ROWS]:
        v = s.get("verdicts") or {}
        verdicts = f"{v.get('validators')}v fail {v.get('fail')} fault {v.get('fault')}"
        rows.append(
            [
                str(s.get("thunk")),
                str(s.get("state")),
                str(s.get("host") or "-"),
                str(s.get("tokens")),
                _f(s.get("tokens_per_s")),
                _f(s.get("age_s"), 1, "s"),
                _f(None if s.get("ttfc_s") is None else s["ttfc_s"] * 1000, 0, "ms"),
                str(s.get("restarts")),
                verdicts if v.get("validators") else "-",
                str(s.get("reason") or ""),
            ]
        )
    headers = ["THUNK", "STATE", "HOST", "TOKENS", "TOK/S", "AGE", "TTFC", "RST", "VERDICTS"]
    lines += _table([*headers, "REASON"], rows)
    if len(streams) > STREAM_ROWS:
        lines.append(f"... {len(streams) - STREAM_ROWS} more")
    breakers = state.get("breakers") or {}
    if breakers:
        lines += [
            "",
            "BREAKERS  "
            + "  ".join(f"{h}: {'OPEN' if o else 'closed'}" for h, o in sorted(breakers.items())),
        ]
    lines += ["", "ACTORS"]
    tree = state.get("tree")
    tree_lines = list(_tree_lines(tree)) if isinstance(tree, dict) else []
    lines += tree_lines[:TREE_ROWS]
    if len(tree_lines) > TREE_ROWS:
        lines.append(f"... {len(tree_lines) - TREE_ROWS} more")
    lines += ["", "LOG"]
    for r in (state.get("events") or [])[-EVENT_ROWS:]:
        stamp = time.strftime("%H:%M:%S", time.localtime(r.get("ts") or 0))
        reason = f"  {r['reason']}" if r.get("reason") else ""
        thunk = f" thunk={r['thunk']}" if r.get("thunk") else ""
        lines.append(f"{r.get('seq'):>6} {stamp} {r.get('event')} {r.get('actor')}{thunk}{reason}")
    return "\n".join(lines) + "\n"


def run_top(url: str, *, interval: float = 1.0, once: bool = False, out: IO[str]) -> int:
    """Show the live view at ``url`` on ``out`` (see the module docstring); the exit status."""
    if interval <= 0:
        raise ValueError(f"interval must be > 0, got {interval!r}")
    clear = not once and bool(getattr(out, "isatty", lambda: False)())
    while True:
        try:
            state = fetch_state(url)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace").strip()
            out.write(f"mellea-actors top: {url}: HTTP {exc.code}: {detail}\n")
            return 1
        except (OSError, ValueError) as exc:
            out.write(f"mellea-actors top: cannot read the live view at {url}: {exc}\n")
            return 1
        frame = render(state, url.split("?")[0])
        out.write(CLEAR + frame if clear else frame)
        out.flush()
        if once:
            return 0
        time.sleep(interval)  # a terminal's refresh pace (Ctrl-C: KeyboardInterrupt goes up)
