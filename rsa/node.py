"""One trace node of a run and its small state machine.

    WAITING --start()--> RUNNING --finish()--> FINISHED
                                 \\--abort()---> ABORTED
                                 \\--fail()----> FAILED   (its engine request raised EngineError)

    WAITING --restore()--> FINISHED | FAILED      (from a checkpoint: no engine call)

A node is one engine request. Its completion is accumulated while it streams, so a node aborted
at the deadline still knows how many tokens it generated (they count in usage and budget).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from enum import Enum

from mrsa.engine.base import Completion, Engine, SamplingParams
from mrsa.rsa.events import NodeRecord
from mrsa.rsa.tails import Tail


class NodeState(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    ABORTED = "aborted"
    FAILED = "failed"


@dataclass(eq=False)
class Node:
    round: int
    index: int
    parents: list[int]  # the planned parents; the scheduler replaces failed ones at launch
    seed: int
    request_id: str
    state: NodeState = NodeState.WAITING
    prompt_ids: list[int] | None = None  # built once, kept while waiting for budget
    max_tokens: int = 0
    completion: Completion = field(default_factory=Completion)
    task: asyncio.Task[None] | None = None
    tail: Tail | None = None
    answer: str | None = None
    error: str | None = None  # why the engine request failed
    planned: list[int] = field(default_factory=list)  # the plan's parents, before substitution
    restored: NodeRecord | None = None  # the checkpoint this node was restored from

    def __post_init__(self) -> None:
        if not self.planned:
            self.planned = list(self.parents)

    @property
    def key(self) -> tuple[int, int]:
        return (self.round, self.index)

    @property
    def running(self) -> bool:
        return self.state is NodeState.RUNNING

    @property
    def finished(self) -> bool:
        return self.state is NodeState.FINISHED

    @property
    def failed(self) -> bool:
        return self.state is NodeState.FAILED

    @property
    def settled(self) -> bool:
        """Its request ended, one way or another."""
        return self.state in (NodeState.FINISHED, NodeState.ABORTED, NodeState.FAILED)

    def start(self, max_tokens: int, task: asyncio.Task[None]) -> None:
        assert self.state is NodeState.WAITING, self.state
        self.state, self.max_tokens, self.task = NodeState.RUNNING, max_tokens, task

    def finish(self, tail: Tail, answer: str | None) -> None:
        assert self.state is NodeState.RUNNING, self.state
        self.state, self.tail, self.answer = NodeState.FINISHED, tail, answer

    def abort(self) -> None:
        assert self.state is NodeState.RUNNING, self.state
        self.state = NodeState.ABORTED

    def fail(self, error: str) -> None:
        assert self.state is NodeState.RUNNING, self.state
        self.state, self.error = NodeState.FAILED, error

    def restore(self, record: NodeRecord) -> None:
        """Settle a waiting node from a checkpoint of an earlier process: it counts as
        finished (or failed) without an engine call. Only the text and the counts are kept,
        so :meth:`record` returns the checkpoint itself."""
        assert self.state is NodeState.WAITING, self.state
        if record.kind != "trace" or record.status not in ("finished", "failed"):
            raise ValueError(f"cannot restore a {record.kind} record with status {record.status}")
        if record.seed != self.seed:
            raise ValueError(
                f"checkpoint of node ({self.round}, {self.index}) has seed {record.seed}, the plan "
                f"says {self.seed}: it belongs to another run"
            )
        self.parents = list(record.parents)
        self.max_tokens = record.max_tokens
        self.completion = Completion(
            text=record.text, finish_reason=record.finish_reason, prompt_tokens=record.prompt_tokens  # type: ignore[arg-type]
        )
        self.restored = record
        if record.status == "failed":
            self.state, self.error = NodeState.FAILED, record.error or "failed before a restart"
        else:
            self.state = NodeState.FINISHED
            self.tail = Tail(record.tail_text, record.tail_tokens, record.cut, record.answer,
                             finished=record.finish_reason == "stop")
            self.answer = record.answer

    def record(self) -> NodeRecord:
        """The trace entry of this node (only for nodes that were launched)."""
        assert self.settled, self.state
        if self.restored is not None:
            return self.restored
        tail = self.tail
        if self.failed:  # the engine's count only: a request refused at once cost no prompt
            prompt_tokens = self.completion.prompt_tokens
        else:
            prompt_tokens = self.completion.prompt_tokens or len(self.prompt_ids or ())
        return NodeRecord(
            round=self.round,
            index=self.index,
            kind="trace",
            parents=list(self.parents),
            seed=self.seed,
            max_tokens=self.max_tokens,
            prompt_tokens=prompt_tokens,
            cached_tokens=self.completion.cached_tokens,
            completion_tokens=len(self.completion.token_ids),
            finish_reason="error" if self.failed else self.completion.finish_reason or "abort",
            status=self.state.value,  # type: ignore[arg-type]
            text=self.completion.text,
            tail_text=tail.text if tail else "",
            tail_tokens=tail.num_tokens if tail else 0,
            cut=tail.cut if tail else False,
            answer=self.answer,
            error=self.error,
        )


async def stream_request(engine: Engine, node: Node, sampling: SamplingParams) -> None:
    """A running node's engine request; deltas accumulate on the node as they arrive. The
    scheduler runs it as the node's task and reads the node once the task ended."""
    assert node.prompt_ids is not None
    stream = engine.generate(node.prompt_ids, sampling, node.request_id)
    try:
        async for delta in stream:
            node.completion.add(delta)
            if delta.finished:
                break
    finally:
        await close_stream(stream)


async def close_stream(stream: object) -> None:
    """Close an engine stream; closing is how the engine learns we stopped listening."""
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()
