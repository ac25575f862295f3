"""Admission control: at most ``running`` units of work execute and ``queued`` wait; the rest are
refused at once (429 with ``Retry-After``) instead of piling up in memory.

A :class:`Ticket` is taken when a request is accepted (:meth:`Admission.admit`, which raises
:class:`Overloaded` when both the slots and the queue are full); :meth:`Ticket.wait` returns
once the ticket holds a running slot, in arrival order; :meth:`Ticket.release` gives the slot
(or the queue place) back and hands it to the next waiter. Releasing is idempotent and a ticket
cancelled while waiting leaves the queue; every holder releases in a ``finally`` (``with
ticket:``, or the :class:`~mrsa.service.streaming.EventStream` that streams its work), so a
client that goes away never leaks a slot.
"""

from __future__ import annotations

import asyncio
from collections import deque


class Overloaded(Exception):
    """Slots and queue are full."""

    def __init__(self, what: str, retry_after_s: int) -> None:
        super().__init__(f"too many {what} in progress; retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class Ticket:
    def __init__(self, admission: Admission, running: bool) -> None:
        self._admission = admission
        self.running = running
        self.released = False
        self._turn: asyncio.Future[None] | None = None

    async def wait(self) -> None:
        """Until this ticket holds a running slot."""
        if self.running:
            return
        assert self._turn is not None
        try:
            await asyncio.shield(self._turn)
        except asyncio.CancelledError:
            if self._turn.done() and not self._turn.cancelled():
                self.running = True  # the slot arrived as we were cancelled: release gives it back
            raise
        self.running = True

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        self._admission._release(self)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Admission:
    """``running`` slots plus a FIFO of at most ``queued`` waiters."""

    def __init__(self, what: str, running: int, queued: int, retry_after_s: int = 1) -> None:
        self.what = what
        self.max_running = running
        self.max_queued = queued
        self.retry_after_s = retry_after_s
        self.running = 0
        self._waiting: deque[Ticket] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def admit(self, *, force: bool = False) -> Ticket:
        """A ticket, running at once when a slot is free, else queued; ``force`` ignores the
        queue's bound (for work accepted before a restart)."""
        if self.running < self.max_running and not self._waiting:
            self.running += 1
            return Ticket(self, running=True)
        if len(self._waiting) >= self.max_queued and not force:
            raise Overloaded(self.what, self.retry_after_s)
        ticket = Ticket(self, running=False)
        ticket._turn = asyncio.get_running_loop().create_future()
        self._waiting.append(ticket)
        return ticket

    def _release(self, ticket: Ticket) -> None:
        if ticket.running:
            self.running -= 1
        elif ticket in self._waiting:
            self._waiting.remove(ticket)
            return
        elif ticket._turn is not None and ticket._turn.done():
            self.running -= 1  # handed a slot it never used
        self._hand_over()

    def _hand_over(self) -> None:
        while self._waiting and self.running < self.max_running:
            ticket = self._waiting.popleft()
            self.running += 1
            assert ticket._turn is not None
            ticket._turn.set_result(None)
