"""The sample pool: every problem's seeded first-round samples, grown where the vote is open.

A run's first-round trace ``i`` has the seed ``Plan.node_seed(0, i)``, which depends on the run
seed and ``i`` only, so majority@16's first 8 samples are majority@8's, and any vote or
adaptive vote over the first ``n`` samples is a prefix of the same pool. Calibration therefore
samples each problem once, as a ``majority@n`` run through the same backend a served request
takes, and reads every vote-based method off the pool; a memoised engine (memo.py) replays the
prefix a problem already has, so growing a problem from 8 to 16 samples pays only for 8.

Samples are added where they can change an answer: a problem whose ``n`` samples all agree is
left at ``n`` (an adaptive vote stops there), the others grow to the next level, the most
contested first (smallest lead of the top answer over the runner-up), until the time budget is
spent. A method whose samples a problem lacks is not measured (see frontier.py), never guessed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mrsa.evals.backends import Backend, RunError
from mrsa.evals.datasets import Problem
from mrsa.rsa import RsaParams
from mrsa.rsa.answers import normalize_answer


@dataclass
class Sample:
    """One first-round trace: its answer (None: none given, or not finished), its tokens, and
    whether it ended by itself (below its token limit: a vote's tie goes to such an answer)."""

    answer: str | None
    tokens: int
    finished: bool = True
    ended: bool = True


@dataclass
class PoolEntry:
    problem: str
    gold: str
    seed: int  # the run seed of every vote over this problem (evaluate's seed * 100_000 + index)
    samples: list[Sample] = field(default_factory=list)

    def lead(self) -> tuple[int, int]:
        """(votes of the top answer, votes of the runner-up) over the samples there are."""
        counts = Counter(normalize_answer(s.answer) for s in self.samples if s.answer)
        top = counts.most_common(2) + [("", 0), ("", 0)]
        return top[0][1], top[1][1]

    def unanimous(self) -> bool:
        top, second = self.lead()
        return second == 0 and top == len(self.samples)


def run_seed(seed: int, index: int) -> int:
    """The run seed ``mrsa eval`` gives the ``index``-th problem (runner.evaluate)."""
    return seed * 100_000 + index


def vote_params(base: RsaParams, n: int) -> RsaParams:
    """``majority@n`` over ``base``'s trace settings."""
    return base.model_copy(update={"population": n, "k": 1, "rounds": 1, "selection": "majority",
                                   "budget_tokens": None, "early_stop": None})


async def sample(backend: Backend, problem: Problem, base: RsaParams, n: int, seed: int) -> list[Sample]:
    """The first ``n`` samples of ``problem`` (one majority@n run), in index order."""
    params = vote_params(base, n).model_copy(update={"seed": seed})
    samples: list[Sample | None] = [None] * n
    async for event in backend.run(problem.messages(), params, f"pool-{problem.id}-{seed}-{n}"):
        if event.get("event") == "node_finished" and event.get("round") == 0:
            if event.get("status") == "failed":  # an engine error is no sample (the run votes without it)
                raise RunError(f"problem {problem.id}: sample {event['index']} failed: {event.get('error')}")
            finished = event.get("status", "finished") == "finished"
            tokens = event.get("tokens", 0)
            samples[event["index"]] = Sample(event.get("answer") if finished else None, tokens, finished,
                                             finished and tokens < params.trace_max_tokens)
    if any(s is None for s in samples):
        raise RunError(f"problem {problem.id}: {samples.count(None)} of {n} samples did not report")
    return samples  # type: ignore[return-value]


class Pool:
    """The pool of a calibration, kept in ``path`` (JSON) after every problem it grows."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.entries: dict[str, PoolEntry] = {}
        self.failed: dict[str, str] = {}  # problem -> why its last growth failed (not retried)
        if path is not None and path.exists():
            for pid, e in json.loads(path.read_text())["entries"].items():
                self.entries[pid] = PoolEntry(e["problem"], e["gold"], e["seed"], [Sample(**s) for s in e["samples"]])

    def save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"entries": {pid: asdict(e) for pid, e in self.entries.items()}}))
        tmp.replace(self.path)

    def wanted(self, problems: Sequence[Problem], levels: Sequence[int]) -> list[tuple[int, int]]:
        """(problem index, samples wanted) for the next step of growth, most contested first:
        every problem up to ``levels[0]``; then a problem with ``levels[j]`` samples that do not
        all agree up to ``levels[j + 1]``, a level at a time."""
        todo = [(i, levels[0]) for i, p in enumerate(problems) if p.id not in self.failed
                and len(self.entries.get(p.id, PoolEntry(p.id, p.answer, 0)).samples) < levels[0]]
        if todo:
            return todo
        for level, nxt in zip(levels, levels[1:]):
            open_ = [(i, nxt) for i, p in enumerate(problems)
                     if p.id in self.entries and p.id not in self.failed
                     and len(self.entries[p.id].samples) == level and not self.entries[p.id].unanimous()]
            if open_:
                open_.sort(key=lambda t: _margin(self.entries[problems[t[0]].id]))
                return open_
        return []

    async def grow(self, backend: Backend, problems: Sequence[Problem], base: RsaParams, *, seed: int,
                   levels: Sequence[int], deadline: float, concurrency: int = 4,
                   on_grown: Callable[[PoolEntry], None] | None = None) -> bool:
        """Samples problems as :meth:`wanted` says until nothing is wanted (True, if none failed) or
        ``deadline`` (``time.monotonic()``) passes (False): problems still in flight then are
        cancelled and not recorded (a memoised engine keeps the samples they finished). A problem
        whose run fails keeps what it had, its error in :attr:`failed`, and is not retried."""
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int, n: int) -> None:
            async with gate:
                if time.monotonic() >= deadline:
                    return
                p = problems[i]
                try:
                    samples = await sample(backend, p, base, n, run_seed(seed, i))
                except Exception as exc:  # a failed run (engine error): the problem stays as it was
                    self.failed[p.id] = f"{type(exc).__name__}: {exc}"
                    return
                self.entries[p.id] = PoolEntry(p.id, p.answer, run_seed(seed, i), samples)
                self.save()
                if on_grown is not None:
                    on_grown(self.entries[p.id])

        try:
            async with asyncio.timeout_at(deadline):  # loop time is time.monotonic()
                while True:
                    todo = self.wanted(problems, levels)
                    if not todo:
                        return not self.failed
                    await asyncio.gather(*(one(i, n) for i, n in todo))
        except TimeoutError:  # problems in flight are cancelled; their finished samples stay memoised
            pass
        return not self.wanted(problems, levels) and not self.failed


def _margin(entry: PoolEntry) -> int:
    top, second = entry.lead()
    return top - second
