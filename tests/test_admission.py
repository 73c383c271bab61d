"""The transport's admission to one host (transport/admission.py): FIFO, a learned limit."""

from __future__ import annotations

import asyncio

from mellea_actors.transport.admission import Admission


async def test_fifo_beyond_the_limit_and_a_cancelled_waiter_loses_its_place() -> None:
    adm = Admission(asyncio.get_running_loop(), max_limit=2)
    await adm.acquire()
    await adm.acquire()
    order: list[str] = []

    async def wait(name: str) -> None:
        await adm.acquire()
        order.append(name)

    first = asyncio.create_task(wait("first"))
    gone = asyncio.create_task(wait("gone"))
    last = asyncio.create_task(wait("last"))
    await asyncio.sleep(0)  # all three are waiting now
    gone.cancel()
    adm.release()
    adm.release()
    async with asyncio.timeout(5):
        await asyncio.gather(first, last)
    assert order == ["first", "last"]
    assert gone.cancelled() and adm.in_flight == 2


async def test_a_busy_host_lowers_the_limit_and_completions_raise_it_back() -> None:
    adm = Admission(asyncio.get_running_loop(), max_limit=10)
    for _ in range(6):
        await adm.acquire()
    adm.busy()  # one of the six got a 503: the host holds five
    assert adm.limit == 5
    adm.release()  # the refused one leaves
    assert adm.full()
    for _ in range(5):  # every `limit` completions: one more
        adm.completed()
    assert adm.limit == 6 and not adm.full()
