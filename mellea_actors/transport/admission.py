"""Admission to one Ollama host: how many requests it gets at once, learned from its answers.

Ollama takes what it can run (``OLLAMA_NUM_PARALLEL``) plus a queue (``OLLAMA_MAX_QUEUE``, 512
by default) and answers 503 "server busy" beyond. A client-side cap below that would only hold
requests back, so the limit starts at ``max_in_flight`` (by default as many as the process has
file descriptors for); a fixed cap above it would make every extra request a 503 that is sent
again and again. So the limit *learns* (additive increase, multiplicative-style decrease, as TCP
does):

* a 503 lowers the limit to what the host held when it said so (the requests then in flight,
  less the refused one): the requests beyond wait here, in FIFO order, instead of hammering the
  host with retries;
* every ``limit`` completed requests raise it by one, back up to ``max_in_flight``, so a host
  that grew (more parallelism, another model unloaded) is found again, at the cost of about one
  503 per ``limit`` requests while the host is full.

One :class:`Admission` per host, used on the transport's loop only (no lock): ``in_flight``,
``limit`` and the waiters change only in its methods, between two awaits.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["Admission"]


class Admission:
    """FIFO admission with a learned limit (see the module docstring). Loop thread only."""

    __slots__ = ("_completions", "_loop", "_waiters", "in_flight", "limit", "max_limit")

    def __init__(self, loop: asyncio.AbstractEventLoop, max_limit: int) -> None:
        self._loop = loop
        self.max_limit = max_limit
        self.limit = max_limit
        self.in_flight = 0
        self._completions = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def full(self) -> bool:
        return self.in_flight >= self.limit or bool(self._waiters)

    async def acquire(self) -> None:
        """Take a place (waiting FIFO while the host is full; cancellable, nothing lost)."""
        if not self.full():
            self.in_flight += 1
            return
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted as we were cancelled: hand it on
            elif waiter in self._waiters:  # (_grant drops cancelled waiters it meets)
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        self.in_flight -= 1
        self._grant()

    def busy(self) -> None:
        """The host answered 503 to one of the requests in flight: it holds ``in_flight - 1``."""
        self.limit = max(1, self.in_flight - 1)
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
        while self._waiters and self.in_flight < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)
