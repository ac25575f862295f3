"""Shutdown that does not wait on clients: every open request ends as soon as the server stops.

uvicorn, told to stop, waits for every connection to close, and an ``/events`` follower of a
queued run (heartbeats forever) or a long RSA stream never closes its own: the server kept
running "Waiting for connections to close". Here the stop begins a :class:`Drain` (``mrsa
serve``'s uvicorn server does it from its signal handler, mrsa/cli.py), and
:class:`ShutdownMiddleware`, which holds every HTTP request, then ends each one at once:

- a response not yet started: its work is cancelled (engine requests aborted, as for a client
  that went away) and it answers 503 ``server_shutting_down`` in the OpenAI envelope;
- a stream already started: its producer is cancelled the same way and the stream ends with
  one last event in its own wire format (:class:`~mrsa.service.streaming.EventStream` says
  which), so a client knows it was cut, not finished;
- a request arriving while draining gets the 503 at once.

Background runs are not requests: they stay in their store and resume on the next start.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mrsa.service.errors import APIError

log = logging.getLogger(__name__)

CLOSING = "mrsa.closing"
"""Scope key of the :class:`Closing` slot a streaming response fills with its last event."""


def shutting_down() -> APIError:
    return APIError("The server is shutting down; retry once it is back.", status=503,
                    type="server_error", code="server_shutting_down", headers={"Connection": "close"})


@dataclass
class Closing:
    """What a started response sends last when the server stops (set by the response)."""

    text: str = ""


class Drain:
    """The server is stopping. :meth:`begin` may be called from a signal handler or thread."""

    def __init__(self) -> None:
        self.started = False
        self._event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def begin(self) -> None:
        if self.started:
            return
        self.started = True
        log.info("shutting down: ending open requests and streams")
        if self._loop is not None and self._event is not None:
            self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self) -> None:
        if self._event is None:
            self._loop, self._event = asyncio.get_running_loop(), asyncio.Event()
        if self.started:
            return
        await self._event.wait()


class ShutdownMiddleware:
    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.drain.started:
            await shutting_down().response()(scope, receive, send)
            return
        closing = scope[CLOSING] = Closing()
        started = ended = False

        async def tracked(message: Message) -> None:
            nonlocal started, ended
            if message["type"] == "http.response.start":
                started = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                ended = True
            await send(message)

        work = asyncio.ensure_future(self.app(scope, receive, tracked))
        stop = asyncio.ensure_future(self.drain.wait())
        try:
            await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not work.done():  # the server stops (or this request was cancelled): end the work
                work.cancel()
                await asyncio.wait({work})
        if not work.cancelled() and work.exception() is None:
            return
        if not work.cancelled():
            raise work.exception()  # type: ignore[misc]
        if not started:
            await shutting_down().response()(scope, receive, send)
        elif not ended:
            await send({"type": "http.response.body", "body": closing.text.encode(), "more_body": False})
