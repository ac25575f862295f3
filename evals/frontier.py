"""Methods as points of accuracy against tokens on the same problems, and the frontier they make.

A :class:`Point` is one method with the ``rsa`` fields that run it, and per problem whether its
answer was right and the completion tokens it spent. Vote-based points are read off the sample
pool (pool.py): ``vote@k`` is the majority of a problem's first ``k`` samples, ``single`` is
``vote@1``, and an adaptive vote replays its stop rule (rsa/adaptive.py) over the samples in
index order, as the method itself counts them. RSA points come from runs (``mrsa eval``'s
results document). Every point is paired with every other on the problems both measured.

The frontier is the points no other point dominates (as accurate or more for fewer tokens, or
more accurate for as many). Tokens are means over problems; accuracies are final answers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from mrsa.evals.grading import is_correct
from mrsa.evals.pool import PoolEntry
from mrsa.evals.stats import Paired, paired, wilson_interval
from mrsa.rsa.adaptive import settled
from mrsa.rsa.answers import majority_vote


@dataclass
class Point:
    """One method measured on a set of problems."""

    name: str
    fields: dict  # the request's rsa fields that run this method
    correct: dict[str, bool] = field(default_factory=dict)  # problem -> final answer right
    tokens: dict[str, int] = field(default_factory=dict)  # problem -> completion tokens
    source: str = "pool"  # pool: replayed from the sample pool; run: measured by runs

    @property
    def problems(self) -> int:
        return len(self.correct)

    @property
    def accuracy(self) -> float:
        return sum(self.correct.values()) / max(1, len(self.correct))

    @property
    def tokens_mean(self) -> float:
        return sum(self.tokens.values()) / max(1, len(self.tokens))

    def on(self, problems: Iterable[str]) -> Point:
        """The same method restricted to ``problems`` (all of which it must have measured)."""
        ids = list(problems)
        return Point(self.name, self.fields, {p: self.correct[p] for p in ids}, {p: self.tokens[p] for p in ids},
                     self.source)

    def summary(self) -> dict:
        right = sum(self.correct.values())
        return {"name": self.name, "fields": self.fields, "source": self.source, "problems": self.problems,
                "accuracy": self.accuracy, "interval": wilson_interval(right, self.problems),
                "tokens_mean": self.tokens_mean}


def vote_fields(k: int) -> dict:
    return {"method": "rsa", "population": k, "k": 1, "rounds": 1, "selection": "majority"}


def vote_point(entries: Sequence[PoolEntry], k: int) -> Point:
    """``vote@k`` (``single`` for k = 1) on every problem whose pool has ``k`` samples."""
    point = Point("single" if k == 1 else f"vote@{k}", vote_fields(k))
    for e in entries:
        if len(e.samples) < k:
            continue
        winner, _ = majority_vote([s.answer for s in e.samples[:k]], [s.ended for s in e.samples[:k]])
        point.correct[e.problem] = is_correct(winner, e.gold)
        point.tokens[e.problem] = sum(s.tokens for s in e.samples[:k])
    return point


@dataclass(frozen=True)
class AdaptiveVote:
    """adaptive_vote's parameters (RsaParams' names)."""

    population: int  # the first wave
    wave: int
    max_population: int
    stop_rule: str
    stop_threshold: float

    @property
    def name(self) -> str:
        return (f"adaptive_vote {self.population}+{self.wave}..{self.max_population} "
                f"{self.stop_rule}>={self.stop_threshold:g}")

    @property
    def fields(self) -> dict:
        return {"method": "adaptive_vote", "population": self.population, "k": 1, "rounds": 1,
                "selection": "majority", "wave": self.wave, "max_population": self.max_population,
                "stop_rule": self.stop_rule, "stop_threshold": self.stop_threshold}

    def counted(self, answers: Sequence[str | None]) -> int | None:
        """How many samples the vote counts before it stops (None: the pool is too short to
        say). Traces are counted in index order from the first wave on, and the vote stops at
        the first settled prefix or at max_population."""
        n = self.population
        while True:
            if n > len(answers):
                return None
            if settled(answers[:n], self.stop_rule, self.stop_threshold) or n >= self.max_population:
                return n
            n += 1

    def launched(self, counted: int) -> int:
        """Traces started by the time the vote stopped at ``counted``: the first wave, then whole
        waves (capped at max_population). Their tokens are what the run can have spent at most:
        a trace still in flight is cancelled part-way, so the real figure is lower."""
        extra = max(0, counted - self.population)
        return min(self.max_population, self.population + self.wave * math.ceil(extra / self.wave))


def adaptive_vote_point(entries: Sequence[PoolEntry], method: AdaptiveVote) -> Point:
    """The adaptive vote on every problem whose pool holds all the samples it would start."""
    point = Point(method.name, method.fields)
    for e in entries:
        answers = [s.answer for s in e.samples]
        n = method.counted(answers)
        if n is None or method.launched(n) > len(e.samples):
            continue
        winner, _ = majority_vote(answers[:n], [s.ended for s in e.samples[:n]])
        point.correct[e.problem] = is_correct(winner, e.gold)
        point.tokens[e.problem] = sum(s.tokens for s in e.samples[:method.launched(n)])
    return point


_RUN_FIELDS = ("method", "population", "k", "rounds", "tail_tokens", "trace_max_tokens", "selection",
               "aggregation_prompt", "final_vote", "temperature", "wave", "max_population", "stop_rule",
               "stop_threshold")


def run_points(results: dict) -> list[Point]:
    """Points of the configurations of an ``mrsa eval`` results document (finished runs only)."""
    points = []
    for c in results["configs"]:
        params = c["params"]
        fields = {k: params[k] for k in _RUN_FIELDS if k in params and params[k] is not None}
        if fields.get("method", "rsa") != "adaptive_rsa":
            for k in ("wave", "max_population", "stop_rule", "stop_threshold"):
                fields.pop(k, None)
        point = Point(c["name"], fields, source="run")
        for r in c["runs"]:
            if r.get("error") is None:
                point.correct[r["problem"]] = bool(r["final_correct"])
                point.tokens[r["problem"]] = int(r["completion_tokens"])
        points.append(point)
    return points


def common_problems(points: Sequence[Point]) -> list[str]:
    """The problems every point measured, in the first point's order."""
    if not points:
        return []
    shared = set(points[0].correct)
    for p in points[1:]:
        shared &= set(p.correct)
    return [p for p in points[0].correct if p in shared]


def frontier(points: Sequence[Point]) -> list[Point]:
    """The points no other dominates, by tokens ascending (ties: the first given is kept)."""
    best: list[Point] = []
    for p in sorted(points, key=lambda p: (p.tokens_mean, -p.accuracy)):
        if not best or p.accuracy > best[-1].accuracy:
            best.append(p)
    return best


def compare(a: Point, b: Point, *, seed: int = 0) -> Paired:
    """``a`` against ``b`` on the problems both measured (paired bootstrap and McNemar)."""
    shared = [p for p in a.correct if p in b.correct]
    return paired(a.name, [a.correct[p] for p in shared], b.name, [b.correct[p] for p in shared], seed=seed)
