"""One trace node of a run and its small state machine.

    WAITING --start()--> RUNNING --finish()--> FINISHED
                                 \\--abort()---> ABORTED

A node is one engine request. Its completion is accumulated while it streams, so a node aborted
at the deadline still knows how many tokens it generated (they count in usage and budget).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from enum import Enum

from engine.base import Completion
from rsa.events import NodeRecord
from rsa.tails import Tail


class NodeState(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    ABORTED = "aborted"


@dataclass(eq=False)
class Node:
    round: int
    index: int
    parents: list[int]
    seed: int
    request_id: str
    state: NodeState = NodeState.WAITING
    prompt_ids: list[int] | None = None  # built once, kept while waiting for budget
    max_tokens: int = 0
    completion: Completion = field(default_factory=Completion)
    task: asyncio.Task[None] | None = None
    tail: Tail | None = None
    answer: str | None = None

    @property
    def key(self) -> tuple[int, int]:
        return (self.round, self.index)

    @property
    def running(self) -> bool:
        return self.state is NodeState.RUNNING

    @property
    def finished(self) -> bool:
        return self.state is NodeState.FINISHED

    def start(self, max_tokens: int, task: asyncio.Task[None]) -> None:
        assert self.state is NodeState.WAITING, self.state
        self.state, self.max_tokens, self.task = NodeState.RUNNING, max_tokens, task

    def finish(self, tail: Tail, answer: str | None) -> None:
        assert self.state is NodeState.RUNNING, self.state
        self.state, self.tail, self.answer = NodeState.FINISHED, tail, answer

    def abort(self) -> None:
        assert self.state is NodeState.RUNNING, self.state
        self.state = NodeState.ABORTED

    def record(self) -> NodeRecord:
        """The trace entry of this node (only for nodes that were launched)."""
        assert self.state in (NodeState.FINISHED, NodeState.ABORTED), self.state
        tail = self.tail
        return NodeRecord(
            round=self.round,
            index=self.index,
            kind="trace",
            parents=list(self.parents),
            seed=self.seed,
            max_tokens=self.max_tokens,
            prompt_tokens=self.completion.prompt_tokens or len(self.prompt_ids or ()),
            completion_tokens=len(self.completion.token_ids),
            finish_reason=self.completion.finish_reason or "abort",
            status="finished" if self.finished else "aborted",
            text=self.completion.text,
            tail_text=tail.text if tail else "",
            tail_tokens=tail.num_tokens if tail else 0,
            cut=tail.cut if tail else False,
            answer=self.answer,
        )
