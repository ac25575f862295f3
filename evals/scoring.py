"""Per-round metrics of one run, and their means over a dataset.

For round r with population answers a_1..a_N (None where a trace gave no answer):

- pass@1: the fraction of the N that are correct (the RSA paper's "mean accuracy");
- majority: whether the majority vote over the answers (rsa.answers.majority_vote) is correct;
- pass@N: whether any of the N is correct (an upper bound for any selection);
- tokens: completion tokens of the run up to the end of round r (all traces of rounds <= r),
  so configurations can be compared at equal token spend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from mrsa.evals.grading import is_correct
from mrsa.rsa.answers import majority_vote


@dataclass(frozen=True)
class RoundScore:
    round: int  # 1-based
    pass1: float
    majority: bool
    pass_n: bool
    tokens: int  # cumulative through this round


def score_rounds(answers: Sequence[Sequence[str | None]], tokens: Sequence[int], gold: str) -> list[RoundScore]:
    """Scores of every round of one run; ``tokens[r]`` is round r's own token count."""
    scores, spent = [], 0
    for r, population in enumerate(answers):
        spent += tokens[r] if r < len(tokens) else 0
        correct = [is_correct(a, gold) for a in population]
        winner, _ = majority_vote(population)
        scores.append(
            RoundScore(
                round=r + 1,
                pass1=sum(correct) / len(correct) if correct else 0.0,
                majority=winner is not None and is_correct(winner, gold),
                pass_n=any(correct),
                tokens=spent,
            )
        )
    return scores


@dataclass
class RoundMean:
    round: int
    pass1: float
    majority: float
    pass_n: float
    tokens: float  # mean cumulative tokens per problem
    runs: int  # runs that reached this round


@dataclass
class Summary:
    rounds: list[RoundMean] = field(default_factory=list)
    final_accuracy: float = 0.0  # the run's own final answer
    tokens_mean: float = 0.0  # all completion tokens per problem, final call included
    errors: int = 0


def summarize(per_run: Sequence[list[RoundScore]], finals: Sequence[bool], tokens: Sequence[int], errors: int) -> Summary:
    """Means over the problems of a configuration. A run that stopped before round r (early
    stop, budget) keeps its last round's scores and tokens there, which is what its user got;
    a failed run counts as wrong everywhere (denominator: every problem)."""
    n = len(per_run) + errors
    if n == 0:
        return Summary()
    depth = max((len(s) for s in per_run), default=0)
    rounds = []
    for r in range(depth):
        at = [s[min(r, len(s) - 1)] for s in per_run if s]
        rounds.append(
            RoundMean(
                round=r + 1,
                pass1=sum(s.pass1 for s in at) / n,
                majority=sum(s.majority for s in at) / n,
                pass_n=sum(s.pass_n for s in at) / n,
                tokens=sum(s.tokens for s in at) / max(1, len(at)),
                runs=sum(len(s) > r for s in per_run),
            )
        )
    return Summary(
        rounds=rounds,
        final_accuracy=sum(finals) / n,
        tokens_mean=sum(tokens) / max(1, len(tokens)),
        errors=errors,
    )
