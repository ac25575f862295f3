"""When a vote is settled: the stop rules of the adaptive methods.

An adaptive run (``method`` adaptive_vote or adaptive_rsa) counts a round's finished traces in
index order, never in completion order, so a resumed or replayed run stops where an
uninterrupted one did. After each counted trace (once the first wave, ``population``, is in)
it asks its stop rule whether the vote is settled:

- ``posterior``: the probability that the leader is ahead of the runner-up, under a uniform
  prior and a Beta posterior of their counts (Adaptive-Consistency's Beta stopping rule, arXiv
  2305.11860; its_hub's adaptive self-consistency stops at 0.95 the same way). With counts
  ``a`` and ``b`` it is ``P(X > 1/2)`` for ``X ~ Beta(a + 1, b + 1)``, which for whole counts is
  ``P(Binomial(a + b + 1, 1/2) <= a)``: exact, no numerical integration. Four agreeing samples
  give 0.969, three 0.938; 5 against 1 give 0.938, 6 against 1 0.965.
- ``supermajority``: the leader's share of the counted traces (traces without an answer count
  against it) reaches the threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import comb

from mrsa.rsa.answers import majority_vote
from mrsa.rsa.params import StopRule


def leader_posterior(lead: int, runner_up: int) -> float:
    """``P(X > 1/2)`` for ``X ~ Beta(lead + 1, runner_up + 1)``: how sure the leader leads."""
    n = lead + runner_up + 1
    return sum(comb(n, j) for j in range(lead + 1)) / 2**n


def settled(answers: Sequence[str | None], rule: StopRule, threshold: float) -> bool:
    """Whether the vote over ``answers`` (one per counted trace; None: it gave none) is settled."""
    _, counts = majority_vote(answers)
    if not counts:
        return False
    ranked = sorted(counts.values(), reverse=True)
    lead, runner_up = ranked[0], (ranked[1] if len(ranked) > 1 else 0)
    if rule == "posterior":
        return leader_posterior(lead, runner_up) >= threshold
    return lead / len(answers) >= threshold
