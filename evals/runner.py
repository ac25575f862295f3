"""Configurations, the run loop, and the results document.

A configuration is an :class:`~rsa.RsaParams`: single sampling is N=1, T=1; majority voting
over N samples is N, K=1, T=1 with ``selection: majority``; RSA is N, K, T, tau. Expressing all
three as RSA runs means they share one code path, one token accounting and one event stream,
and with the same per-problem seed they share their first-round samples too (the plan derives
every trace's seed from the run seed, round and index), which makes the comparison paired.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mrsa.evals.backends import Backend, RunError
from mrsa.evals.datasets import Problem
from mrsa.evals.grading import is_correct
from mrsa.evals.scoring import RoundScore, score_rounds, summarize
from mrsa.evals.stats import paired, wilson_interval
from mrsa.rsa import RsaParams

_KEYS = {"n": "population", "k": "k", "t": "rounds", "tau": "tail_tokens", "max": "trace_max_tokens",
         "sel": "selection", "temp": "temperature", "final": "final_max_tokens", "prompt": "aggregation_prompt",
         "vote": "final_vote", "wave": "wave", "maxn": "max_population", "rule": "stop_rule",
         "thr": "stop_threshold"}
_TEXT_VALUED = ("selection", "aggregation_prompt", "final_vote", "stop_rule")
_FLOAT_VALUED = ("temperature", "stop_threshold")


@dataclass(frozen=True)
class EvalConfig:
    name: str
    params: RsaParams
    effort: str | None = None  # a served reasoning_effort: the server's preset runs (--url only)


def parse_config(spec: str, defaults: dict | None = None) -> EvalConfig:
    """``single``, ``majority:n=8`` or ``rsa:n=4,k=2,t=2,tau=64`` (also ``max=`` trace tokens,
    ``sel=`` selection, ``temp=``, ``final=`` final tokens, ``prompt=annotated|bare``, ``vote=last|all``,
    ``name=``); ``effort:high`` (a served reasoning_effort, ``--url``); the adaptive methods
    ``adaptive_vote:n=4,wave=4,maxn=16,rule=posterior,thr=0.95``
    and ``adaptive_rsa:n=4,k=2,t=2,maxn=8,...`` (``n``: the first wave). ``defaults`` fills the
    rest (tail_tokens, trace_max_tokens, temperature...)."""
    kind, _, rest = spec.partition(":")
    if kind == "effort":  # effort:high - the served preset of that reasoning_effort
        if rest not in ("low", "medium", "high", "xhigh", "auto"):
            raise ValueError(f"effort:{rest}: one of low, medium, high, xhigh, auto")
        return EvalConfig(f"effort {rest}", RsaParams(**(defaults or {})), effort=rest)
    opts: dict[str, str] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or (key not in _KEYS and key != "name"):
            raise ValueError(f"bad config item {item!r} in {spec!r} (keys: {', '.join([*_KEYS, 'name'])})")
        opts[key] = value
    values: dict = dict(defaults or {})
    if kind == "single":
        values.update(population=1, k=1, rounds=1, selection="majority")
    elif kind == "majority":
        values.update(population=int(opts.pop("n", 8)), k=1, rounds=1, selection="majority")
    elif kind == "rsa":
        values.setdefault("selection", "majority")
    elif kind == "adaptive_vote":
        values.update(method="adaptive_vote", k=1, rounds=1, selection="majority")
    elif kind == "adaptive_rsa":
        values.update(method="adaptive_rsa")
        values.setdefault("selection", "majority")
    else:
        raise ValueError(f"unknown config kind {kind!r}: single, majority, rsa, adaptive_vote or adaptive_rsa")
    name = opts.pop("name", None)
    for key, value in opts.items():
        field_name = _KEYS[key]
        text_valued = field_name in _TEXT_VALUED
        values[field_name] = value if text_valued else (float(value) if field_name in _FLOAT_VALUED else int(value))
    if kind in ("rsa", "adaptive_rsa"):
        values.setdefault("k", min(2, values.get("population", 4)))
    params = RsaParams(**values)
    if name is None:
        p = params
        grow = f"..{p.max_population}" if p.max_population else ""
        rule = f" {p.stop_rule}>={p.stop_threshold:g}"
        name = {"single": "single", "majority": f"majority@{p.population}",
                "adaptive_vote": f"adaptive_vote {p.population}+{p.wave}{grow}{rule}",
                "adaptive_rsa": f"adaptive_rsa N={p.population}{grow} K={p.k} T={p.rounds}{rule}"}.get(
            kind, f"rsa N={p.population} K={p.k} T={p.rounds}"
        )
    return EvalConfig(name, params)


@dataclass
class RunRecord:
    """One problem under one configuration, as seen through its progress events."""

    problem: str
    gold: str
    seed: int
    answers: list[list[str | None]] = field(default_factory=list)  # per round, per index
    round_tokens: list[int] = field(default_factory=list)  # trace tokens per round
    final_answer: str | None = None
    final_correct: bool = False
    completion_tokens: int = 0  # every call, the final one included
    stop_reason: str | None = None
    wall_s: float = 0.0
    error: str | None = None
    scores: list[RoundScore] = field(default_factory=list)
    trace: list[dict] | None = None  # every call of the run, when the backend keeps them

    def observe(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "node_finished":
            r, i = event["round"], event["index"]
            while len(self.answers) <= r:
                self.answers.append([])
                self.round_tokens.append(0)
            self.round_tokens[r] += event.get("tokens", 0)
            if event.get("status", "finished") == "finished":
                row = self.answers[r]
                row.extend([None] * (i + 1 - len(row)))
                row[i] = event.get("answer")
        elif kind == "run_completed":
            self.final_answer = event.get("answer")
            self.stop_reason = event.get("stop_reason")
            self.completion_tokens = (event.get("usage") or {}).get("completion_tokens", sum(self.round_tokens))
            self.trace = event.get("trace")


async def run_one(backend: Backend, config: EvalConfig, problem: Problem, seed: int, on_event: Callable[[dict], None] | None = None) -> RunRecord:
    params = config.params.model_copy(update={"seed": seed})
    record = RunRecord(problem=problem.id, gold=problem.answer, seed=seed)
    t0 = time.perf_counter()
    try:
        extra = {"effort": config.effort} if config.effort is not None else {}
        async for event in backend.run(problem.messages(), params, f"eval-{problem.id}-{seed}", **extra):
            record.observe(event)
            if on_event is not None:
                on_event(event)
    except RunError as exc:
        record.error = str(exc)
    record.wall_s = time.perf_counter() - t0
    if record.error is None:
        record.scores = score_rounds(record.answers, record.round_tokens, problem.answer)
        record.final_correct = is_correct(record.final_answer, problem.answer)
    return record


def config_summary(config: EvalConfig, records: Sequence[RunRecord]) -> dict:
    """The results document's entry for one configuration (``records`` in problem order)."""
    ok = [r for r in records if r.error is None]
    summary = summarize([r.scores for r in ok], [r.final_correct for r in ok], [r.completion_tokens for r in ok], len(records) - len(ok))
    return {
        "name": config.name,
        "params": config.params.model_dump(exclude={"seed"}),
        **({"effort": config.effort} if config.effort is not None else {}),
        "rounds": [asdict(m) for m in summary.rounds],
        "final_accuracy": summary.final_accuracy,
        "final_interval": wilson_interval(sum(r.final_correct for r in ok), len(ok)),
        "tokens_mean": summary.tokens_mean,
        "tokens_total": sum(r.completion_tokens for r in ok),
        "errors": summary.errors,
        # Runs overlap (--concurrency) and replay shared samples (memo.py): per-run latency,
        # not a wall time of the configuration.
        "latency_s_mean": sum(r.wall_s for r in records) / max(1, len(records)),
        "runs": [asdict(r) for r in records],
    }


