"""Waiting on a condition instead of on a clock: a test polls for what must happen, and its bound
only turns a hang into a failure that says what never happened. It measures nothing (speed
belongs to the benchmarks), so the bounds are generous."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest


async def until(condition: Callable[[], bool], what: str, *, within_s: float = 10.0) -> None:
    """Let the event loop's tasks progress until ``condition()`` holds."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + within_s
    while not condition():
        if loop.time() > give_up:
            pytest.fail(f"{what}: still not the case after {within_s} s")
        await asyncio.sleep(0.001)


def eventually(condition: Callable[[], bool], what: str, *, within_s: float = 120.0, interval_s: float = 0.05) -> None:
    """Poll ``condition()`` (a server's state, from another process) until it holds."""
    give_up = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > give_up:
            pytest.fail(f"{what}: still not the case after {within_s} s")
        time.sleep(interval_s)
