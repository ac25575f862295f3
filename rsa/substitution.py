"""Which survivor takes the place of a failed parent.

A trace whose engine request raises :class:`~engine.base.EngineError` (for the remote engine:
after its retries and fail-over, i.e. no replica could serve it) does not end the run: it
becomes a *failed* node (the tokens it delivered count in usage and budget) and the run goes on
with the survivors of its round.

A child whose planned parents include a failed node takes a *substitute* in that parent's
place: the first member of a per-child preference order of the parent round that is not a
parent already and has not failed. The order is a permutation of the round's indices drawn
from ``random.Random("<seed>:substitute:<round>:<index>")``, so it depends only on the run
seed, never on timing, and the child waits for its substitute to finish like for any parent
(if the substitute fails in turn, the next one in the order is taken). Given which traces
fail, the run is therefore still reproducible.

When a round cannot keep K survivors there is nothing left to substitute: the scheduler fails
the run (:mod:`rsa.scheduler`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from mrsa.rsa.node import Node


def substitute_order(seed: int, node: Node, population: int) -> list[int]:
    """The order in which members of the parent round replace failed planned parents of
    ``node``: a permutation drawn from the run seed alone."""
    order = list(range(population))
    random.Random(f"{seed}:substitute:{node.round}:{node.index}").shuffle(order)
    return order


def effective_parents(node: Node, previous: Sequence[Node], seed: int) -> list[int] | None:
    """``node``'s planned parents with every failed one replaced by a substitute, in its
    place; None when the parent round ``previous`` has too few survivors left to fill them."""
    if not any(previous[p].failed for p in node.planned):
        return list(node.planned)
    taken = {p for p in node.planned if not previous[p].failed}
    candidates = iter(
        c
        for c in substitute_order(seed, node, len(previous))
        if c not in taken and c not in node.planned and not previous[c].failed
    )
    parents: list[int] = []
    for p in node.planned:
        if previous[p].failed:
            substitute = next(candidates, None)
            if substitute is None:
                return None
            p = substitute
        parents.append(p)
    return parents
