"""``mrsa calibrate``: measure what each unit of compute buys on a model, and write its presets.

For a model (embedded, or a running service with ``--url``) and a JSONL dataset with answers,
within ``--time-budget``:

1. the sample pool (pool.py): every problem's first ``levels[0]`` samples, then more where the
   vote is open, most contested problems first, until its share of the budget is spent;
2. the runs: RSA and adaptive RSA configurations (``--run``) through the evaluation runner,
   problem by problem until the budget is spent;
3. the frontier (frontier.py): single, vote@k and a grid of adaptive votes read off the pool,
   the runs, and any ``--import``-ed ``mrsa eval`` results of the same seeds, paired on the
   problems every one measured;
4. the effort levels on it (efforts.py), written as a preset file ``mrsa serve`` loads
   (``--presets``), with calibration.json (every point, the frontier, the comparisons with the
   reference vote, provenance) and frontier.png.

Same seeds as ``mrsa eval`` (problem ``i`` runs with seed ``seed * 100000 + i``), so a
calibration pairs with an evaluation of the same dataset. ``--resume`` continues ``--out``:
the pool and the runs kept there are not sampled again, and an embedded model's ``--memo``
replays every completion already generated, so a calibration can go in slices.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the rest is imported where used: `mrsa --help` builds this parser
    from mrsa.evals.frontier import Point
    from mrsa.evals.pool import Pool
    from mrsa.evals.runner import EvalConfig
    from mrsa.rsa import RsaParams

DEFAULT_RUNS = ["rsa:n=4,k=2,t=2", "adaptive_rsa:n=4,k=2,t=2,thr=0.8", "adaptive_rsa:n=4,k=2,t=2,thr=0.9",
                "adaptive_rsa:n=4,k=2,t=2,thr=0.95"]
# The adaptive vote grid read off the pool: first wave, wave, and stop rules (max_population: the
# pool's levels). Every point is free once the pool holds its samples.
POPULATIONS, WAVES = (2, 4), (1, 2, 4)
STOP_RULES = [("posterior", 0.7), ("posterior", 0.8), ("posterior", 0.9), ("posterior", 0.95),
              ("supermajority", 0.6), ("supermajority", 0.75)]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The calibration's own flags; the engine's are ``mrsa serve``'s (as ``mrsa eval``'s)."""
    p.add_argument("--url", help="a running service; default: the embedded engine in-process")
    p.add_argument("--api-key", help="bearer token for --url")
    p.add_argument("--dataset", required=True, help="a JSONL file with question and answer per line")
    p.add_argument("--size", type=int, default=150, help="the first SIZE problems (0 = all)")
    p.add_argument("--seed", type=int, default=0, help="seeds every run, as mrsa eval --seed")
    p.add_argument("--time-budget", type=float, default=3600.0, metavar="S",
                   help="seconds of sampling and runs; no problem starts after it (default 3600)")
    p.add_argument("--pool-share", type=float, default=0.5,
                   help="the share of the budget the sample pool may take before the runs (default 0.5)")
    p.add_argument("--levels", default="8,16",
                   help="pool sizes: every problem gets the first, an open one the next (default 8,16)")
    p.add_argument("--run", action="append", dest="runs", metavar="SPEC",
                   help=f"repeatable: a configuration to run, as mrsa eval --config (default: {' '.join(DEFAULT_RUNS)})")
    p.add_argument("--import", action="append", dest="imports", default=[], metavar="RESULTS",
                   help="an mrsa eval results.json of the same dataset and seed: its configurations join the frontier")
    p.add_argument("--reference", default="vote@8", help="the budget reference point (default vote@8)")
    p.add_argument("--tail-tokens", type=int, help="tau of the runs (default: the rsa default)")
    p.add_argument("--trace-max-tokens", type=int, help="max new tokens of one trace (default: the rsa default)")
    p.add_argument("--temperature", type=float, help="sampling temperature of traces (default: the rsa default)")
    p.add_argument("--concurrency", type=int, default=4, help="problems in flight at once")
    p.add_argument("--memo", metavar="FILE", help="embedded: replay and keep every seeded completion (mrsa eval --memo)")
    p.add_argument("--replay-traces", action="append", default=[], metavar="TRACES",
                   help="embedded: a kept traces.json(.gz) whose later rounds are replayed by seed (memo.py)")
    p.add_argument("--replay-only", action="store_true",
                   help="embedded: answer only from --memo and --replay-traces, without loading the model "
                   "(a sample they lack fails its run); recomputes a calibration from kept samples")
    p.add_argument("--note", help="provenance in words kept in the preset file (e.g. where replayed samples were made)")
    p.add_argument("--out", required=True, help="folder for pool.json, runs.json, calibration.json, frontier.png")
    p.add_argument("--presets", help="where to write the preset file (default: OUT/presets.json)")
    p.add_argument("--resume", action="store_true", help="continue --out's pool and runs (slices)")


