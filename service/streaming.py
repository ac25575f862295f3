"""Server-sent events: the one place they are framed, and the response that streams them.

Handlers yield events (:func:`sse`, :func:`sse_event`, :func:`sse_error`, :data:`DONE`,
:data:`KEEP_ALIVE`), never framed text; sse-starlette frames them (``id:``, ``event:``,
``data:`` lines, comments) with ``\\n`` separators, the bytes the OpenAI SDK and our tests read.

An :class:`EventStream` holds the admission ticket of the work it streams and releases it when
the response ends, however it ends (finished, failed, client gone): a slot is
given back in a ``finally``, never left to garbage collection. It also names the last event it
ends with when the server stops mid-stream (service/shutdown.py): by default an ``error`` event
with the OpenAI envelope (an OpenAI SDK raises on it), for chat streams that chunk then ``[DONE]``.

Shutdown is service/shutdown.py's alone. sse-starlette has its own exit watch (it patches
uvicorn's ``Server.handle_exit`` and polls ``should_exit``): on a stop it cancels the stream and
sends an empty closing body itself, which would end a stream without our closing event (the
middleware only writes it into a response that has not ended). That watch is turned off with the
library's own switch, :meth:`AppStatus.disable_automatic_graceful_drain`; the streams still end at
once on a stop, because the middleware cancels them (tests/unit/test_shutdown.py).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import AppStatus
from starlette.types import Receive, Scope, Send

from mrsa.service.admission import Ticket
from mrsa.service.errors import APIError
from mrsa.service.shutdown import CLOSING, shutting_down

AppStatus.disable_automatic_graceful_drain()  # see the module docstring

SEP = "\n"
"""Line separator of every event (sse-starlette's default is ``\\r\\n``)."""


def sse(data: dict | str, *, event: str | None = None, id: int | None = None) -> ServerSentEvent:
    """One event: ``data`` as compact JSON (a string is sent as it is), with its name and id."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return ServerSentEvent(payload, event=event, id=None if id is None else str(id), sep=SEP)


def sse_error(err: APIError) -> ServerSentEvent:
    """An error chunk of a chat or completions stream: the OpenAI envelope as its data."""
    return sse(err.body())


def sse_event(event: dict) -> ServerSentEvent:
    """One Responses event: ``event:`` names its type, as OpenAI's server does."""
    return sse(event, event=event["type"])


def framed(*events: ServerSentEvent) -> str:
    """``events`` as the text on the wire."""
    return "".join(e.encode().decode() for e in events)


DONE = sse("[DONE]")
KEEP_ALIVE = ServerSentEvent(comment="keep-alive", sep=SEP)
"""A comment line: keeps an idle stream's connection (and proxies) open; clients skip it."""
SHUTDOWN = framed(sse(shutting_down().body(), event="error"))
"""The last event of a stream the server stopped."""
CHAT_SHUTDOWN = framed(sse_error(shutting_down()), DONE)
"""The same for a chat or completions stream: its error chunk, then ``[DONE]``."""


class EventStream(EventSourceResponse):
    """``text/event-stream`` of ``events``; ``ticket`` (if any) is released when it ends.

    No interval pings (``ping=0``): an idle stream sends :data:`KEEP_ALIVE` where its source
    says it is idle (a run's follower, every 15 s), so a stream carries only what its handler
    yields and, on a stop, its closing event."""

    def __init__(self, events: AsyncIterator[ServerSentEvent], ticket: Ticket | None = None,
                 closing: str = SHUTDOWN) -> None:
        super().__init__(events, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}, sep=SEP, ping=0)
        self.ticket = ticket
        self.closing = closing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if CLOSING in scope:
            scope[CLOSING].text = self.closing
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self.ticket is not None:
                self.ticket.release()
