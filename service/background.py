"""Run an event stream in its own task, so a client disconnect cancels it cleanly.

Starlette cancels a streaming response through an anyio cancel scope, and anyio cancellation is
level-triggered: every ``await`` inside the scope raises again. Cleanup that must await (aborting
engine requests) would then be cut short. Producing events in a separate asyncio task, which the
response only reads from, turns a disconnect into exactly one ``task.cancel()`` whose cleanup
runs to completion outside the response's scope.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import aclosing
from typing import TypeVar

from starlette.requests import Request

T = TypeVar("T")
_END = object()


async def pump(events: AsyncIterator[T]) -> AsyncIterator[T]:
    """Yield ``events`` as produced by a background task; closing this generator cancels it."""
    queue: asyncio.Queue = asyncio.Queue()

    async def produce() -> None:
        try:
            async with aclosing(events) as it:  # type: ignore[type-var]
                async for item in it:
                    await queue.put((item, None))
            await queue.put((_END, None))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # hand the failure to the reader
            await queue.put((_END, exc))

    task = asyncio.create_task(produce())
    try:
        while True:
            item, exc = await queue.get()
            if exc is not None:
                raise exc
            if item is _END:
                return
            yield item
    finally:
        task.cancel()


class ClientDisconnected(Exception):
    """The client went away before the response was ready."""


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` unless the client disconnects first; then cancel it and raise."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.create_task(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task.cancelled():
        raise ClientDisconnected
    return task.result()
