"""How good must the aggregator be? Project RSA's accuracy from an eval's own traces.

RSA beats majority voting only if its aggregations keep a right candidate over a wrong one
more reliably than counting votes does. This replays an ``mrsa eval --keep-traces`` run:

1. It measures, from the RSA configuration's second round (K = 2), how the aggregates came
   out for each kind of parent pair: ``agree-right`` (both right), ``agree-wrong`` (the same
   wrong answer), ``mixed`` (one right, one wrong or unfinished), ``both-wrong`` (two different
   wrong answers); each outcome ``right``, ``parent`` (a wrong parent's answer) or ``new``.
2. It simulates RSA with population N and T rounds (the first round included) whose first
   round is each problem's first N samples of the majority configuration (an eval gives RSA's
   first round the same seeds), whose aggregates follow the measured rates, and whose final
   answer is the last round's vote (or every round's). ``--selector s`` replaces the rate of
   ``mixed`` pairs by s (a better aggregator); ``--skip-agreeing`` carries a pair's common
   answer forward without generating. Each aggregate costs the measured mean tokens.
3. It prints the majority@k of the same samples beside it, for matched tokens.
4. ``--tiebreak`` asks instead what a vote-first rule could buy: vote over the first m samples,
   and only where the leader is at most ``margin`` votes ahead of the runner-up, spend j
   judge calls (each costing an aggregate) on those two answers; the majority of the judges
   wins, a tie keeps the vote. A judge picks the right one of the two with probability s and
   cannot find an answer neither holds. Exact expectations, no simulation; s = 1 is the
   ceiling of the rule.

The simulation draws every aggregation independently at the measured rates: a model, not a
measurement. Its first line replays the configuration the traces measured, beside what that
configuration scored, so the model's error is in view.

    python -m research.projection --traces docs/eval/gsm8k-qwen15b/traces.json.gz \\
        --dataset ../shared/data/gsm8k-dev.jsonl --selector 0.75 0.85 0.95
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mrsa.evals.datasets import load_jsonl
from mrsa.evals.grading import is_correct
from mrsa.evals.memo import read_traces
from mrsa.rsa.answers import normalize_answer
from research.traces import round_traces

KINDS = ("agree-right", "agree-wrong", "mixed", "both-wrong")
OUTCOMES = ("right", "parent", "new")
RIGHT = "(right)"  # the answer key of a right aggregate whose parents were both wrong


@dataclass(frozen=True)
class Sample:
    """One trace's answer: its normalised form (None: no answer) and whether it is right."""

    key: str | None
    right: bool


def sample(answer: str | None, gold: str) -> Sample:
    key = normalize_answer(answer) if answer is not None else None
    return Sample(key or None, is_correct(answer, gold))


def pair_kind(a: Sample, b: Sample) -> str:
    if a.right and b.right:
        return "agree-right"
    if a.right or b.right:
        return "mixed"
    return "agree-wrong" if a.key is not None and a.key == b.key else "both-wrong"


def outcome(parents: Sequence[Sample], child: Sample) -> str:
    if child.right:
        return "right"
    return "parent" if child.key is not None and child.key in {p.key for p in parents} else "new"


@dataclass(frozen=True)
class Aggregator:
    """How K = 2 aggregates came out, per kind of parent pair, and what one costs."""

    counts: dict[str, Counter]
    tokens: float

    def rates(self, kind: str) -> dict[str, float]:
        seen = self.counts.get(kind, Counter())
        total = sum(seen.values())
        if not total:  # never observed: a copy of a parent
            return {"right": 1.0 if kind == "agree-right" else 0.0, "parent": 0.0 if kind == "agree-right" else 1.0,
                    "new": 0.0}
        return {o: seen[o] / total for o in OUTCOMES}

    def with_selector(self, s: float) -> Aggregator:
        """The same aggregator except that it keeps the right candidate of a mixed pair with
        probability ``s`` (else the wrong one's answer)."""
        counts = dict(self.counts) | {"mixed": Counter({"right": s, "parent": 1 - s})}
        return Aggregator(counts, self.tokens)


