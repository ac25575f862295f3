"""What a run reports while it evolves, and what it leaves behind.

A run yields these in order; the service turns them into SSE chunks or a response body.
Plain dataclasses: rsa/ stays free of any transport.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mrsa.engine.base import EngineError

# rounds: every planned round ran; consensus: a round agreed (early_stop); settled: an adaptive
# run's stop rule settled the vote; max_population: an adaptive vote grew to its limit unsettled.
StopReason = Literal["rounds", "consensus", "settled", "max_population", "budget", "deadline"]
FinalMode = Literal["aggregate", "majority", "direct"]
NodeStatus = Literal["finished", "aborted", "failed"]


@dataclass
class NodeRecord:
    """One engine call of the run. ``round`` counts from 0; the final answer has
    ``kind == "final"`` and ``round == rounds_completed``. A ``failed`` trace (its engine
    request raised :class:`~engine.base.EngineError`) keeps the tokens it delivered before the
    failure; its ``prompt_tokens`` are the engine's own count, 0 if it reported none."""

    round: int
    index: int
    kind: Literal["trace", "final"] = "trace"
    parents: list[int] = field(default_factory=list)
    seed: int | None = None
    max_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0  # of prompt_tokens, served from the engine's prefix cache
    completion_tokens: int = 0
    reasoning_tokens: int = 0  # of a final call's completion_tokens: its reasoning part
    finish_reason: str | None = None
    status: NodeStatus = "finished"
    text: str = ""
    tail_text: str = ""
    tail_tokens: int = 0
    cut: bool = False
    answer: str | None = None
    error: str | None = None  # why a failed call failed


@dataclass(frozen=True)
class FailedTrace:
    """A trace whose engine request failed; the run went on with the survivors of its round."""

    round: int
    index: int
    error: str


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0  # completion tokens of every non-final call
    cached_tokens: int = 0  # prompt tokens served from the engine's prefix cache

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class RsaResult:
    content: str  # the final answer's content (with a reasoning parser: the part after the thinking)
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
    failed: list[FailedTrace] = field(default_factory=list)  # traces lost to engine errors
    reasoning: str | None = None  # the final answer's thinking, where the reasoning parser found some
    method: str = "rsa"  # the params' method: rsa, adaptive_vote or adaptive_rsa
    samples: int = 0  # traces of the deciding round the final answer counted (adaptive: where it stopped)

    @property
    def degraded(self) -> bool:
        """True when some traces failed and the run went on with the survivors."""
        return bool(self.failed)


class RunFailed(Exception):
    """The run cannot go on: a round kept fewer than K traces after engine failures, or the
    final aggregation failed.

    The algorithm's own failure, not an :class:`~engine.base.EngineError` (an engine error
    ends one trace; the run decides whether it can go on), so a caller tells a failed run from
    a failed engine whatever the order of its ``except`` clauses. ``cause`` is the engine error
    that brought the run down; ``status`` and ``code`` are the cause's (503
    ``upstream_unavailable`` when every replica is gone), what the service answers with;
    ``usage`` sums every call of the run until then, failed and aborted ones included."""

    def __init__(
        self,
        message: str,
        *,
        cause: EngineError,
        usage: Usage,
        failed: list[FailedTrace],
        calls: int,
        seed: int,
    ) -> None:
        super().__init__(message)
        self.cause = cause
        self.status: int = cause.status
        self.code: str = cause.code
        self.usage = usage
        self.failed = failed
        self.calls = calls
        self.seed = seed


@dataclass(frozen=True)
class NodeStarted:
    round: int
    index: int
    parents: list[int]


@dataclass(frozen=True)
class NodeFinished:
    """A trace's request ended. ``record`` is everything the run keeps of it (its tail, answer,
    token counts and effective parents): a checkpoint from which
    :class:`~rsa.run.RsaRun` can resume (``resume=``) without redoing the node.
    ``elapsed_s`` is the run's wall-clock age when it ended (pre-resume time included)."""

    round: int
    index: int
    completion_tokens: int
    answer: str | None
    status: NodeStatus
    cut: bool
    error: str | None = None  # set when status == "failed"
    record: NodeRecord | None = None
    elapsed_s: float = 0.0


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
    """A piece of the final answer as it streams: of its ``reasoning`` (the thinking, split by
    the engine's reasoning parser) or of its content."""

    text: str
    reasoning: bool = False


@dataclass(frozen=True)
class RunCompleted:
    result: RsaResult


RsaEvent = NodeStarted | NodeFinished | RoundCompleted | FinalStarted | FinalDelta | RunCompleted
