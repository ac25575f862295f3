"""Plain chat completion (no ``rsa`` object): what vLLM's own server would answer.

``n`` choices are ``n`` engine requests, each with its own seed (``seed + i``), merged into one
stream of ``(choice index, delta)``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing

from mrsa.engine.base import Engine, GenerationDelta, SamplingParams


async def merged_generations(
    engine: Engine, prompt_ids: Sequence[int], params: Sequence[SamplingParams], request_id: str
) -> AsyncIterator[tuple[int, GenerationDelta]]:
    """Deltas of ``len(params)`` requests over the same prompt, as they arrive."""
    queue: asyncio.Queue[tuple[int, GenerationDelta] | BaseException | None] = asyncio.Queue()

    async def one(i: int, p: SamplingParams) -> None:
        try:
            async with aclosing(engine.generate(prompt_ids, p, f"{request_id}-{i}")) as stream:
                async for delta in stream:
                    queue.put_nowait((i, delta))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            queue.put_nowait(exc)
        finally:
            queue.put_nowait(None)

    tasks = [asyncio.create_task(one(i, p)) for i, p in enumerate(params)]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
