"""Server-sent events: the framing, and the response that streams them.

An :class:`EventStream` holds the admission ticket of the work it streams and releases it when
the response ends, however it ends (finished, failed, client gone): a slot is
given back in a ``finally``, never left to garbage collection. It also names the last event it
ends with when the server stops mid-stream (service/shutdown.py): by default an ``error`` event
with the OpenAI envelope (an OpenAI SDK raises on it), for chat streams that chunk then ``[DONE]``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from mrsa.service.admission import Ticket
from mrsa.service.errors import APIError
from mrsa.service.shutdown import CLOSING, shutting_down


def sse(data: dict | str) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n"


def sse_error(err: APIError) -> str:
    return sse(err.body())


DONE = sse("[DONE]")
SHUTDOWN = f"event: error\n{sse_error(shutting_down())}"
"""The last event of a stream the server stopped."""
CHAT_SHUTDOWN = sse_error(shutting_down()) + DONE
"""The same for a chat or completions stream: its error chunk, then ``[DONE]``."""


class EventStream(StreamingResponse):
    """``text/event-stream`` of ``lines``; ``ticket`` (if any) is released when it ends."""

    def __init__(self, lines: AsyncIterator[str], ticket: Ticket | None = None, closing: str = SHUTDOWN) -> None:
        super().__init__(
            lines, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
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
