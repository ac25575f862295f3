"""Admission control: at most ``running`` units of work execute and ``queued`` wait; the rest are
refused at once (429 with ``Retry-After``) instead of piling up in memory.

A :class:`Ticket` is taken when a request is accepted (:meth:`Admission.admit`, which raises
:class:`Overloaded` when both the slots and the queue are full); :meth:`Ticket.wait` returns
once the ticket holds a running slot, in arrival order; :meth:`Ticket.release` gives the slot
(or the queue place) back and hands it to the next waiter. Releasing is idempotent and a ticket
cancelled while waiting leaves the queue; every holder releases in a ``finally`` (``with
ticket:``, or the :class:`~mrsa.service.streaming.EventStream` that streams its work), so a
client that goes away never leaks a slot.

A ticket cannot outlive its request: :class:`TicketScope` (an ASGI middleware) gives every
request a :class:`Tickets` that :func:`~mrsa.service.context.admit` fills, and releases what is
in it when the request's response ends, however it ends (a store write that raised, a bug, a
client gone). Work that outlives its request, a background run, takes its ticket out of the
scope (:meth:`Ticket.detach`) when it starts, and releases it itself.

Shares: a ticket belongs to an owner (the hash of an API key; with keys off every caller is
the one tenant ``""``, which shares with nobody and so holds everything). With ``share`` below
1, one owner may hold at most ``ceil(share * queued)`` queue places (more get 429 while others
still get in), and a freed slot goes to the first waiter whose owner holds fewer than
``ceil(share * running)`` slots, before earlier waiters of an owner over its share. Slots
nobody else waits for are never left idle.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter, deque

from starlette.types import ASGIApp, Receive, Scope, Send


class Overloaded(Exception):
    """Slots and queue are full."""

    def __init__(self, what: str, retry_after_s: int) -> None:
        super().__init__(f"too many {what} in progress; retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class Ticket:
    def __init__(self, admission: Admission, running: bool, owner: str = "") -> None:
        self._admission = admission
        self.owner = owner
        self.running = running
        self.released = False
        self._turn: asyncio.Future[None] | None = None
        self._scope: Tickets | None = None

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

    def detach(self) -> Ticket:
        """Take the ticket out of its request's scope: the caller now releases it."""
        if self._scope is not None:
            self._scope.held.remove(self)
            self._scope = None
        return self

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Admission:
    """``running`` slots plus a FIFO of at most ``queued`` waiters; ``share``: the most of each
    one owner holds while others wait (see the module docstring)."""

    def __init__(self, what: str, running: int, queued: int, retry_after_s: int = 1, share: float = 1.0) -> None:
        self.what = what
        self.max_running = running
        self.max_queued = queued
        self.retry_after_s = retry_after_s
        self.running_share = max(1, math.ceil(share * running))
        self.queued_share = math.ceil(share * queued)
        self.running = 0
        self._waiting: deque[Ticket] = deque()
        self._running_of: Counter[str] = Counter()
        self._queued_of: Counter[str] = Counter()

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def admit(self, *, force: bool = False, owner: str = "") -> Ticket:
        """A ticket, running at once when a slot is free, else queued; ``force`` ignores the
        queue's bounds (for work accepted before a restart)."""
        if self.running < self.max_running and not self._waiting:
            self.running += 1
            self._running_of[owner] += 1
            return Ticket(self, running=True, owner=owner)
        full = len(self._waiting) >= self.max_queued or (owner != "" and self._queued_of[owner] >= self.queued_share)
        if full and not force:
            raise Overloaded(self.what, self.retry_after_s)
        ticket = Ticket(self, running=False, owner=owner)
        ticket._turn = asyncio.get_running_loop().create_future()
        self._waiting.append(ticket)
        self._queued_of[ticket.owner] += 1
        return ticket

    def _release(self, ticket: Ticket) -> None:
        if ticket.running or (ticket._turn is not None and ticket._turn.done()):
            # running, or handed a slot it never used
            self.running -= 1
            self._running_of[ticket.owner] -= 1
        elif ticket in self._waiting:
            self._waiting.remove(ticket)
            self._queued_of[ticket.owner] -= 1
            return
        self._hand_over()

    def _next(self) -> Ticket:
        """The first waiter whose owner is under its share of slots, else the first waiter."""
        for ticket in self._waiting:
            if ticket.owner == "" or self._running_of[ticket.owner] < self.running_share:
                return ticket
        return self._waiting[0]

    def _hand_over(self) -> None:
        while self._waiting and self.running < self.max_running:
            ticket = self._next()
            self._waiting.remove(ticket)
            self._queued_of[ticket.owner] -= 1
            self.running += 1
            self._running_of[ticket.owner] += 1
            assert ticket._turn is not None
            ticket._turn.set_result(None)


class Tickets:
    """The tickets a request holds: released together when it ends."""

    def __init__(self) -> None:
        self.held: list[Ticket] = []

    def admit(self, admission: Admission, owner: str) -> Ticket:
        ticket = admission.admit(owner=owner)
        ticket._scope = self
        self.held.append(ticket)
        return ticket

    def release(self) -> None:
        while self.held:
            ticket = self.held.pop()
            ticket._scope = None
            ticket.release()


SCOPE_KEY = "mrsa.tickets"


class TicketScope:
    """ASGI middleware: every HTTP request gets its :class:`Tickets` (``scope["mrsa.tickets"]``),
    released when its response ended or the app raised."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tickets = scope[SCOPE_KEY] = Tickets()
        try:
            await self.app(scope, receive, send)
        finally:
            tickets.release()
