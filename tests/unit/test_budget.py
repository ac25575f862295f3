"""Token budget accounting: commit at launch, settle at the end, keep the reserve."""

from __future__ import annotations

from mrsa.rsa.budget import TokenBudget


def test_grants_never_exceed_total_minus_reserve() -> None:
    budget = TokenBudget(100, reserve=30)
    assert budget.grant(40, minimum=10) == 40
    assert budget.grant(40, minimum=10) == 30  # clipped to what is left before the reserve
    assert budget.grant(40, minimum=1) is None  # nothing left
    assert budget.committed == 70


def test_settling_releases_unused_commitment() -> None:
    budget = TokenBudget(100, reserve=30)
    budget.grant(40, minimum=10)
    budget.grant(30, minimum=10)
    assert budget.grant(10, minimum=10) is None
    budget.settle(40, used=12)
    assert (budget.generated, budget.committed) == (12, 30)
    assert budget.grant(40, minimum=10) == 28


def test_final_grant_may_use_the_reserve_but_no_more() -> None:
    budget = TokenBudget(100, reserve=30)
    budget.grant(70, minimum=1)
    budget.settle(70, used=70)
    assert budget.grant_final(50) == 30
    empty = TokenBudget(10, reserve=0)
    empty.grant(10, minimum=1)
    empty.settle(10, used=10)
    assert empty.grant_final(5) == 0


def test_unlimited_budget_grants_what_is_asked() -> None:
    budget = TokenBudget(None, reserve=500)
    assert budget.grant(10_000, minimum=10_000) == 10_000
    assert budget.grant_final(7) == 7
