"""Resuming a run from the checkpoints an earlier process reported.

Every :class:`~rsa.events.NodeFinished` carries the node's :class:`~rsa.events.NodeRecord`, a
complete checkpoint (tail, answer, token counts, effective parents, seed).
``RsaRun(..., resume=records, elapsed_s=...)`` rebuilds the same plan from the same seed and
settles those nodes without engine calls, so a run interrupted by a crash continues where it
was, redoing only what was in flight; budget, usage and the deadline count the work done before.
"""

from __future__ import annotations

from collections.abc import Sequence

from mrsa.engine.base import EngineError
from mrsa.rsa.events import NodeRecord
from mrsa.rsa.node import NodeState
from mrsa.rsa.scheduler import Scheduler


def restore(scheduler: Scheduler, records: Sequence[NodeRecord]) -> None:
    """Settle the nodes an earlier process finished, from their checkpoints.

    The plan (parents and seeds) is drawn from the seed alone, so the same seed and parameters
    rebuild the same graph; each checkpoint brings back a node's tail, answer, token counts and
    effective parents. Their tokens count against the budget and in usage, rounds they complete
    count as completed (consensus included; an adaptive run's waves and stop rule replay in
index order, so it settles where the uninterrupted run did), and no event is emitted for them: the earlier
    process reported them already. Aborted traces and the final call are not restored: they are
    redone. Resuming with the nodes reported by :class:`NodeFinished` events therefore redoes at
    most the nodes in flight."""
    params = scheduler.params
    for record in records:
        if record.kind != "trace" or record.status == "aborted":
            continue
        if not (0 <= record.round < len(scheduler.rounds) and 0 <= record.index < len(scheduler.rounds[record.round])):
            raise ValueError(f"checkpoint of node ({record.round}, {record.index}) is outside the plan")
        node = scheduler.rounds[record.round][record.index]
        if node.state is not NodeState.WAITING:
            raise ValueError(f"two checkpoints of node ({record.round}, {record.index})")
        node.restore(record)
        scheduler.budget.generated += record.completion_tokens
        if node.failed:
            scheduler.errors[node.round] = EngineError(node.error or "failed before a restart")
    for r in range(len(scheduler.rounds)):
        if params.adaptive:
            scheduler.advance(r)  # counts in index order: decides as the earlier process did
        else:
            scheduler.check_round(r)
    scheduler.events.clear()  # the earlier process reported these rounds
