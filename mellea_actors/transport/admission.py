"""Admission to one Ollama host: how many requests it gets at once, learned from its answers.

Ollama takes what it can run (``OLLAMA_NUM_PARALLEL``) plus a queue (``OLLAMA_MAX_QUEUE``, 512
by default) and answers 503 "server busy" beyond. A client-side cap below that would only hold
requests back; a fixed cap above it would make every extra request a 503 that is sent again and
again. So the limit *learns*, up to ``max_in_flight`` (by default as many as the process has
file descriptors for), as TCP's window does:

* **slow start**: the limit starts at ``INITIAL_LIMIT`` (1,024, or ``max_in_flight`` if lower)
  and grows by one for every request the host *answers* (a status line below 400: it took it),
  so it doubles every round trip while the host takes all it gets. A burst of 10,000 requests
  to a host that takes 516 then opens about 1,024 connections, not 10,000 (each open one costs
  about 8 KB, which a process does not give back). The first window is not smaller because
  a smaller one measurably hurts bursts the host does take: with 256, 1,000 streams started at
  once arrive at the host in bunches, and their chunks' p99 delay grew from ~10 to 20-80 ms
  (``bench/``, scenario ``many_streams``);
* a 503 lowers the limit to what the host held when it said so (the requests then in flight,
  less the refused one): the requests beyond wait here, in FIFO order, instead of hammering the
  host with retries;
* every ``limit`` completed requests raise it by one, back up to ``max_in_flight``, so a host
  that grew (more parallelism, another model unloaded) is found again, at the cost of about one
  503 per ``limit`` requests while the host is full.

A request waits for its place in one of two ways, both in the same FIFO queue:

* :meth:`Admission.acquire` — awaited by a task (cancelling the task leaves the queue);
* :meth:`Admission.enter` — a :class:`Ticket`, its :class:`AdmissionClient` told when its turn
  comes, for a caller that starts its task only once admitted: a generation that waits for a
  place then holds no task, coroutine, timer or callback object of its own, one small ticket
  only (about 3 KB less per waiting generation; 10,000 pending thunks are the case).
  ``Ticket.cancel()`` leaves the queue (lazily: the ticket is skipped when its turn comes).

The queue timeout (``timeout`` of :meth:`enter`, the same for every ticket of one admission) is
one timer for the whole queue, armed for its oldest ticket: FIFO order is deadline order.

One :class:`Admission` per host, used on the transport's loop only (no lock): ``in_flight``,
``limit``, the queue and its timer change only in its methods, between two awaits; the
clients are told on that loop, from inside :meth:`release`, :meth:`completed` or the timer.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, Protocol

__all__ = ["INITIAL_LIMIT", "Admission", "AdmissionClient", "Ticket"]

#: The limit before the host said anything: slow start's first window (see the module docstring).
INITIAL_LIMIT = 1024


class AdmissionClient(Protocol):
    """Who is told about its waiting tickets (on the admission's loop; must not raise)."""

    def admission_granted(self, ticket: Ticket) -> None:
        """``ticket`` holds a place now: the request may start (and ``release`` it at its end)."""
        ...

    def admission_expired(self, ticket: Ticket) -> None:
        """``ticket`` waited its ``timeout`` without a place: it left the queue."""
        ...


class Ticket:
    """One request's place at an :class:`Admission`, or its place in the queue (loop thread
    only).

    ``state``: 0 waiting, 1 granted (holds a place), 2 expired, 3 cancelled, 4 released.
    ``token`` is the client's (what the ticket is for). The client of a waiting ticket is told
    ``admission_granted`` when it gets its place, or instead ``admission_expired`` when it
    waited ``timeout`` s; neither after :meth:`cancel`. A granted ticket's place is given back
    by :meth:`release` (once: it may be called again, by whoever ends the request, at no cost).
    """

    __slots__ = ("_admission", "client", "deadline", "state", "token")

    def __init__(
        self,
        admission: Admission,
        client: AdmissionClient | None,
        token: Any,
        deadline: float | None,
    ) -> None:
        self._admission = admission
        self.client = client
        self.token = token
        self.deadline = deadline
        self.state = 0

    def release(self) -> None:
        """Give back the place this ticket holds (nothing if it holds none)."""
        if self.state == 1:
            self.state = 4
            self.token = None  # what it is for (which may hold this ticket): no cycle kept
            self._admission.release()

    def cancel(self) -> bool:
        """Leave the queue; False if it was granted or expired already (too late)."""
        if self.state != 0:
            return False
        self.state = 3
        self.client = self.token = None  # drop what they hold at once
        self._admission._left()
        return True


class _Wake:
    """The client of :meth:`Admission.acquire`'s tickets: the token is the waiting future."""

    def admission_granted(self, ticket: Ticket) -> None:
        waiter: asyncio.Future[None] = ticket.token
        if not waiter.done():
            waiter.set_result(None)

    def admission_expired(self, ticket: Ticket) -> None:
        raise AssertionError("an acquire() ticket has no deadline")


_WAKE = _Wake()


class Admission:
    """FIFO admission with a learned limit (see the module docstring). Loop thread only."""

    __slots__ = (
        "_completions",
        "_loop",
        "_queue",
        "_timer",
        "_waiting",
        "in_flight",
        "limit",
        "max_limit",
        "slow_start",
    )

    def __init__(
        self, loop: asyncio.AbstractEventLoop, max_limit: int, initial: int = INITIAL_LIMIT
    ) -> None:
        self._loop = loop
        self.max_limit = max_limit
        self.limit = max(1, min(max_limit, initial))
        self.slow_start = self.limit < max_limit  # until the first 503, or max_limit
        self.in_flight = 0
        self._completions = 0
        self._queue: deque[Ticket] = deque()  # FIFO; cancelled/expired tickets stay until met
        self._waiting = 0  # tickets of the queue still waiting
        self._timer: asyncio.TimerHandle | None = None  # for the oldest timed ticket

    @property
    def waiting(self) -> int:
        """Requests waiting for a place."""
        return self._waiting

    def full(self) -> bool:
        return self.in_flight >= self.limit or self._waiting > 0

    def enter(
        self, client: AdmissionClient, token: Any = None, timeout: float | None = None
    ) -> Ticket:
        """A ticket that holds a place now (``state`` 1) or waits in the queue (0) until
        ``client`` is told (see :class:`Ticket`)."""
        if not self.full():
            self.in_flight += 1
            ticket = Ticket(self, None, token, None)
            ticket.state = 1
            return ticket
        deadline = None if timeout is None else time.monotonic() + timeout
        ticket = Ticket(self, client, token, deadline)
        self._queue.append(ticket)
        self._waiting += 1
        if deadline is not None and self._timer is None:
            self._arm(deadline)
        return ticket

    async def acquire(self) -> None:
        """Take a place (waiting FIFO while the host is full; cancellable, nothing lost)."""
        if not self.full():
            self.in_flight += 1
            return
        ticket = self.enter(_WAKE, self._loop.create_future())
        try:
            await ticket.token
        except BaseException:
            if not ticket.cancel():
                ticket.release()  # granted as we were cancelled: hand it on
            raise

    def _left(self) -> None:
        """A ticket was cancelled (it stays in the queue until met)."""
        self._waiting -= 1
        if self._waiting == 0:
            self._queue.clear()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _arm(self, deadline: float) -> None:
        delay = max(0.0, deadline - time.monotonic())
        self._timer = self._loop.call_later(delay, self._expire)

    def _expire(self) -> None:
        """The oldest timed tickets waited their timeout: they leave, their clients told."""
        self._timer = None
        now = time.monotonic()
        queue = self._queue
        while queue and queue[0].state != 0:
            queue.popleft()
        expired: list[Ticket] = []
        for ticket in queue:  # oldest first (an acquire() waiter has no deadline: skipped)
            if ticket.state != 0 or ticket.deadline is None:
                continue
            if ticket.deadline > now:
                self._arm(ticket.deadline)
                break
            ticket.state = 2  # stays in the queue until met, like a cancelled one
            self._waiting -= 1
            expired.append(ticket)
        if not self._waiting:
            queue.clear()
        for ticket in expired:  # after the walk: a client may queue a new ticket
            client, ticket.client = ticket.client, None
            if client is not None:
                client.admission_expired(ticket)
            ticket.token = None

    def release(self) -> None:
        self.in_flight -= 1
        self._grant()

    def answered(self) -> None:
        """The host took a request in flight (its answer began, status < 400): in slow start,
        one more may go."""
        if self.slow_start:
            self.limit += 1
            if self.limit >= self.max_limit:
                self.limit = self.max_limit
                self.slow_start = False
            self._grant()

    def busy(self) -> None:
        """The host answered 503 to one of the requests in flight: it holds ``in_flight - 1``."""
        self.limit = max(1, self.in_flight - 1)
        self.slow_start = False
        self._completions = 0

    def completed(self) -> None:
        """A request completed: additive increase of the limit."""
        if self.limit >= self.max_limit:
            return
        self._completions += 1
        if self._completions >= self.limit:
            self._completions = 0
            self.limit += 1
            self._grant()

    def _grant(self) -> None:
        queue = self._queue
        while queue and self.in_flight < self.limit:
            ticket = queue.popleft()
            if ticket.state == 0:
                ticket.state = 1
                self._waiting -= 1
                self.in_flight += 1
                client, ticket.client = ticket.client, None
                if client is not None:
                    client.admission_granted(ticket)
        if not self._waiting and self._timer is not None:
            self._timer.cancel()
            self._timer = None
