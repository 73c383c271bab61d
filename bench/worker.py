"""One benchmark worker process: ``python bench/worker.py PARAMS.json RESULT.json``.

Runs one scenario for one variant (``warmup`` + ``reps`` repetitions) against the scripted server
named in the parameters, and writes ``{"results": [...], "env": {...}}`` to RESULT.json. It runs in
the project's venv (``floor``, ``raw_naive``, ``raw_capped``, ``mellea_actors``) or in Mellea
0.7.0's venv (``mellea``), so it imports nothing from ``mellea_actors`` at module level.
"""

from __future__ import annotations

import asyncio
import json
import sys
import traceback
from typing import Any

from common import proc_status, raise_open_files

SCENARIOS = (
    "long_stream",
    "first_text",
    "lazy_thunks",
    "cancel",
    "many_streams",
    "live_thunks",
    "parse_deliver",
)


async def _main(p: dict[str, Any]) -> list[dict[str, Any]]:
    if p["scenario"] not in SCENARIOS:
        raise ValueError(f"unknown scenario {p['scenario']!r}")
    if p["scenario"] == "parse_deliver":
        import microbench as impl
    elif p["variant"] in ("floor", "raw_naive", "raw_capped"):
        import raw_client as impl  # type: ignore[no-redef]
    else:
        import session_side as impl  # type: ignore[no-redef]
    fn = getattr(impl, p["scenario"])
    results: list[dict[str, Any]] = await fn(p)
    return results


def main() -> int:
    params_path, result_path = sys.argv[1], sys.argv[2]
    with open(params_path) as fh:
        params = json.load(fh)
    out: dict[str, Any] = {
        "env": {
            "python": sys.version.split()[0],
            "open_files": raise_open_files(),
            "start": proc_status(),
        }
    }
    try:
        out["results"] = asyncio.run(_main(params))
    except BaseException:
        out["error"] = traceback.format_exc()
    with open(result_path, "w") as fh:
        json.dump(out, fh)
    return 0 if "error" not in out else 1


if __name__ == "__main__":
    sys.exit(main())
