"""Task plumbing of the routes: work in its own task, the disconnect watch, fan-in of streams.

Why a separate task. Starlette cancels a streaming response through an anyio cancel scope, and
anyio cancellation is level-triggered: every ``await`` inside the scope raises again, so cleanup
that must await (aborting engine requests) would be cut short. Events produced by a task of
their own, which the response only reads, turn a disconnect into one ``task.cancel()`` whose
cleanup runs to completion outside the response's scope (:func:`in_own_task`).

A non-streaming request has no response to cancel: :func:`until_disconnect` runs its work in
a task group beside a watch on the connection; whichever ends first cancels the other, and the
group waits for the cancelled work's cleanup before :class:`ClientDisconnected` is raised.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import aclosing
from typing import TypeVar

from starlette.requests import Request

T = TypeVar("T")
_END = object()


CLIENT_CLOSED = 499
"""nginx's status for "client closed request": never seen by the client; in logs and metrics."""


class ClientDisconnected(Exception):
    """The client went away before the response was ready."""


def _single(group: BaseExceptionGroup) -> BaseException:
    """The one error of a task group that failed (the others are cancellations)."""
    first = group.exceptions[0]
    return _single(first) if isinstance(first, BaseExceptionGroup) else first


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """``await work``, unless the client disconnects first: then the work is cancelled, its
    cleanup awaited, and :class:`ClientDisconnected` raised. The work's own errors propagate."""
    result: list[T] = []

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        raise ClientDisconnected

    async def run(watcher: asyncio.Task[None]) -> None:
        result.append(await work)
        watcher.cancel()

    try:
        async with asyncio.TaskGroup() as group:
            watcher = group.create_task(watch())
            group.create_task(run(watcher))
    except BaseExceptionGroup as failed:
        raise _single(failed) from None
    return result[0]


async def in_own_task(events: AsyncIterator[T]) -> AsyncIterator[T]:
    """Yield ``events`` as a task of their own produces them; closing this generator cancels
    that task, which then runs its cleanup to the end without us (see the module docstring)."""
    queue: asyncio.Queue[tuple[object, BaseException | None]] = asyncio.Queue()

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
            yield item  # type: ignore[misc]
    finally:
        task.cancel()


async def fan_in(streams: Sequence[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """``(i, item)`` from every stream as items arrive. The first error ends all of them;
    closing this generator closes them all (each stream's ``aclose`` runs to the end)."""
    queue: asyncio.Queue[tuple[int, T] | None] = asyncio.Queue()

    async def drain(i: int, stream: AsyncIterator[T]) -> None:
        async with aclosing(stream) as it:  # type: ignore[type-var]
            async for item in it:
                queue.put_nowait((i, item))

    async def run_all() -> None:
        try:
            async with asyncio.TaskGroup() as group:
                for i, stream in enumerate(streams):
                    group.create_task(drain(i, stream))
        finally:
            queue.put_nowait(None)

    runner = asyncio.create_task(run_all())
    try:
        while (item := await queue.get()) is not None:
            yield item
        try:
            await runner
        except BaseExceptionGroup as failed:
            raise _single(failed) from None
    finally:
        if not runner.done():
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
