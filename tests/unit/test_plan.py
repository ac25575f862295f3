"""The node graph: subsets drawn up front, uniformly, without replacement, from the seed."""

from __future__ import annotations

from collections import Counter
from itertools import combinations

import pytest

from mrsa.rsa.plan import Plan


def test_every_later_node_has_k_distinct_parents_in_range() -> None:
    plan = Plan(population=7, k=3, rounds=5, seed=1)
    assert all(plan.parents(0, i) == () for i in range(7))
    for r in range(1, 5):
        for i in range(7):
            parents = plan.parents(r, i)
            assert len(parents) == 3 and len(set(parents)) == 3
            assert all(0 <= p < 7 for p in parents)


def test_draws_are_deterministic_per_seed_and_differ_across_seeds() -> None:
    def draws(seed: int) -> list[tuple[int, ...]]:
        plan = Plan(8, 4, 4, seed)
        return [plan.parents(r, i) for r in range(1, 4) for i in range(8)]

    assert draws(3) == draws(3)
    assert draws(3) != draws(4)


def test_subsets_are_uniform_and_draws_independent() -> None:
    # 2000 draws of 2 out of 5: each of the 10 pairs expected 200 times (sd ~13).
    plan = Plan(population=5, k=2, rounds=401, seed=7)
    draws = [plan.parents(r, i) for r in range(1, 401) for i in range(5)]
    pairs = Counter(frozenset(d) for d in draws)
    assert set(pairs) == {frozenset(c) for c in combinations(range(5), 2)}
    assert all(150 <= n <= 250 for n in pairs.values()), pairs
    firsts = Counter(d[0] for d in draws)  # candidate order in the prompt is random too
    assert all(320 <= n <= 480 for n in firsts.values()), firsts
    # Independent per child: some parent feeds several children of the same round.
    assert any(
        max(Counter(p for i in range(5) for p in plan.parents(r, i)).values()) > 2
        for r in range(1, 401)
    )


def test_node_seeds_are_deterministic_and_distinct() -> None:
    a, b = Plan(6, 2, 3, seed=11), Plan(6, 2, 3, seed=11)
    seeds = [a.node_seed(r, i) for r in range(3) for i in range(6)]
    assert seeds == [b.node_seed(r, i) for r in range(3) for i in range(6)]
    assert len(set(seeds)) == len(seeds)
    assert all(0 <= s < 2**31 for s in seeds)
    assert Plan(6, 2, 3, seed=12).node_seed(0, 0) != a.node_seed(0, 0)
    assert a.final_seed == b.final_seed and a.final_seed not in seeds


def test_final_subset_is_a_deterministic_k_subset_of_the_pool() -> None:
    plan = Plan(8, 3, 2, seed=5)
    pool = [6, 1, 4, 2, 7]
    chosen = plan.final_subset(pool)
    assert len(chosen) == 3 and len(set(chosen)) == 3 and set(chosen) <= set(pool)
    assert plan.final_subset(list(reversed(pool))) == chosen  # order of the pool does not matter
    assert sorted(plan.final_subset([3, 5])) == [3, 5]  # fewer than k: all of them
    assert len({tuple(Plan(8, 3, 2, seed=s).final_subset(pool)) for s in range(20)}) > 1


def test_invalid_shapes_are_rejected() -> None:
    with pytest.raises(ValueError):
        Plan(3, 4, 2, seed=0)
    with pytest.raises(ValueError):
        Plan(3, 0, 2, seed=0)
    with pytest.raises(ValueError):
        Plan(3, 2, 0, seed=0)
