"""Server-sent events: the framing, and the response that streams them.

An :class:`EventStream` holds the admission ticket of the work it streams and releases it when
the response ends, however it ends (finished, failed, client gone): a slot is
given back in a ``finally``, never left to garbage collection.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from mrsa.service.admission import Ticket
from mrsa.service.errors import APIError


def sse(data: dict | str) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n"


def sse_error(err: APIError) -> str:
    return sse(err.body())


DONE = sse("[DONE]")


class EventStream(StreamingResponse):
    """``text/event-stream`` of ``lines``; ``ticket`` (if any) is released when it ends."""

    def __init__(self, lines: AsyncIterator[str], ticket: Ticket | None = None) -> None:
        super().__init__(
            lines, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        self.ticket = ticket

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self.ticket is not None:
                self.ticket.release()
