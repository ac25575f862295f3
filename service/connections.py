"""Slow and idle clients: uvicorn's HTTP/1.1 protocol with a read deadline and a connection cap.

uvicorn (0.55) times a connection out only once it has answered a request, and any byte resets
that keep-alive timer: a connection that never completes its headers, trickles its body, or
sends nothing at all is held forever, and each holds a file descriptor (140 of them made
``/health`` fail under a 128-file limit). :class:`GuardedH11Protocol` adds what nginx calls
``client_header_timeout`` and ``client_body_timeout`` in one deadline:

- whenever a connection starts waiting for a request (accepted, or kept alive after a
  response), the whole request, headers and body, must arrive within ``read_timeout_s``;
  otherwise the connection is closed (a request whose headers came in sees ``http.disconnect``,
  which cancels its work as a client that went away does);
- beyond ``max_connections`` open connections a new one closes the oldest connection still
  waiting for a request (an idle or slow one: never one being answered), or, with none such,
  itself; so a flood of idle sockets cannot starve ``/health`` or a real client.

h11 rather than httptools: its parser bounds the request line and headers
(``h11_max_incomplete_event_size``, 400 beyond), and it is the implementation uvicorn documents
for that limit. No front proxy is needed for these; one still belongs in front of a public
bind for TLS (deploy/README.md).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import resource
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

# File descriptors the process keeps for itself beyond client connections (the listening
# socket, the run store, logs, the engine's sockets and pipes).
RESERVED_FDS = 64
_order = itertools.count()


def fitting_connections(wanted: int, reserved: int = RESERVED_FDS) -> int:
    """``wanted``, lowered so that the connections fit this process's open-file limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - reserved))


def guarded_protocol(read_timeout_s: float, max_connections: int) -> type[H11Protocol]:
    """The protocol class to hand uvicorn (``Config(http=...)``) with these limits."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,),
                {"read_timeout_s": read_timeout_s, "max_connections": max_connections})


class GuardedH11Protocol(H11Protocol):
    read_timeout_s: float = 15.0
    max_connections: int = 1000

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._awaited: object = None  # the request cycle that was current when the deadline was armed
        self._opened = next(_order)

    # ------------------------------------------------------------------ uvicorn's hooks

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections and not self._make_room():
            log.warning("connection limit (%d) reached; refusing a new connection", self.max_connections)
            self.transport.close()
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.cycle is not self._awaited and self.cycle is not None and not self.cycle.more_body:
            self._disarm()  # the awaited request is in, headers and body

    def on_response_complete(self) -> None:
        self._arm()  # before uvicorn parses a pipelined request, which may complete at once
        super().on_response_complete()
        if self.cycle is not self._awaited and not self.cycle.more_body:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    # ------------------------------------------------------------------ the deadline

    def _arm(self) -> None:
        self._disarm()
        self._awaited = self.cycle
        self._deadline = self.loop.call_later(self.read_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _waiting(self) -> bool:
        """Still waiting for the request it was armed for: its headers, or the rest of its body."""
        if self.cycle is self._awaited:
            return self.cycle is None or self.cycle.response_complete
        return self.cycle.more_body and not self.cycle.response_started

    def _expire(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or not self._waiting():
            return
        log.debug("closing a connection whose request did not arrive within %gs", self.read_timeout_s)
        self.transport.close()

    def _make_room(self) -> bool:
        """Close the oldest other connection waiting for a request; False when there is none."""
        idle = [c for c in self.connections
                if c is not self and isinstance(c, GuardedH11Protocol) and c._waiting()
                and not c.transport.is_closing()]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: c._opened)
        oldest._disarm()
        oldest.transport.close()
        self.connections.discard(oldest)  # closing is asynchronous; it no longer counts
        return True