def machine() -> dict:
    """Where the measurement ran: host, CPU model, cores, and the bf16 instructions it has."""
    cpu, flags = platform.processor() or "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not cpu.strip(" x86_64"):
                cpu = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    import os

    return {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(),
            "avx512_bf16": "avx512_bf16" in flags, "amx": "amx_bf16" in flags}


def vote_points(entries: Sequence, levels: Sequence[int]) -> list[Point]:
    """single, vote@2 .. vote@max(levels), and the adaptive vote grid, off the pool."""
    from mrsa.evals.frontier import AdaptiveVote, adaptive_vote_point, vote_point

    points = [vote_point(entries, k) for k in range(1, max(levels) + 1)]
    for population in POPULATIONS:
        for wave in WAVES:
            for top in levels:
                for rule, threshold in STOP_RULES:
                    if population <= top:
                        points.append(adaptive_vote_point(entries, AdaptiveVote(population, wave, top, rule, threshold)))
    return [p for p in points if p.problems]


def calibration_document(points: Sequence[Point], problems: Sequence[str], reference: str, meta: dict,
                         seed: int) -> dict:
    """Every point's figures, the frontier and the effort levels on ``problems`` (the points that
    measured them all), and each against the reference (paired bootstrap, McNemar)."""
    from mrsa.evals.efforts import RULE, budgets, choose
    from mrsa.evals.frontier import compare, frontier

    full = [p.on(problems) for p in points if set(problems) <= set(p.correct)]
    by_name = {p.name: p for p in full}
    if "single" not in by_name or reference not in by_name:
        raise ValueError(f"single and {reference} must be measured on all {len(problems)} problems")
    single, ref = by_name["single"], by_name[reference]
    chosen = choose(full, single, ref, seed=seed)
    rows = []
    for p in full:
        cmp = compare(p, ref, seed=seed)
        rows.append({**p.summary(), "vs_reference": {"diff": cmp.diff, "low": cmp.low, "high": cmp.high,
                     "only": cmp.a_only, "reference_only": cmp.b_only, "p_value": cmp.p_value}})
    partial_points = [p.summary() for p in points if p.name not in by_name]
    return {
        "held_out": held_out(full, problems, reference, seed),
        "meta": {**meta, "problems": len(problems), "reference": reference, "rule": RULE.format(ref=reference)},
        "budgets": budgets(single, ref),
        "points": rows,
        "partial": partial_points,  # measured on some problems only: shown, not chosen
        "frontier": [p.summary() for p in frontier(full)],
        "efforts": {level: {**p.summary(), "vs_reference": next(r["vs_reference"] for r in rows if r["name"] == p.name)}
                    for level, p in chosen.items()},
    }


def held_out(points: Sequence[Point], problems: Sequence[str], reference: str, seed: int) -> dict:
    """How much choosing among many points on the same problems flatters the choice: each level
    chosen on one half of the problems (alternate ones) and measured on the other, both ways."""
    from mrsa.evals.efforts import choose

    halves = [list(problems[0::2]), list(problems[1::2])]
    out: dict[str, list[dict]] = {}
    for pick, judge in (halves, halves[::-1]):
        on_pick = [p.on(pick) for p in points]
        named = {p.name: p for p in on_pick}
        chosen = choose(on_pick, named["single"], named[reference], seed=seed)
        for level, p in chosen.items():
            whole = next(q for q in points if q.name == p.name).on(judge)
            ref = next(q for q in points if q.name == reference).on(judge)
            out.setdefault(level, []).append({
                "name": p.name, "chosen_accuracy": p.accuracy, "held_out_accuracy": whole.accuracy,
                "held_out_tokens_mean": whole.tokens_mean, "held_out_reference_accuracy": ref.accuracy,
                "held_out_reference_tokens_mean": ref.tokens_mean})
    return out


