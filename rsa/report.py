"""What a run leaves behind, whether it completes or fails: its trace, usage and lost traces.

A completed run reports them in its :class:`~rsa.events.RsaResult`; a run that cannot go on
reports them in its :class:`~rsa.events.RunFailed`, so a client is told what a failed run cost.
Usage sums every engine call that ended (finished, aborted or failed): every generated token
was paid for.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from mrsa.engine.base import EngineError
from mrsa.rsa.events import FailedTrace, NodeRecord, RunFailed, Usage
from mrsa.rsa.node import Node


def trace_of(nodes: Iterable[Node], final: NodeRecord | None) -> list[NodeRecord]:
    """Every engine call that ended, in trace order (``nodes`` round-major, then the final)."""
    trace = [n.record() for n in nodes if n.settled]
    if final is not None:
        trace.append(final)
    return trace


def usage_of(trace: Sequence[NodeRecord]) -> Usage:
    return Usage(
        prompt_tokens=sum(r.prompt_tokens for r in trace),
        completion_tokens=sum(r.completion_tokens for r in trace),
        # every trace is thinking; of the final answer, only what its reasoning parser says is
        reasoning_tokens=sum(r.completion_tokens if r.kind != "final" else r.reasoning_tokens for r in trace),
        cached_tokens=sum(r.cached_tokens for r in trace),
    )


def failed_traces(nodes: Iterable[Node]) -> list[FailedTrace]:
    return [FailedTrace(n.round, n.index, n.error or "") for n in nodes if n.failed]


def run_failed(
    message: str, cause: EngineError, nodes: Sequence[Node], final: NodeRecord | None, seed: int
) -> RunFailed:
    """The error that ends a run which cannot go on, with what the run spent until then."""
    trace = trace_of(nodes, final)
    return RunFailed(
        message,
        cause=cause,
        usage=usage_of(trace),
        failed=failed_traces(nodes),
        calls=len(trace),
        seed=seed,
    )