def measure(traces: dict[str, list[dict]], gold: dict[str, str]) -> Aggregator:
    """The aggregator of one RSA configuration's traces: its second round's (``round == 1``)
    K = 2 trace nodes against their first-round parents."""
    counts = {kind: Counter() for kind in KINDS}
    tokens: list[int] = []
    for pid, nodes in traces.items():
        first = {n["index"]: n for n in round_traces(nodes, 0)}
        for node in round_traces(nodes, 1):
            if len(node["parents"]) != 2:
                continue
            parents = [sample(first[i]["answer"], gold[pid]) for i in node["parents"]]
            child = sample(node["answer"], gold[pid])
            counts[pair_kind(*parents)][outcome(parents, child)] += 1
            tokens.append(node["completion_tokens"])
    if not tokens:
        raise ValueError("no K = 2 aggregates in round 2 of these traces")
    return Aggregator(counts, sum(tokens) / len(tokens))


@dataclass(frozen=True)
class FirstRound:
    """One problem's first-round samples and what each cost."""

    samples: list[Sample]
    tokens: list[int]


def first_rounds(traces: dict[str, list[dict]], gold: dict[str, str]) -> list[FirstRound]:
    """Each problem's first-round samples in index order, from a majority configuration."""
    out = []
    for pid, nodes in traces.items():
        first = round_traces(nodes, 0)
        out.append(FirstRound([sample(n["answer"], gold[pid]) for n in first], [n["completion_tokens"] for n in first]))
    return out


def ranked(samples: Sequence[Sample]) -> list[tuple[Sample, int]]:
    """The samples' distinct answers (each as its first sample) with their votes, most votes
    first; ties go to the answer seen first."""
    counts = Counter(s.key for s in samples if s.key is not None)
    first: dict[str, Sample] = {}
    for s in samples:
        if s.key is not None:
            first.setdefault(s.key, s)
    return sorted(((s, counts[s.key]) for s in first.values()), key=lambda pair: -pair[1])


def vote(samples: Sequence[Sample]) -> bool:
    """Whether the plurality answer is right; ties go to the answer seen first."""
    leaders = ranked(samples)
    return bool(leaders) and leaders[0][0].right


def carried_forward(traces: dict[str, list[dict]], gold: dict[str, str]) -> dict[str, float]:
    """Exact, no simulation: a two-round configuration's own traces with each second-round
    aggregate whose parents gave the same answer replaced by that parent (no generation).
    The last round's vote and the mean tokens per problem, as run and carried forward."""
    right = {"as_run": 0, "carried": 0}
    tokens = {"as_run": 0, "carried": 0}
    for pid, nodes in traces.items():
        calls = [n for n in nodes if n["kind"] == "trace"]
        if any(n["round"] > 1 for n in calls):
            raise ValueError("carrying agreement forward is replayed exactly only for two rounds")
        first = {n["index"]: n for n in calls if n["round"] == 0}
        as_run, carried = [], []
        for n in calls:
            tokens["as_run"] += n["completion_tokens"]
            if n["round"] == 0:
                tokens["carried"] += n["completion_tokens"]
                continue
            parents = [sample(first[i]["answer"], gold[pid]) for i in n["parents"]]
            own = sample(n["answer"], gold[pid])
            as_run.append(own)
            if parents[0].key is not None and all(p.key == parents[0].key for p in parents):
                carried.append(parents[0])
            else:
                carried.append(own)
                tokens["carried"] += n["completion_tokens"]
        right["as_run"] += vote(as_run)
        right["carried"] += vote(carried)
    problems = len(traces)
    return {"right": right["as_run"], "tokens": tokens["as_run"] / problems,
            "carried_right": right["carried"], "carried_tokens": tokens["carried"] / problems}