def record_from_dict(data: dict) -> RunRecord:
    """A run record read back from a results document, re-graded with today's grader."""
    fields = {k: v for k, v in data.items() if k in RunRecord.__dataclass_fields__ and k != "scores"}
    record = RunRecord(**fields)
    if record.error is None:
        record.scores = score_rounds(record.answers, record.round_tokens, record.gold)
        record.final_correct = is_correct(record.final_answer, record.gold)
    return record


def comparisons(results: dict, *, seed: int = 0) -> list[dict]:
    """Every pair of configurations, final answers paired by problem (see stats.py)."""
    finals = {}
    for c in results["configs"]:
        finals[c["name"]] = {r["problem"]: r["final_correct"] for r in c["runs"]}
    names = list(finals)
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = [p for p in finals[a] if p in finals[b]]
            cmp = paired(a, [finals[a][p] for p in shared], b, [finals[b][p] for p in shared], seed=seed)
            rows.append({**asdict(cmp), "resolved": cmp.resolved})
    return rows


def _kept_records(configs: Sequence[EvalConfig], problems: Sequence[Problem],
                  previous: dict | None) -> dict[str, list[RunRecord | None]]:
    """Per configuration, the finished run of each problem that ``previous`` holds, else None."""
    kept: dict[str, dict[str, RunRecord]] = {c.name: {} for c in configs}
    for c in (previous or {}).get("configs", []):
        if c["name"] in kept:
            kept[c["name"]] = {r["problem"]: record_from_dict(r) for r in c["runs"] if r.get("error") is None}
    return {c.name: [kept[c.name].get(p.id) for p in problems] for c in configs}


