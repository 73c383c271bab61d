"""The Mellea API side: the same code drives ``mellea_actors`` and Mellea 0.7.0 (drop-in).

``variant`` is ``"mellea_actors"`` (this project, run in ``.venv``) or ``"mellea"`` (Mellea 0.7.0,
run in ``/tmp/mellea-venv``). The only differences are how the session is started (ours:
``check=False``, otherwise **default settings**; Mellea's constructor checks the server
itself) and how a thunk is cancelled (ours: ``await mot.cancel()``; Mellea:
``await mot.cancel_generation()``).
Lazy thunks come from ``ainstruct(..., strategy=None)``: Mellea 0.7.0's ``ainstruct`` otherwise
runs its rejection-sampling strategy and returns a computed thunk (ours returns a lazy thunk
whenever there are no requirements).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
from typing import Any

from common import (
    MODEL,
    Arrivals,
    FirstText,
    Meter,
    proc_status,
    stream_result,
    tag,
    token_index,
)

# when a validator decided "fail", per stream tag (module-level: validators may be deep copies)
_FAIL_DECISIONS: dict[str, float] = {}


class Side:
    """A session of either package, with the few calls the scenarios need."""

    def __init__(self, p: dict[str, Any]) -> None:
        self.ours = p["variant"] == "mellea_actors"
        self.pkg = "mellea_actors" if self.ours else "mellea"
        root = importlib.import_module(self.pkg)
        self.ModelOption = importlib.import_module(f"{self.pkg}.backends").ModelOption
        helpers = importlib.import_module(f"{self.pkg}.helpers.async_helpers")
        self.wait_for_all_mots = helpers.wait_for_all_mots
        if self.ours:
            # default settings (SPEC §8): no max_in_flight, no tuning
            self.m = root.start_session(model_id=MODEL, base_url=p["base_url"], check=False)
        else:
            self.m = root.start_session(model_id=MODEL, base_url=p["base_url"])
            with contextlib.suppress(Exception):  # keep Mellea's INFO chatter out of the timing
                from mellea.core.utils import MelleaLogger

                MelleaLogger.get_logger().setLevel(logging.WARNING)

    async def lazy(self, prompt: str, *, stream: bool) -> Any:
        opts = {self.ModelOption.STREAM: True} if stream else None
        return await self.m.ainstruct(prompt, strategy=None, model_options=opts)

    async def cancel(self, mot: Any) -> None:
        if self.ours:
            await mot.cancel()
        else:
            await mot.cancel_generation()

    def close(self) -> None:
        self.m.cleanup()

    # streaming validation (None when the package has no stream_with_chunking yet)
    def streaming(self) -> Any:
        try:
            return importlib.import_module(f"{self.pkg}.stdlib.streaming").stream_with_chunking
        except (ImportError, AttributeError):
            return None

    def fail_at(self, k: int, name: str) -> Any:
        """A requirement whose stream validator says "fail" on the word chunk ``t{k}``."""
        req_mod = importlib.import_module(f"{self.pkg}.core.requirement")
        base, verdict = req_mod.Requirement, req_mod.PartialValidationResult

        class FailAt(base):  # type: ignore[misc, valid-type]
            def __init__(self) -> None:
                super().__init__(description=f"never says t{k}", validation_fn=lambda ctx: True)
                self.bad = f"t{k}"
                self.name = name

            async def stream_validate(self, chunk: str, *, backend: Any, ctx: Any) -> Any:
                if chunk.strip() == self.bad:
                    _FAIL_DECISIONS[self.name] = time.monotonic()
                    return verdict("fail", reason=f"saw {self.bad}")
                return verdict("pass")

        return FailAt()

    def cblock(self, text: str) -> Any:
        return importlib.import_module(f"{self.pkg}.core.base").CBlock(text)


def _reps(p: dict[str, Any]) -> list[tuple[int, bool]]:
    return [(i, i >= p["warmup"]) for i in range(p["warmup"] + p["reps"])]


async def _drain(mot: Any) -> str:
    parts: list[str] = []
    while not mot.is_computed():
        parts.append(await mot.astream())
    return "".join(parts)


# -- 1. one long stream ---------------------------------------------------------------------
async def long_stream(p: dict[str, Any]) -> list[dict[str, Any]]:
    side = Side(p)
    out = []
    for i, measured in _reps(p):
        with Meter() as m:
            mot = await side.lazy(f"long stream {tag(f'r{i}')}", stream=True)
            text = await _drain(mot)
        if measured:
            out.append(
                {"wall": m.wall, "cpu": m.cpu, "chars": len(text), "ok": text == p["expect"]}
            )
    side.close()
    return out


# -- 1b. time to first text --------------------------------------------------------------------
async def first_text(p: dict[str, Any]) -> list[dict[str, Any]]:
    """From the ``ainstruct`` call to the first non-empty ``astream()``; each then drained."""
    side = Side(p)
    out = []
    for i, measured in _reps(p):
        seen = FirstText()
        mot = await side.lazy(f"first text {tag(f'f{i}')}", stream=True)
        while not mot.is_computed():
            seen.add(await mot.astream())
        if measured:
            out.append(seen.result(p["expect"]))
    side.close()
    return out


# -- 2. lazy thunks resolved with wait_for_all_mots -------------------------------------------
async def lazy_thunks(p: dict[str, Any]) -> list[dict[str, Any]]:
    side = Side(p)
    n = p["n"]
    out = []
    for i, measured in _reps(p):
        with Meter() as m:
            mots = [
                await side.lazy(f"question {k} {tag(f'r{i}q{k}')}", stream=False) for k in range(n)
            ]
            await side.wait_for_all_mots(mots)
        if measured:
            ok = all(mot.value == p["expect"] for mot in mots)
            out.append({"wall": m.wall, "cpu": m.cpu, "ok": ok})
    side.close()
    return out


# -- 3. cancel → disconnect -----------------------------------------------------------------
async def cancel(p: dict[str, Any]) -> list[dict[str, Any]]:
    side = Side(p)
    after = p["after"]
    runs: list[dict[str, Any]] = []
    for i, measured in _reps(p):
        name = f"c{i}"
        mot = await side.lazy(f"cancel me {tag(name)}", stream=True)
        seen = 0
        while seen < after:
            seen += len((await mot.astream()).split())
        decided = time.monotonic()
        await side.cancel(mot)
        returned = time.monotonic()
        if measured:
            runs.append({"tag": name, "decided_at": decided, "returned_at": returned})
    results: list[dict[str, Any]] = [{"kind": "cancel", "runs": runs}]

    stream_with_chunking = side.streaming()
    if stream_with_chunking is None:
        results.append({"kind": "validator", "skipped": "no stdlib.streaming.stream_with_chunking"})
    else:
        vruns: list[dict[str, Any]] = []
        for i, measured in _reps(p):
            name = f"v{i}"
            result = await stream_with_chunking(
                side.cblock(f"validate me {tag(name)}"),
                side.m.backend,
                side.m.ctx,
                requirements=[side.fail_at(after, name)],
                chunking="word",
            )
            delivered: list[int] = []
            async for chunk in result.astream():
                delivered.extend(token_index(t) for t in chunk.split())
            with contextlib.suppress(Exception):
                await asyncio.wait_for(result.acomplete(), 10)
            if measured:
                vruns.append(
                    {
                        "tag": name,
                        "decided_at": _FAIL_DECISIONS.get(name),
                        "returned_at": time.monotonic(),
                        "delivered": len(delivered),
                        "after_fail": sum(1 for t in delivered if t >= after),
                        "completed": bool(result.completed),
                    }
                )
        results.append({"kind": "validator", "runs": vruns})
    side.close()
    return results


# -- 4. many paced streams ------------------------------------------------------------------
async def many_streams(p: dict[str, Any]) -> list[dict[str, Any]]:
    side = Side(p)
    n, tokens = p["n"], p["tokens"]
    out = []
    for i, measured in _reps(p):

        async def consume(mot: Any) -> Arrivals:
            arrivals = Arrivals(tokens)
            while not mot.is_computed():
                arrivals.add(await mot.astream(), time.monotonic())
            return arrivals

        with Meter() as m:
            tasks = []
            for k in range(n):
                mot = await side.lazy(f"stream {k} {tag(f'r{i}s{k}')}", stream=True)
                tasks.append(asyncio.create_task(consume(mot)))
            received = await asyncio.gather(*tasks)
        if measured:
            out.append(stream_result(m, i, received))
    side.close()
    return out


# -- 5. many live thunks --------------------------------------------------------------------
async def live_thunks(p: dict[str, Any]) -> list[dict[str, Any]]:
    at_start = proc_status()
    side = Side(p)
    n = p["n"]
    before = proc_status()
    mots: list[Any] = []
    checkpoints: dict[str, dict[str, int]] = {}
    with Meter() as m:
        for k in range(n):
            mots.append(await side.lazy(f"live {k} {tag(f'l{k}')}", stream=False))
            if k + 1 == n // 10:
                checkpoints[str(k + 1)] = proc_status()
    checkpoints[str(n)] = proc_status()
    await asyncio.sleep(p["settle"])
    settled = proc_status()
    live = sum(not mot.is_computed() for mot in mots)
    with Meter() as closing:
        if side.ours:
            await asyncio.to_thread(side.close)
        else:
            await asyncio.gather(*(side.cancel(mot) for mot in mots), return_exceptions=True)
            side.close()
    return [
        {
            "n": n,
            "create_s": m.wall,
            "create_cpu": m.cpu,
            "at_start": at_start,
            "before": before,
            "checkpoints": checkpoints,
            "settled": settled,
            "live": live,
            "close_s": closing.wall,
        }
    ]
