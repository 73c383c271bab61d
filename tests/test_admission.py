"""The transport's admission to one host (transport/admission.py): FIFO, a learned limit."""

from __future__ import annotations

import asyncio

from mellea_actors.transport.admission import Admission, Ticket


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


class _Client:
    """An AdmissionClient that records what it was told, in order."""

    def __init__(self, expect: int = 0) -> None:
        self.told: list[tuple[str, object]] = []
        self.expect = expect
        self.all_told = asyncio.Event()

    def _tell(self, what: str, ticket: Ticket) -> None:
        self.told.append((what, ticket.token))
        if len(self.told) == self.expect:
            self.all_told.set()

    def admission_granted(self, ticket: Ticket) -> None:
        self._tell("granted", ticket)

    def admission_expired(self, ticket: Ticket) -> None:
        self._tell("expired", ticket)


async def test_tickets_wait_fifo_and_a_cancelled_one_is_skipped() -> None:
    adm = Admission(asyncio.get_running_loop(), max_limit=1)
    client = _Client()
    now = adm.enter(client, "now")
    assert now.state == 1 and client.told == []  # a place at once: nobody is told
    first, gone, last = (adm.enter(client, name) for name in ("first", "gone", "last"))
    assert [t.state for t in (first, gone, last)] == [0, 0, 0] and adm.waiting == 3
    assert gone.cancel() and adm.waiting == 2 and not gone.cancel()
    now.release()
    now.release()  # once only: the second is a no-op
    assert client.told == [("granted", "first")] and adm.in_flight == 1
    first.release()
    assert client.told == [("granted", "first"), ("granted", "last")]
    assert not last.cancel()  # granted: too late to leave; it holds the place
    last.release()
    assert adm.in_flight == 0 and adm.waiting == 0 and not adm.full()


async def test_tickets_and_acquire_share_one_queue() -> None:
    adm = Admission(asyncio.get_running_loop(), max_limit=1)
    client = _Client()
    held = adm.enter(client, "held")
    waiter = asyncio.create_task(adm.acquire())
    await asyncio.sleep(0)  # queued
    ticket = adm.enter(client, "ticket")
    assert ticket.state == 0
    held.release()
    async with asyncio.timeout(5):
        await waiter  # the older waiter goes first
    assert client.told == [] and adm.in_flight == 1
    adm.release()
    assert client.told == [("granted", "ticket")]


async def test_the_queue_timeout_is_one_timer_for_every_ticket() -> None:
    """Regression (memory): each queued request held its own timeout timer (and a task)."""
    loop = asyncio.get_running_loop()
    adm = Admission(loop, max_limit=1)
    client = _Client(expect=99)
    adm.enter(client, "holder")
    timers_before = _timers(loop)
    tickets = [adm.enter(client, k, timeout=0.05) for k in range(100)]
    assert _timers(loop) == timers_before + 1
    tickets[0].cancel()
    async with asyncio.timeout(5):
        await client.all_told.wait()
    assert client.told == [("expired", k) for k in range(1, 100)]  # oldest first
    assert adm.in_flight == 1 and adm.waiting == 0
    assert _timers(loop) == timers_before


def _timers(loop: asyncio.AbstractEventLoop) -> int:
    """The loop's timers that are still armed."""
    return sum(not t.cancelled() for t in loop._scheduled)  # type: ignore[attr-defined]