async def evaluate(
    backend: Backend, configs: Sequence[EvalConfig], problems: Sequence[Problem], *, seed: int = 0,
    concurrency: int = 4, console: Console | None = None, meta: dict | None = None,
    checkpoint: Callable[[dict], None] | None = None, previous: dict | None = None,
    checkpoint_every: int = 4, deadline: float | None = None,
) -> dict:
    """Every configuration over the same problems; the results document.

    Work goes problem by problem: ``concurrency`` problems at a time, each running all its
    configurations at once (their shared samples are generated once when the backend's engine
    memoises them), so a results document saved mid-way (``checkpoint``, every
    ``checkpoint_every`` problems) pairs all configurations on the problems done so far.
    ``previous``: a results document of the same configurations to continue; its finished runs
    are kept (re-graded) and not run again, so a long evaluation can go in slices.
    ``deadline`` (``time.monotonic()``): no problem starts after it; the document then holds
    the problems done (``meta.problems_done``), and a later call with it as ``previous``
    continues."""
    resolve = getattr(backend, "resolve_model", None)
    if resolve is not None:  # a service: ask it which model it serves
        await resolve()
    progress = Progress(
        TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[acc]}"),
        TimeElapsedColumn(), console=console or Console(stderr=True),
    )
    records = _kept_records(configs, problems, previous)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    head = {"model": backend.model, "problems": len(problems), "seed": seed, "concurrency": concurrency,
            "date": (previous or {}).get("meta", {}).get("date", started), "updated": started, **(meta or {})}

    def document() -> dict:
        results = {"meta": dict(head), "configs": [
            config_summary(c, [r for r in records[c.name] if r is not None]) for c in configs
        ]}
        results["meta"]["problems_done"] = min(sum(r is not None for r in records[c.name]) for c in configs)
        results["comparisons"] = comparisons(results, seed=seed)
        return results

    gate = asyncio.Semaphore(concurrency)
    tasks = {c.name: progress.add_task(c.name, total=len(problems), acc="") for c in configs}
    for c in configs:
        progress.update(tasks[c.name], advance=sum(r is not None for r in records[c.name]))
    finished_problems = 0

    async def run(i: int, problem: Problem, config: EvalConfig) -> None:
        record = await run_one(backend, config, problem, seed * 100_000 + i)
        records[config.name][i] = record
        done = [r for r in records[config.name] if r is not None]
        acc = sum(r.final_correct for r in done) / len(done)
        progress.update(tasks[config.name], advance=1, acc=f"final {acc:.3f}")

    async def one(i: int, problem: Problem) -> None:
        """All configurations of one problem at once (shared samples are generated once)."""
        nonlocal finished_problems
        todo = [c for c in configs if records[c.name][i] is None]
        if not todo:
            return
        async with gate:
            if deadline is not None and time.monotonic() >= deadline:
                return
            await asyncio.gather(*(run(i, problem, c) for c in todo))
        finished_problems += 1
        if checkpoint is not None and finished_problems % checkpoint_every == 0:
            checkpoint(document())

    with progress:
        await asyncio.gather(*(one(i, p) for i, p in enumerate(problems)))
    results = document()
    if checkpoint is not None:
        checkpoint(results)
    return results
