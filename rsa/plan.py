"""The node graph of a run: which K parents feed every node, and every node's sampling seed.

All subsets are drawn up front from the run seed. That makes the run reproducible whatever the
schedule: the round-synchronous schedule and the dataflow schedule (a node starts the moment its
own parents finish) execute the same graph, so with a deterministic engine they produce the same
traces. It also is what lets the dataflow schedule exist: a node's parents are known before its
round begins.
"""

from __future__ import annotations

import random
from collections.abc import Sequence


def _derived(seed: int, *labels: object) -> random.Random:
    """A generator for one named purpose. String seeds are hashed with SHA-512 by ``random``,
    so the stream is stable across processes (unlike ``hash()``) and independent per label."""
    return random.Random(":".join(str(x) for x in (seed, *labels)))


class Plan:
    """Parents and seeds of every node of a run of ``rounds`` rounds of ``population`` nodes.

    Round 0 samples the plain prompt and has no parents. Every node's seed depends on the run
    seed and its position only, so the first ``n`` samples of round 0 are the same whatever the
    population: an adaptive run (round 0 of up to ``first`` nodes) samples a prefix of what a
    vote of ``first`` samples does. For every later round ``r`` and index
    ``i``, ``parents(r, i)`` holds ``k`` distinct indices of round ``r - 1``, drawn uniformly
    without replacement, independently for every node (a parent may feed several children). The
    draw order is kept: it is the (uniformly random) order of candidates in the prompt, which
    spreads any position bias of the model evenly.
    """

    def __init__(self, population: int, k: int, rounds: int, seed: int, *, first: int | None = None) -> None:
        first = population if first is None else first
        if population < 1 or rounds < 1:
            raise ValueError("population and rounds must be at least 1")
        if not 1 <= k <= population:
            raise ValueError(f"k ({k}) must be between 1 and population ({population})")
        if first < population:
            raise ValueError(f"the first round ({first}) must hold at least population ({population})")
        self.population = population
        self.first = first
        self.k = k
        self.rounds = rounds
        self.seed = seed
        rng = random.Random(seed)
        self._parents: list[list[tuple[int, ...]]] = [[() for _ in range(first)]]
        for r in range(1, rounds):
            pool = first if r == 1 else population
            self._parents.append([tuple(rng.sample(range(pool), k)) for _ in range(population)])
        self._seeds = [
            [_derived(seed, r, i).getrandbits(31) for i in range(self.width(r))]
            for r in range(rounds)
        ]

    def width(self, round: int) -> int:
        """Nodes of round ``round``: ``first`` in round 0 (an adaptive run's largest first round,
        grown in waves), ``population`` in every later round."""
        return self.first if round == 0 else self.population

    def parents(self, round: int, index: int) -> tuple[int, ...]:
        """Indices in round ``round - 1`` whose tails feed node ``(round, index)``."""
        return self._parents[round][index]

    def node_seed(self, round: int, index: int) -> int:
        """The sampling seed of node ``(round, index)``."""
        return self._seeds[round][index]

    @property
    def final_seed(self) -> int:
        """The sampling seed of the final call (aggregation or direct answer)."""
        return _derived(self.seed, "final").getrandbits(31)

    def final_subset(self, pool: Sequence[int]) -> list[int]:
        """``min(k, len(pool))`` distinct members of ``pool`` for the final aggregation.

        Depends only on the seed and the pool's members (not their order), so the same finished
        population always yields the same final prompt."""
        return _derived(self.seed, "final-subset").sample(sorted(pool), min(self.k, len(pool)))
