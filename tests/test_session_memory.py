"""A session that runs for days keeps flat memory: it does not hold on to its requests."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
import weakref
from collections.abc import Awaitable, Callable
from typing import TypeVar

from mellea_actors import MelleaSession, start_session
from mellea_actors.core.context_chain import SIMPLE_CONTEXT_KEEP
from mellea_actors.testing import Script, ScriptedOllama, ScriptedOllamaProcess

from .conftest import SCRIPTED_MODEL

WAIT = 10.0
T = TypeVar("T")


def test_a_simple_context_keeps_no_history(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    """Regression: SimpleContext.add chained every action and thunk, so after 3,000 submit()
    calls the context held 6,000 items and none of the dropped thunks was ever collected."""
    scripted.set_script(Script(tokens=("ok",)))
    first = scripted_session.submit("request 0")
    first.wait(WAIT)
    gone = weakref.ref(first)
    del first
    for i in range(1, 300):
        scripted_session.submit(f"request {i}").wait(WAIT)
    assert len(scripted_session.ctx.as_list()) <= SIMPLE_CONTEXT_KEEP
    assert scripted_session.ctx.last_output() is not None  # what Mellea code reads still works
    gc.collect()
    assert gone() is None, "the first request's thunk is still referenced"


def test_five_thousand_requests_keep_memory_flat() -> None:
    """5,000 requests on one session: what the process holds does not grow with them (the
    scripted server runs in its own process, so its request records do not count)."""
    server = ScriptedOllamaProcess(Script(tokens=("ok",)), models=(SCRIPTED_MODEL,)).start()
    try:
        with start_session(model_id=SCRIPTED_MODEL, base_url=server.base_url) as m:
            # Traced from the start: the warm-up fills the caches, the pools and the log's ring
            # buffer, whose later records then replace traced ones.
            tracemalloc.start()
            try:
                for i in range(2200):  # the ring buffer holds 10,000 records, ~5 a request
                    m.submit(f"warm {i}").wait(WAIT)
                gc.collect()
                before, _ = tracemalloc.get_traced_memory()
                for i in range(2800):
                    m.submit(f"request {i}").wait(WAIT)
                gc.collect()
                after, _ = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    finally:
        server.stop()
    per_request = (after - before) / 2800
    assert per_request < 300, f"memory grew {per_request:.0f} bytes per request"


def _generator_tasks(m: MelleaSession) -> int:
    """Generator tasks alive on the session's runtime loop (counted on that loop)."""

    async def count() -> int:
        return sum(t.get_name().startswith("generator-") for t in asyncio.all_tasks())

    loop = m.system.loop.loop
    return asyncio.run_coroutine_threadsafe(count(), loop).result(WAIT)


def test_a_generation_waiting_for_a_slot_holds_no_task(scripted: ScriptedOllama) -> None:
    """Regression (memory of pending thunks): every generation ran a task from its start, so
    one waiting for a slot held a task, four coroutines, a future and a timer (about 3 KB);
    it now waits as one admission ticket, and its task starts when the slot frees."""
    scripted.set_script(Script(tokens=("a ", "b"), first_delay=0.3))
    with start_session(model_id=SCRIPTED_MODEL, base_url=scripted.base_url, max_in_flight=2) as m:
        thunks = [m.submit(f"request {k}") for k in range(40)]
        scripted.wait_for_requests(2, WAIT)
        assert _generator_tasks(m) == 2  # the 38 others wait without one
        thunks[10].cancel_sync(timeout=WAIT)  # leaves the queue: never sent
        for k, thunk in enumerate(thunks):
            if k != 10:
                assert thunk.wait(WAIT) == "a b"
        assert thunks[10].cancelled
        assert len(scripted.requests) == 39
        assert _generator_tasks(m) == 0


def test_a_pending_thunk_costs_little_memory() -> None:
    """Regression (SPEC §8: 10,000 live thunks at <= 4 KB each): a thunk waiting for its
    answer held a list and a lock of its own, a list for avalue() waiters nobody had, a fresh
    empty SimpleContext, and its options were validated anew (pydantic objects). Traced per
    pending thunk (made with ``submit``): 3,250 B before, 2,950 B after; the budget is 3,100 B.
    Measured with the log's ring buffer already full, so its records replace traced ones."""
    n = 2000
    server = ScriptedOllamaProcess(
        Script(tokens=("late",), first_delay=600.0), models=(SCRIPTED_MODEL,)
    ).start()
    try:
        with start_session(model_id=SCRIPTED_MODEL, base_url=server.base_url, max_in_flight=1) as m:
            for i in range(10_000):  # fill the ring: its records then replace traced ones
                m.system.log.emit("warm", actor="test", kind="test", thunk=str(i))
            first = m.submit("the one that holds the slot")
            server.wait_for_requests(1, WAIT)
            gc.collect()
            tracemalloc.start()
            try:
                before, _ = tracemalloc.get_traced_memory()
                thunks = [m.submit(f"pending {k}") for k in range(n)]
                m.system.log.wait_for("generation_started", count=n + 1, timeout=WAIT)
                gc.collect()
                after, _ = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert not any(t.is_computed() for t in thunks) and not first.is_computed()
    finally:
        server.stop()
    per_thunk = (after - before) / n
    assert per_thunk < 3100, f"a pending thunk holds {per_thunk:.0f} bytes"


