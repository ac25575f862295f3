"""What a run reports while it evolves, and what it leaves behind.

A run yields these in order; the service turns them into SSE chunks or a response body.
Plain dataclasses: rsa/ stays free of any transport. Each progress event writes its own wire
form (``wire()``): the ``rsa`` progress object exactly as the service streams it and logs it,
and as ``mrsa eval``'s backends yield it, so every consumer reads one shape. A dict, not a
transport: the SSE chunk or log row around it is the caller's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

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

    def wire(self) -> dict[str, Any]:
        """OpenAI's ``usage`` object (the service's usage chunk and completion body)."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        }


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

    def summary(self, with_trace: bool = False) -> dict[str, Any]:
        """The ``rsa`` block of the finished run: what a completion carries beside its answer,
        and ``run_completed``'s fields; ``trace`` (every engine call) only ``with_trace``."""
        return {
            "seed": self.seed,
            "rounds_completed": self.rounds_completed,
            "calls": self.calls,
            "stop_reason": self.stop_reason,
            "final_mode": self.final_mode,
            "method": self.method,
            "samples": self.samples,
            "answer": self.answer,
            "answers": self.answers,
            "degraded": self.degraded,
            "failed": [asdict(f) for f in self.failed],
            **({"trace": [asdict(node) for node in self.trace]} if with_trace else {}),
        }


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
class RunStarted:
    """The run's shape, known before any trace starts: its seed, N, K, the rounds its plan
    holds (an adaptive vote has one) and its method. Not yielded by :meth:`RsaRun.events
    <rsa.run.RsaRun.events>`: ``RsaRun.started`` gives it at once, so a stream can open with it
    before admission and a run log can hold it from submission (a resumed run would repeat it)."""

    seed: int
    population: int
    k: int
    rounds: int
    method: str

    def wire(self) -> dict[str, Any]:
        return {"event": "run_started", "seed": self.seed, "population": self.population, "k": self.k,
                "rounds": self.rounds, "method": self.method}


@dataclass(frozen=True)
class NodeStarted:
    """A trace's request was sent, with the traces it aggregates (none in round 0). Live
    progress only: the run log keeps none (a resumed run would start them again)."""

    round: int
    index: int
    parents: list[int]

    def wire(self) -> dict[str, Any]:
        return {"event": "node_started", "round": self.round, "index": self.index, "parents": self.parents}


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

    def wire(self) -> dict[str, Any]:
        """``parents`` (the tails it actually aggregated) after round 0; ``error`` when it failed."""
        return {
            "event": "node_finished",
            "round": self.round,
            "index": self.index,
            "tokens": self.completion_tokens,
            "answer": self.answer,
            "status": self.status,
            "cut": self.cut,
            **({"parents": self.record.parents} if self.record is not None and self.round > 0 else {}),
            **({"error": self.error} if self.error is not None else {}),
        }


@dataclass(frozen=True)
class RoundCompleted:
    round: int
    answers: list[str | None]

    def wire(self) -> dict[str, Any]:
        return {"event": "round_completed", "round": self.round, "answers": self.answers}


@dataclass(frozen=True)
class FinalStarted:
    mode: FinalMode
    parents: list[int]

    def wire(self) -> dict[str, Any]:
        return {"event": "final_started", "mode": self.mode, "parents": self.parents}


@dataclass(frozen=True)
class FinalDelta:
    """A piece of the final answer as it streams: of its ``reasoning`` (the thinking, split by
    the engine's reasoning parser) or of its content."""

    text: str
    reasoning: bool = False


@dataclass(frozen=True)
class RunCompleted:
    result: RsaResult

    def wire(self, with_trace: bool = False, with_usage: bool = False) -> dict[str, Any]:
        """The result's summary (:meth:`RsaResult.summary`). A stream sends its usage in a chunk
        of its own (OpenAI's ``stream_options.include_usage``); a run log keeps it here
        (``with_usage``)."""
        return {"event": "run_completed", **self.result.summary(with_trace),
                **({"usage": self.result.usage.wire()} if with_usage else {})}


RsaEvent = NodeStarted | NodeFinished | RoundCompleted | FinalStarted | FinalDelta | RunCompleted
ProgressEvent = RunStarted | NodeStarted | NodeFinished | RoundCompleted | FinalStarted | RunCompleted
"""What has a wire form: every event but the final answer's text (:class:`FinalDelta`)."""