def majority_curve(problems: Sequence[FirstRound]) -> list[tuple[int, int, float]]:
    """(k, problems right, mean tokens) of majority@k for every k the samples allow."""
    most = min(len(p.samples) for p in problems)
    return [(k, sum(vote(p.samples[:k]) for p in problems), sum(sum(p.tokens[:k]) for p in problems) / len(problems))
            for k in range(1, most + 1)]


def _aggregate(a: Sample, b: Sample, aggregator: Aggregator, rng: random.Random, fresh: Iterator[int]) -> Sample:
    rates = aggregator.rates(pair_kind(a, b))
    u = rng.random()
    if u < rates["right"]:
        right = [p for p in (a, b) if p.right]
        return right[0] if right else Sample(RIGHT, True)
    if u < rates["right"] + rates["parent"]:
        return rng.choice([p for p in (a, b) if not p.right])
    return Sample(f"(new {next(fresh)})", False)


def project(problems: Sequence[FirstRound], aggregator: Aggregator, population: int, rounds: int, *,
            skip_agreeing: bool = False, vote_all: bool = False, reps: int = 200, seed: int = 0) -> tuple[float, float]:
    """(mean problems right, mean tokens per problem) of the simulated RSA run."""
    if population < 2:
        raise ValueError("a K = 2 projection needs a population of at least 2")
    if any(len(p.samples) < population for p in problems):
        raise ValueError(f"the majority configuration has fewer than {population} samples for some problem")
    rng = random.Random(seed)
    fresh = itertools.count()
    right = tokens = 0.0
    for _ in range(reps):
        for problem in problems:
            current = problem.samples[:population]
            every = list(current)
            tokens += sum(problem.tokens[:population])
            for _round in range(1, rounds):
                following = []
                for _node in range(population):
                    a, b = rng.sample(current, 2)
                    if skip_agreeing and a.key is not None and a.key == b.key:
                        following.append(a)
                        continue
                    following.append(_aggregate(a, b, aggregator, rng, fresh))
                    tokens += aggregator.tokens
                current = following
                every += following
            right += vote(every if vote_all else current)
    runs = reps * len(problems)
    return right * len(problems) / runs, tokens / runs