def test_an_open_stream_holds_few_objects_the_garbage_collector_tracks() -> None:
    """The collector's pauses grow with the objects it tracks, and 1,000 open streams are most
    of them (docs/hot_path.md: a full collection among 1,000 streams sets the p99 delay).
    Counted here, each open stream, with the task that reads it by ``astream()`` and the event
    it sets, held 80 tracked objects; a watchdog wheel instead of a timer per stream, a shared
    context for the runtime's done callbacks and a few objects less in the generator took it to
    66. The budget is 70."""
    n = 200

    async def main(m: MelleaSession) -> float:
        warm = await m.ainstruct("warm up", strategy=None, model_options={"stream": True})
        await warm.astream()  # the first token: the whole path has run once
        await warm.cancel()
        started: list[asyncio.Event] = [asyncio.Event() for _ in range(n)]

        async def read(mot: object, first: asyncio.Event) -> None:
            while not mot.is_computed():  # type: ignore[attr-defined]
                if await mot.astream():  # type: ignore[attr-defined]
                    first.set()

        gc.collect()
        before = len(gc.get_objects())
        tasks = []
        for k in range(n):
            mot = await m.ainstruct(f"open {k}", strategy=None, model_options={"stream": True})
            tasks.append(asyncio.create_task(read(mot, started[k])))
        async with asyncio.timeout(WAIT):
            await asyncio.gather(*(e.wait() for e in started))
        gc.collect()
        per_stream = (len(gc.get_objects()) - before) / n
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return per_stream

    per_stream = _on_a_server_process(Script(tokens=("a ", "b ", "c "), delay=30.0), main)
    assert per_stream <= 70, f"an open stream holds {per_stream:.1f} tracked objects"


def test_a_finished_stream_leaves_no_garbage_cycle_of_the_runtime() -> None:
    """What a generation made is freed by reference counting when it ends, not left to the
    cyclic collector, whose full passes grow with such leftovers (docs/hot_path.md). Counted
    here, 24 objects a stream were left in cycles: the thunk actor with its inbox, the
    supervisor's record with its admission ticket, and each connection closed beyond the idle
    pool with its HTTP parser. What is left is asyncio's own: a closed socket transport keeps a
    bound method of itself."""
    n = 48  # more at once than the pool keeps idle (32): some connections are closed

    async def main(m: MelleaSession) -> list[object]:
        warm = await m.ainstruct("warm up", strategy=None, model_options={"stream": True})
        await warm.avalue()
        del warm
        gc.collect()
        gc.disable()
        try:
            mots = [
                await m.ainstruct(f"s {k}", strategy=None, model_options={"stream": True})
                for k in range(n)
            ]

            async def read(mot: object) -> None:
                while not mot.is_computed():  # type: ignore[attr-defined]
                    await mot.astream()  # type: ignore[attr-defined]

            async with asyncio.timeout(WAIT):
                await asyncio.gather(*(read(mot) for mot in mots))
            del mots
            for _ in range(3):  # the ends' last callbacks run
                await asyncio.sleep(0)
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            found = [o for o in gc.garbage if _of_the_runtime(o)]
            gc.garbage.clear()
            return found
        finally:
            gc.set_debug(0)
            gc.enable()

    found = _on_a_server_process(Script(tokens=("a ", "b ", "c "), delay=0.01), main)
    kinds = sorted({f"{type(o).__module__}.{type(o).__qualname__}" for o in found})
    assert not found, f"{len(found)} objects left in cycles: {kinds}"


def _of_the_runtime(obj: object) -> bool:
    module = type(obj).__module__ or ""
    return module.startswith(("mellea_actors", "pykka", "httptools"))


def _on_a_server_process(script: Script, main: Callable[[MelleaSession], Awaitable[T]]) -> T:
    """``main(session)`` in ``asyncio.run``, the session opened in that loop against a scripted
    server in its own process (so that the server's objects are not counted here)."""
    server = ScriptedOllamaProcess(script, models=(SCRIPTED_MODEL,)).start()

    async def run() -> T:
        m = start_session(model_id=SCRIPTED_MODEL, base_url=server.base_url, check=False)
        try:
            return await main(m)
        finally:
            await asyncio.to_thread(m.close)

    try:
        return asyncio.run(run())
    finally:
        server.stop()
