"""One ``generate()`` call across its attempts: what was delivered, and the task serving it.

The consumer reads deltas from ``queue``; the attempts (:mod:`.stream`), one after the other
in ``task``, push to it. What has been pushed is never taken back: a later attempt continues
from ``received``.

``task`` is cancelled at most once (:meth:`Trace.cancel`): a second ``cancel()`` would
interrupt the first one's cleanup halfway, leaving the upstream connection open and the
replica generating for nobody.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from mrsa.engine.base import GenerationDelta, SamplingParams
from mrsa.engine.remote.replicas import Replica


@dataclass(eq=False)
class Trace:
    """One generate() call: what has been delivered so far, across attempts."""

    prompt_ids: list[int]
    params: SamplingParams
    request_id: str
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)  # deltas, or the error to raise
    received: list[int] = field(default_factory=list)
    delivered_text: str = ""
    avoid: set[Replica] = field(default_factory=set)  # replicas that failed this trace
    failures_since_progress: int = 0
    retrying_since: float = 0.0  # first failure since the last token (0: not retrying)
    task: asyncio.Task | None = None
    aborted: bool = False
    done: bool = False

    def push(self, delta: GenerationDelta) -> None:
        self.received.extend(delta.token_ids)
        self.delivered_text += delta.text
        if delta.finished:
            self.done = True
        self.queue.put_nowait(delta)

    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def cancel(self) -> None:
        """Cancel the task unless a cancellation is already under way (see the module doc)."""
        if self.task is not None and not self.task.cancelling():
            self.task.cancel()
