"""The baselines: the floor client, and ``ollama.AsyncClient`` used directly (no mellea, no actors).

* ``floor``: :class:`floor_client.FloorClient`, the least a Python client spends (raw sockets,
  ``json.loads`` per line, one task per stream, no cap).
* ``raw_naive``: ``ollama.AsyncClient(host)`` as it comes (httpx defaults: at most 100
  connections; further requests wait inside httpx's connection pool) and ``asyncio.gather``.
* ``raw_capped``: the client used well: an ``asyncio.Semaphore(cap)`` in front of the requests
  and ``httpx.Limits(max_connections=cap)``, so that httpx's pool never holds a queue of waiting
  requests. ``cap`` is the same as the ``max_in_flight`` given to mellea_actors in the scenario.

Every scenario function runs ``warmup`` unmeasured repetitions, then ``reps`` measured ones, and
returns one dict per measured repetition.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import ollama
from common import MODEL, Arrivals, FirstText, Meter, proc_status, stream_result, tag
from floor_client import FloorClient


class RawClient:
    def __init__(self, base_url: str, *, capped: bool, cap: int, keepalive: int = 20) -> None:
        if capped:
            self.client = ollama.AsyncClient(
                host=base_url,
                limits=httpx.Limits(max_connections=cap, max_keepalive_connections=keepalive),
            )
            self.sem: asyncio.Semaphore | None = asyncio.Semaphore(cap)
        else:
            self.client = ollama.AsyncClient(host=base_url)
            self.sem = None

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.sem is None:
            yield
        else:
            async with self.sem:
                yield

    async def stream(self, prompt: str) -> AsyncIterator[Any]:
        stream = await self.client.chat(
            model=MODEL, messages=[{"role": "user", "content": prompt}], stream=True
        )
        return stream

    async def collect(self, prompt: str) -> str:
        """One streamed chat, drained; returns its text."""
        parts: list[str] = []
        async with self.slot():
            async for part in await self.stream(prompt):
                parts.append(_content(part) or "")
        return "".join(parts)

    async def aclose(self) -> None:
        await self.client._client.aclose()


def _client(p: dict[str, Any]) -> Any:
    if p["variant"] == "floor":
        return FloorClient(p["base_url"])
    return RawClient(
        p["base_url"],
        capped=p["variant"] == "raw_capped",
        cap=p["cap"],
        keepalive=p.get("keepalive", 20),
    )


def _content(part: Any) -> str:
    """A streamed object's text: a pydantic ``ChatResponse`` (raw) or a dict (floor)."""
    if isinstance(part, dict):
        return str(part.get("message", {}).get("content") or "")
    return str(part.message.content or "")


def _reps(p: dict[str, Any]) -> list[tuple[int, bool]]:
    """(repetition number, measured?) pairs: warm-ups first."""
    return [(i, i >= p["warmup"]) for i in range(p["warmup"] + p["reps"])]


# -- 1. one long stream ---------------------------------------------------------------------
async def long_stream(p: dict[str, Any]) -> list[dict[str, Any]]:
    raw = _client(p)
    out = []
    for i, measured in _reps(p):
        with Meter() as m:
            text = await raw.collect(f"long stream {tag(f'r{i}')}")
        if measured:
            out.append(
                {"wall": m.wall, "cpu": m.cpu, "chars": len(text), "ok": text == p["expect"]}
            )
    await raw.aclose()
    return out


# -- 1b. time to first text --------------------------------------------------------------------
async def first_text(p: dict[str, Any]) -> list[dict[str, Any]]:
    """From the call to the first streamed object with text; each stream then drained."""
    raw = _client(p)
    out = []
    for i, measured in _reps(p):
        seen = FirstText()
        async with raw.slot():
            async for part in await raw.stream(f"first text {tag(f'f{i}')}"):
                seen.add(_content(part))
        if measured:
            out.append(seen.result(p["expect"]))
    await raw.aclose()
    return out


# -- 2. many short answers, gathered --------------------------------------------------------
async def lazy_thunks(p: dict[str, Any]) -> list[dict[str, Any]]:
    raw = _client(p)
    n = p["n"]
    out = []
    for i, measured in _reps(p):
        with Meter() as m:
            texts = await asyncio.gather(
                *(raw.collect(f"question {k} {tag(f'r{i}q{k}')}") for k in range(n))
            )
        if measured:
            ok = all(t == p["expect"] for t in texts)
            out.append({"wall": m.wall, "cpu": m.cpu, "ok": ok})
    await raw.aclose()
    return out


# -- 3. cancel → disconnect -----------------------------------------------------------------
async def cancel(p: dict[str, Any]) -> list[dict[str, Any]]:
    """Cancel the task that iterates the stream once ``after`` tokens arrived."""
    raw = _client(p)
    runs: list[dict[str, Any]] = []
    for i, measured in _reps(p):
        name = f"c{i}"
        ready = asyncio.Event()

        async def reader(prompt: str, ready: asyncio.Event = ready) -> None:
            seen = 0
            async with raw.slot():
                async for part in await raw.stream(prompt):
                    if _content(part):
                        seen += 1
                        if seen >= p["after"]:
                            ready.set()

        task = asyncio.create_task(reader(f"cancel me {tag(name)}"))
        await ready.wait()
        decided = time.monotonic()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        returned = time.monotonic()
        if measured:
            runs.append({"tag": name, "decided_at": decided, "returned_at": returned})
    await raw.aclose()
    return [{"kind": "cancel", "runs": runs}]


# -- 4. many paced streams ------------------------------------------------------------------
async def many_streams(p: dict[str, Any]) -> list[dict[str, Any]]:
    raw = _client(p)
    n, tokens = p["n"], p["tokens"]
    out = []
    for i, measured in _reps(p):

        async def one(k: int, i: int = i) -> Arrivals:
            arrivals = Arrivals(tokens)
            async with raw.slot():
                async for part in await raw.stream(f"stream {k} {tag(f'r{i}s{k}')}"):
                    content = _content(part)
                    if content:
                        arrivals.add(content, time.monotonic())
            return arrivals

        with Meter() as m:
            received = await asyncio.gather(*(one(k) for k in range(n)))
        if measured:
            out.append(stream_result(m, i, received))
    await raw.aclose()
    return out


# -- 5. many live requests ------------------------------------------------------------------
async def live_thunks(p: dict[str, Any]) -> list[dict[str, Any]]:
    """Reference only: N tasks each holding a (capped) streamed request that stays silent."""
    raw = _client(p)
    n = p["n"]
    before = proc_status()
    tasks: list[asyncio.Task[str]] = []
    checkpoints: dict[str, dict[str, int]] = {}
    with Meter() as m:
        for k in range(n):
            tasks.append(asyncio.create_task(raw.collect(f"live {k} {tag(f'l{k}')}")))
            if k + 1 == n // 10:
                checkpoints[str(k + 1)] = proc_status()
    checkpoints[str(n)] = proc_status()
    await asyncio.sleep(p["settle"])
    settled = proc_status()
    live = sum(not t.done() for t in tasks)
    with Meter() as closing:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await raw.aclose()
    return [
        {
            "n": n,
            "create_s": m.wall,
            "create_cpu": m.cpu,
            "before": before,
            "checkpoints": checkpoints,
            "settled": settled,
            "live": live,
            "close_s": closing.wall,
        }
    ]
