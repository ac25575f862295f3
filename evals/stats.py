"""Paired comparisons of two configurations on the same problems.

Every configuration runs each problem with the same seed, so their results pair up problem by
problem. For two configurations A and B with per-problem correctness a_i, b_i:

- the difference of accuracies, mean(a - b);
- its 95% confidence interval by the paired bootstrap (problems resampled with replacement,
  the pairs kept together; seeded, so a report is reproducible);
- (per configuration) the Wilson interval of its accuracy;
- McNemar's exact test: of the discordant problems (one right, the other wrong), how unlikely
  a split at least this lopsided is if neither configuration were better (two-sided binomial
  with p = 1/2).

A difference is resolved when its interval excludes zero.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from math import comb, sqrt


@dataclass(frozen=True)
class Paired:
    a: str
    b: str
    n: int
    diff: float
    low: float
    high: float
    a_only: int  # problems A gets right and B wrong
    b_only: int
    p_value: float

    @property
    def resolved(self) -> bool:
        return self.low > 0 or self.high < 0


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value for the discordant counts."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    k = min(a_only, b_only)
    tail = sum(comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def bootstrap_ci(diffs: Sequence[int], *, resamples: int = 10_000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the mean of ``diffs`` (each -1, 0 or 1) over resampled problems."""
    n = len(diffs)
    if n == 0:
        return 0.0, 0.0
    rng = random.Random(seed)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    cut = (1 - level) / 2
    return means[int(cut * resamples)], means[min(resamples - 1, int((1 - cut) * resamples))]


def wilson_interval(correct: int, n: int, *, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of an accuracy of ``correct`` out of ``n`` (sound near 0 and 1
    and for small n, where the normal approximation is not)."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def paired(a_name: str, a: Sequence[bool], b_name: str, b: Sequence[bool], *, seed: int = 0) -> Paired:
    """A against B on the same problems (``a[i]`` and ``b[i]`` are the same problem)."""
    if len(a) != len(b):
        raise ValueError(f"paired results need the same problems ({len(a)} vs {len(b)})")
    diffs = [int(x) - int(y) for x, y in zip(a, b, strict=True)]
    a_only = sum(d > 0 for d in diffs)
    b_only = sum(d < 0 for d in diffs)
    low, high = bootstrap_ci(diffs, seed=seed)
    n = len(diffs)
    return Paired(a_name, b_name, n, sum(diffs) / n if n else 0.0, low, high, a_only, b_only,
                  mcnemar_exact(a_only, b_only))