def tiebreak(problems: Sequence[FirstRound], samples: int, margin: int, judges: int, selector: float,
             judge_tokens: float) -> tuple[float, float]:
    """(expected problems right, mean tokens per problem) of the vote-first rule (module doc, 4)."""
    right = tokens = 0.0
    for problem in problems:
        drawn = problem.samples[:samples]
        tokens += sum(problem.tokens[:samples])
        leaders = ranked(drawn)
        if not leaders:
            continue
        (lead, lead_votes), *rest = leaders
        if not rest or lead_votes - rest[0][1] > margin:
            right += lead.right
            continue
        tokens += judges * judge_tokens
        if lead.right == rest[0][0].right:  # neither right: the judges cannot help
            right += lead.right
            continue
        for wins in range(judges + 1):
            p = math.comb(judges, wins) * selector**wins * (1 - selector) ** (judges - wins)
            if 2 * wins > judges:
                right += p
            elif 2 * wins == judges:  # a split keeps the vote
                right += p * lead.right
    return right, tokens / len(problems)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m research.projection", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", required=True, help="traces.json(.gz) written by mrsa eval --keep-traces")
    parser.add_argument("--dataset", required=True, help="the eval's dataset (JSONL)")
    parser.add_argument("--rsa-config", default="rsa compare N=4 K=2 T=2", help="measures the aggregator (K = 2)")
    parser.add_argument("--majority-config", default="majority@8", help="gives the first-round samples")
    parser.add_argument("--population", type=int, nargs="+", default=[3, 4, 5, 6])
    parser.add_argument("--rounds", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--selector", type=float, nargs="*", default=[],
                        help="mixed-pair accuracies to project beside the measured one")
    parser.add_argument("--tiebreak", action="store_true",
                        help="also project the vote-first rule (module doc, 4) within the largest majority@k's tokens")
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the projections as JSON here")
    args = parser.parse_args(argv)
    traces = read_traces(args.traces)
    gold = {p.id: p.answer for p in load_jsonl(args.dataset)}
    rsa_traces = traces[args.rsa_config]
    aggregator = measure(rsa_traces, gold)
    problems = first_rounds(traces[args.majority_config], gold)
    curve = majority_curve(problems)
    measured_rate = aggregator.rates("mixed")["right"]
    print(f"aggregator: {aggregator.tokens:.0f} tokens per aggregate; mixed pairs keep the right answer "
          f"{measured_rate:.3f} of the time")
    for kind in KINDS:
        print(f"  {kind:12s}", dict(aggregator.counts[kind]))
    print("majority@k:", ", ".join(f"@{k} {right} ({tokens:.0f} tok)" for k, right, tokens in curve))
    measured_n = len(round_traces(next(iter(rsa_traces.values())), 0))
    exact = carried_forward(rsa_traces, gold)
    replay = project(problems, aggregator, measured_n, 2, reps=args.reps, seed=args.seed)
    print(f"replay of N={measured_n} T=2: {replay[0]:.1f} right, {replay[1]:.0f} tok "
          f"(the traces' own second-round vote: {exact['right']} right, {exact['tokens']:.0f} tok)")
    print(f"the traces with agreeing pairs carried forward (exact): {exact['carried_right']} right, "
          f"{exact['carried_tokens']:.0f} tok")
    rows = []
    for s, n, t, skip, vote_all in itertools.product([None, *args.selector], args.population, args.rounds,
                                                      (False, True), (False, True)):
        agg = aggregator if s is None else aggregator.with_selector(s)
        right, tokens = project(problems, agg, n, t, skip_agreeing=skip, vote_all=vote_all, reps=args.reps,
                                seed=args.seed)
        k, maj_right, maj_tokens = min(curve, key=lambda row: abs(row[2] - tokens))
        rows.append({"selector": measured_rate if s is None else s, "measured": s is None, "population": n,
                     "rounds": t, "skip_agreeing": skip, "vote_all": vote_all, "right": right, "tokens": tokens,
                     "majority_k": k, "majority_right": maj_right, "majority_tokens": maj_tokens})
        print(f"s={rows[-1]['selector']:.2f} N={n} T={t} skip_agreeing={skip!s:5} vote_all={vote_all!s:5} "
              f"{right:6.1f} right {tokens:5.0f} tok | majority@{k} {maj_right} ({maj_tokens:.0f} tok)")
    tiebreaks = []
    if args.tiebreak:
        budget = curve[-1][2]
        for s in sorted({measured_rate, *args.selector, 1.0}):
            rules = [tiebreak(problems, m, margin, j, s, aggregator.tokens) + (m, margin, j)
                     for m in range(2, curve[-1][0] + 1) for margin in range(4) for j in (1, 2, 3)]
            best = max((rule for rule in rules if rule[1] <= budget), key=lambda rule: rule[0])
            right, tokens, m, margin, j = best
            tiebreaks.append({"selector": s, "samples": m, "margin": margin, "judges": j, "right": right,
                              "tokens": tokens})
            print(f"vote-first s={s:.2f}: best at <= {budget:.0f} tok: vote of {m}, judges {j} where the lead "
                  f"is <= {margin}: {right:6.1f} right {tokens:5.0f} tok | majority@{curve[-1][0]} {curve[-1][1]}")
    if args.out:
        Path(args.out).write_text(json.dumps({"problems": len(problems), "tiebreak": tiebreaks, "aggregator": {
            "tokens": aggregator.tokens, "counts": {k: dict(v) for k, v in aggregator.counts.items()}},
            "majority": curve, "replay": {"population": measured_n, "right": replay[0], "tokens": replay[1],
                                     "measured_right": exact["right"]},
            "carried_forward": exact,
            "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