async def _measure(args: argparse.Namespace, problems: list, base: RsaParams, runs: list[EvalConfig], out: Path,
                   engine_config: Any, cache_dir: Path | None,
                   model: str | None) -> tuple[str, Pool, dict | None, dict]:
    """The pool and the runs, within the time budget; (model, pool, runs document, counters)."""
    from mrsa.evals.backends import EngineBackend, HttpBackend
    from mrsa.evals.pool import Pool
    from mrsa.evals.runner import evaluate

    t0 = time.monotonic()
    deadline = t0 + args.time_budget
    pool_deadline = t0 + args.time_budget * args.pool_share
    levels = [int(x) for x in args.levels.split(",")]
    pool = Pool(out / "pool.json")
    previous = json.loads((out / "runs.json").read_text()) if args.resume and (out / "runs.json").exists() else None

    async def measure(backend: Any) -> tuple[bool, dict | None]:
        complete = await pool.grow(backend, problems, base, seed=args.seed, levels=levels, deadline=pool_deadline,
                                   concurrency=args.concurrency)
        document = None
        if runs:
            document = await evaluate(backend, runs, problems, seed=args.seed, concurrency=args.concurrency,
                                      meta={"dataset": Path(args.dataset).name}, previous=previous,
                                      checkpoint=partial(_save_runs, out), deadline=deadline)
        return complete, document

    if args.url:
        backend = HttpBackend(args.url, model=model, api_key=args.api_key)
        try:
            model = await backend.resolve_model()
            complete, document = await measure(backend)
        finally:
            await backend.aclose()
        return model, pool, document, {"pool_complete": complete}

    from mrsa.engine import create_engine, load_tokenizer
    from mrsa.engine.config import EngineConfig
    from mrsa.evals.memo import MemoEngine, ReplayOnlyEngine, read_traces, seeded_from_traces

    config = engine_config or EngineConfig()
    seeded: dict = {}
    if args.replay_traces:
        tokenizer, _ = load_tokenizer(config)
        for path in args.replay_traces:
            seeded.update(seeded_from_traces(read_traces(path), tokenizer, base.temperature))
    if args.replay_only:
        tokenizer, name = load_tokenizer(config)
        engine_cm: Any = ReplayOnlyEngine(tokenizer, name, config.max_model_len or 32768)
    else:
        engine_cm = create_engine(config, cache_dir)
    async with engine_cm as engine:
        memo = MemoEngine(engine, Path(args.memo) if args.memo else None, seeded=seeded)
        complete, document = await measure(EngineBackend(memo))
        return engine.model_name, pool, document, {"pool_complete": complete, "pool_not_grown": len(pool.failed),
                                                   "memo_hits": memo.hits, "memo_misses": memo.misses}


def _save_runs(out: Path, results: dict) -> None:
    """runs.json: the runner's results document (as mrsa eval's results.json)."""
    tmp = out / ".runs.json.tmp"
    tmp.write_text(json.dumps(results, indent=2, default=str))
    tmp.replace(out / "runs.json")


def main(args: argparse.Namespace, engine: Any = None, cache_dir: Path | None = None,
         model: str | None = None) -> dict:
    """Runs a calibration; returns calibration.json's document (the preset file is written).
    ``engine``, ``cache_dir`` and ``model``: as :func:`evals.cli.main`'s."""
    from mrsa.evals.datasets import load_jsonl
    from mrsa.evals.efforts import preset_document, write_presets
    from mrsa.evals.frontier import Point, run_points
    from mrsa.evals.report.frontier import plot_frontier
    from mrsa.evals.runner import parse_config
    from mrsa.rsa import RsaParams

    given = {"tail_tokens": args.tail_tokens, "trace_max_tokens": args.trace_max_tokens, "temperature": args.temperature}
    defaults = {k: v for k, v in given.items() if v is not None}
    base = RsaParams(**defaults)
    runs = [parse_config(s, defaults) for s in (args.runs if args.runs is not None else DEFAULT_RUNS)]
    names = [c.name for c in runs]
    if len(set(names)) < len(names):
        raise ValueError(f"two runs are named {sorted(n for n in names if names.count(n) > 1)[0]!r}: give one a name=")
    problems = load_jsonl(args.dataset, limit=args.size or None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.resume:
        for name in ("pool.json", "runs.json"):
            (out / name).unlink(missing_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    t0 = time.perf_counter()
    model, pool, document, counters = asyncio.run(_measure(args, problems, base, runs, out, engine, cache_dir, model))
    entries = [pool.entries[p.id] for p in problems if p.id in pool.entries]
    points = vote_points(entries, [int(x) for x in args.levels.split(",")])
    if document is not None:
        points += run_points(document)
    for path in args.imports:
        points += run_points(json.loads(Path(path).read_text()))
    ids = [p.id for p in problems]
    measured = [pid for pid in ids if pid in pool.entries]
    meta = {
        "model": model, "dataset": Path(args.dataset).name, "seed": args.seed, "date": started,
        "wall_s": time.perf_counter() - t0, "machine": machine(),
        "backend": args.url or ("replay-only (memo)" if args.replay_only else "embedded"),
        "trace": {"trace_max_tokens": base.trace_max_tokens, "temperature": base.temperature, "top_p": base.top_p},
        "levels": args.levels, "pool_sizes": {str(n): sum(len(e.samples) == n for e in entries)
                                               for n in sorted({len(e.samples) for e in entries})},
        "imports": args.imports, **counters,
    }
    calibration = calibration_document(points, measured, args.reference, meta, args.seed)
    (out / "calibration.json").write_text(json.dumps(calibration, indent=2) + "\n")
    plot_frontier(calibration, out / "frontier.png")
    if args.note:
        meta["note"] = args.note
    provenance = {k: meta[k] for k in ("dataset", "seed", "date", "machine", "trace", "backend", "note") if k in meta}
    provenance |= {"problems": len(measured), "rule": calibration["meta"]["rule"],
                   "figures": {level: {"name": c["name"], "accuracy": c["accuracy"], "tokens_mean": c["tokens_mean"]}
                               for level, c in calibration["efforts"].items()}}
    chosen = {level: Point(c["name"], c["fields"]) for level, c in calibration["efforts"].items()}
    write_presets(Path(args.presets) if args.presets else out / "presets.json",
                  preset_document(model, chosen, meta["trace"], provenance))
    return calibration
