"""The fault matrix: what happens when …, and how long until a clear error (README table).

Each row provokes one fault against the scripted Ollama-protocol server (or a tiny loopback
server for a non-Ollama host), measures the time from the call to the error the user sees, and
checks what was kept. Prints a Markdown table. Run: ``.venv/bin/python bench/faults.py``.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from mellea_actors import start_session
from mellea_actors.backends import ModelOption
from mellea_actors.core.requirement import PartialValidationResult, Requirement
from mellea_actors.runtime.breaker import BreakerPolicy
from mellea_actors.stdlib.components import Instruction
from mellea_actors.stdlib.streaming import ErrorEvent, stream_with_chunking
from mellea_actors.testing import Script, ScriptedOllama

MODEL = "scripted"
STREAM = {ModelOption.STREAM: True}
ROUNDS = 5
TOKENS = tuple(f"w{i}. " for i in range(40))


async def _error_of(call: Callable[[], Awaitable[Any]]) -> tuple[float, str, str]:
    started = time.perf_counter()
    try:
        kept = await call()
    except Exception as exc:
        return time.perf_counter() - started, type(exc).__name__, ""
    return time.perf_counter() - started, "-", str(kept)


class Raises(Requirement):
    async def stream_validate(self, chunk: str, **_: Any) -> PartialValidationResult:
        raise RuntimeError("validator bug")


class Blocks(Requirement):
    def stream_validate(self, chunk: str, **_: Any) -> PartialValidationResult:  # type: ignore[override]
        time.sleep(1.0)
        return PartialValidationResult("pass")


async def main() -> None:
    server = ScriptedOllama(models=(MODEL,)).start()
    rows: list[tuple[str, str, list[float], str]] = []

    async def measure(fault: str, call: Callable[[], Awaitable[Any]], kept: str) -> None:
        times: list[float] = []
        error = "-"
        for _ in range(ROUNDS):
            took, error, _ = await _error_of(call)
            times.append(took)
        rows.append((fault, error, times, kept))

    def session(**kwargs: Any) -> Any:
        return start_session(model_id=MODEL, base_url=server.base_url, **kwargs)

    m = session()

    async def generate(script: Script, **options: Any) -> str:
        server.set_script(script)
        mot = await m.ainstruct("x", model_options={**STREAM, **options})
        return await mot.avalue()

    async def streamed(requirement: Requirement, **kwargs: Any) -> str:
        server.set_script(Script(tokens=TOKENS))
        result = await stream_with_chunking(
            Instruction("x"), m.backend, m.ctx, requirements=[requirement], **kwargs
        )
        events = [e async for e in result.events()]
        error = next((e for e in events if isinstance(e, ErrorEvent)), None)
        if error is not None:
            raise type(error.exception_type, (Exception,), {})(error.detail)
        return result.full_text

    await measure(
        "nothing listens at the host (start_session)",
        lambda: asyncio.to_thread(start_session, model_id=MODEL, base_url="http://127.0.0.1:9"),
        "-",
    )
    await measure(
        "the host lacks the model (start_session)",
        lambda: asyncio.to_thread(start_session, model_id="nope", base_url=server.base_url),
        "-",
    )
    await measure(
        "malformed base_url",
        lambda: asyncio.to_thread(start_session, base_url="127.0.0.1:abc"),
        "nothing sent",
    )
    await measure(
        "HTTP 500 on every attempt (2 restarts)",
        lambda: generate(Script(status=500, error_message="boom")),
        "-",
    )
    await measure(
        '{"error": …} line after 5 deltas',
        lambda: generate(Script(tokens=TOKENS, error_after=5, error_message="oom")),
        "the 5 deltas (partial_value)",
    )
    await measure(
        "connection dropped after 5 deltas",
        lambda: generate(Script(tokens=TOKENS, drop_after=5)),
        "the 5 deltas (partial_value)",
    )
    await measure(
        "stall after 5 deltas (STREAM_TIMEOUT=0.5)",
        lambda: generate(
            Script(tokens=TOKENS, stall_after=5), **{ModelOption.STREAM_TIMEOUT: 0.5}
        ),
        "the 5 deltas (partial_value)",
    )
    await measure(
        "a validator raises",
        lambda: streamed(Raises("x")),
        "chunks before it (full_text)",
    )
    await measure(
        "a blocking validator (1 s, validator_timeout=0.3)",
        lambda: streamed(Blocks("x"), validator_timeout=0.3),
        "chunks before it; other streams run on",
    )
    q = session(max_in_flight=1, queue_timeout=0.2)

    async def queued() -> str:
        server.set_script(Script(tokens=TOKENS, delay=0.05))
        holder = await q.ainstruct("hold", model_options=STREAM)
        try:
            second = await q.ainstruct("wait")
            return await second.avalue()
        finally:
            await holder.cancel()

    await measure("every slot taken past queue_timeout=0.2", queued, "nothing sent")
    b = start_session(
        model_id=MODEL,
        base_url="http://127.0.0.1:9",
        check=False,
        breaker_policy=BreakerPolicy(failure_threshold=1, probe_initial=60),
    )
    with_breaker = await b.ainstruct("open it")
    await _error_of(with_breaker.avalue)  # opens the breaker

    async def fails_fast() -> str:
        return await (await b.ainstruct("x")).avalue()

    await measure("the host's circuit breaker is open", fails_fast, "-")
    for s in (m, q, b):
        s.close()
    server.stop()

    print("| what happens when … | the error | time to it (median of 5) | what is kept |")
    print("|---|---|---|---|")
    for fault, error, times, kept in rows:
        print(f"| {fault} | `{error}` | {statistics.median(times) * 1000:.1f} ms | {kept} |")


if __name__ == "__main__":
    asyncio.run(main())
