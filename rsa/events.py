"""What a run reports while it evolves, and what it leaves behind.

The runner yields these in order; the service turns them into SSE chunks or a response body.
Plain dataclasses: rsa/ stays free of any transport.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

StopReason = Literal["rounds", "consensus", "budget", "deadline"]
FinalMode = Literal["aggregate", "majority", "direct"]
NodeStatus = Literal["finished", "aborted"]


@dataclass
class NodeRecord:
    """One engine call of the run. ``round`` counts from 0; the final answer has
    ``kind == "final"`` and ``round == rounds_completed``."""

    round: int
    index: int
    kind: Literal["trace", "final"] = "trace"
    parents: list[int] = field(default_factory=list)
    seed: int | None = None
    max_tokens: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    status: NodeStatus = "finished"
    text: str = ""
    tail_text: str = ""
    tail_tokens: int = 0
    cut: bool = False
    answer: str | None = None


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0  # completion tokens of every non-final call

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class RsaResult:
    content: str
    finish_reason: str
    final_mode: FinalMode
    stop_reason: StopReason
    rounds_completed: int
    calls: int
    seed: int
    usage: Usage
    answers: list[list[str | None]]  # extracted answer per finished node, per round
    answer: str | None  # the final extracted answer
    trace: list[NodeRecord]


@dataclass(frozen=True)
class NodeStarted:
    round: int
    index: int
    parents: list[int]


@dataclass(frozen=True)
class NodeFinished:
    round: int
    index: int
    completion_tokens: int
    answer: str | None
    status: NodeStatus
    cut: bool


@dataclass(frozen=True)
class RoundCompleted:
    round: int
    answers: list[str | None]


@dataclass(frozen=True)
class FinalStarted:
    mode: FinalMode
    parents: list[int]


@dataclass(frozen=True)
class FinalDelta:
    text: str


@dataclass(frozen=True)
class RunCompleted:
    result: RsaResult


RsaEvent = NodeStarted | NodeFinished | RoundCompleted | FinalStarted | FinalDelta | RunCompleted
