"""Effort levels chosen on a measured frontier, and the preset file ``mrsa serve`` loads.

The rule, with S = single's mean tokens and V = the reference vote's (majority@8's) on the same
problems; each level takes the most accurate point within its budget (ties: fewer tokens):

- low: at most 2 x S;
- medium: at most V / 2;
- high: at most V;
- xhigh: no budget (the most accurate point measured);
- auto: the cheapest point that is not resolved below xhigh's choice (the paired 95% CI of its
  difference includes 0 or lies above it): accuracy that more compute is not shown to improve.

Only points measured on every problem of the calibration compete, so every level is compared
on the same problems. The file is the service's preset format (service/presets):
``{"model": ..., "measured": {...}, "efforts": {"low": {rsa fields}, ...}}``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from mrsa.evals.frontier import Point, compare

RULE = ("low: most accurate at <= 2x single's tokens; medium: at <= 50% of {ref}'s; high: at <= {ref}'s; "
        "xhigh: most accurate; auto: cheapest not resolved below xhigh (paired 95% CI); ties: fewer tokens")
BUDGET_FACTORS = {"low": ("single", 2.0), "medium": ("ref", 0.5), "high": ("ref", 1.0)}


def most_accurate(points: Sequence[Point], budget: float = float("inf")) -> Point | None:
    within = [p for p in points if p.tokens_mean <= budget]
    return min(within, key=lambda p: (-p.accuracy, p.tokens_mean), default=None)


def budgets(single: Point, ref: Point) -> dict[str, float]:
    """Token budgets of low, medium and high, from single's and the reference's mean tokens."""
    base = {"single": single.tokens_mean, "ref": ref.tokens_mean}
    return {level: base[which] * factor for level, (which, factor) in BUDGET_FACTORS.items()}


def choose(points: Sequence[Point], single: Point, ref: Point, *, seed: int = 0) -> dict[str, Point]:
    """Each effort level's point (see the module's rule); ``single`` and ``ref`` among ``points``."""
    chosen: dict[str, Point] = {}
    for level, budget in budgets(single, ref).items():
        point = most_accurate(points, budget)
        if point is not None:
            chosen[level] = point
    top = most_accurate(points)
    if top is None:
        return chosen
    chosen["xhigh"] = top
    enough = [p for p in points if compare(p, top, seed=seed).high >= 0]
    chosen["auto"] = min(enough, key=lambda p: (p.tokens_mean, -p.accuracy))
    return chosen


def preset_document(model: str, chosen: dict[str, Point], trace_fields: dict, measured: dict) -> dict:
    """The preset file: each level's rsa fields (over the trace settings it was measured with)."""
    order = ["low", "medium", "high", "xhigh", "auto"]
    efforts = {level: {**trace_fields, **chosen[level].fields} for level in order if level in chosen}
    return {"model": model, "measured": measured, "efforts": efforts}


def write_presets(path: Path, document: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path
