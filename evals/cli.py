"""``mrsa eval``: the command line. Kept import-light: ``mrsa --help`` loads only this."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from functools import partial
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[1] / "results"
DEFAULT_CONFIGS = ["single", "majority:n=8", "rsa:n=4,k=2,t=2"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The evaluation's own flags. The engine's (``--model``, ``--max-model-len``, ``--dtype``,
    ...) are ``mrsa serve``'s, which mrsa/cli.py adds beside these and passes in as ``engine``."""
    p.add_argument("--url", help="a running service (e.g. http://127.0.0.1:8000); default: the embedded engine in-process")
    p.add_argument("--api-key", help="bearer token for --url")
    p.add_argument("--dataset", default="arithmetic", help="'arithmetic' (generated) or a JSONL file with question/answer")
    p.add_argument("--size", type=int, default=30, help="problems to generate, or the first SIZE of the JSONL (0 = all)")
    p.add_argument("--difficulty", type=int, default=1, help="arithmetic: operations per problem")
    p.add_argument("--shots", type=int, default=1, help="arithmetic: worked examples opening each question")
    p.add_argument(
        "--config", action="append", dest="configs", metavar="SPEC",
        help="repeatable: single | majority:n=8 | rsa:n=4,k=2,t=2[,tau=64][,max=256][,sel=aggregate][,vote=all] "
        "| adaptive_vote:n=2,wave=1,maxn=8,thr=0.7 | adaptive_rsa:n=4,k=2,t=2,thr=0.9 | effort:high (--url: the served preset) "
        f"(default: {' '.join(DEFAULT_CONFIGS)})",
    )
    p.add_argument("--tail-tokens", type=int, help="tau of every config (rsa: tau= overrides; default: the rsa default)")
    p.add_argument("--trace-max-tokens", type=int, help="max new tokens of one trace (default: the rsa default)")
    p.add_argument("--temperature", type=float, help="sampling temperature of traces (default: the rsa default)")
    p.add_argument("--seed", type=int, default=0, help="seeds the dataset and every run")
    p.add_argument("--concurrency", type=int, default=4, help="problems in flight at once (each runs all its configurations)")
    p.add_argument("--out", help=f"output folder for results.json and plot.png (default: {RESULTS}/eval-<time>)")
    p.add_argument("--resume", action="store_true",
                   help="continue --out's results.json: keep its finished runs, run the rest (slices)")
    p.add_argument("--memo", metavar="FILE",
                   help="embedded: keep every seeded completion in FILE (JSON lines) and replay it in later "
                   "evaluations of the same model, so a changed aggregation prompt regenerates only what it changes")
    p.add_argument("--replay-only", action="store_true",
                   help="embedded: answer only from --memo, without loading the model (a request it lacks "
                   "fails its run): re-evaluates configurations whose samples were all generated before")
    p.add_argument("--keep-traces", action="store_true",
                   help="embedded: also write traces.json (every call's text, tail, parents, answer)")


def _problems(args: argparse.Namespace) -> list:
    from mrsa.evals.datasets import arithmetic, load_jsonl

    if args.dataset == "arithmetic":
        return arithmetic(args.size, args.difficulty, args.seed, shots=args.shots)
    return load_jsonl(args.dataset, limit=args.size or None)


async def _run(args: argparse.Namespace, configs: list, problems: list, meta: dict, out: Path,
               previous: dict | None, engine: Any, cache_dir: Path | None, model: str | None) -> dict:
    from mrsa.evals.backends import EngineBackend, HttpBackend
    from mrsa.evals.runner import evaluate

    if args.url:
        backend = HttpBackend(args.url, model=model, api_key=args.api_key)
        try:
            await backend.resolve_model()
            return await evaluate(backend, configs, problems, seed=args.seed, concurrency=args.concurrency,
                                  meta=meta, checkpoint=partial(_save, out), previous=previous)
        finally:
            await backend.aclose()
    from mrsa.evals.memo import MemoEngine
    from mrsa.engine import create_engine
    from mrsa.engine.config import EngineConfig

    config = engine or EngineConfig()
    if getattr(args, "replay_only", False):
        from mrsa.engine import load_tokenizer
        from mrsa.evals.memo import ReplayOnlyEngine

        tokenizer, name = load_tokenizer(config)
        engine_cm: Any = ReplayOnlyEngine(tokenizer, name, config.max_model_len or 32768)
    else:
        engine_cm = create_engine(config, cache_dir)
    async with engine_cm as engine:
        memo = MemoEngine(engine, Path(args.memo) if args.memo else None)
        backend = EngineBackend(memo, keep_traces=args.keep_traces)
        return await evaluate(backend, configs, problems, seed=args.seed, concurrency=args.concurrency,
                              meta=meta, checkpoint=partial(_save, out), previous=previous)


def _save(out: Path, results: dict) -> None:
    """results.json (figures and per-run answers) and, when runs kept them, traces.json."""
    traces = {}
    for c in results["configs"]:
        for run in c["runs"]:
            if run.get("trace"):
                traces.setdefault(c["name"], {})[run["problem"]] = run.pop("trace")
    tmp = out / ".results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2, default=str))
    tmp.replace(out / "results.json")
    if traces:
        path = out / "traces.json"
        old = json.loads(path.read_text()) if path.exists() else {}
        for name, runs in traces.items():
            old.setdefault(name, {}).update(runs)
        path.write_text(json.dumps(old, default=str))


def main(args: argparse.Namespace, engine: Any = None, cache_dir: Path | None = None,
         model: str | None = None) -> int:
    """``mrsa eval``; ``engine`` (an EngineConfig) and ``cache_dir``: the embedded engine's
    settings, read as ``mrsa serve`` reads them (its flags over ``MRSA_*`` over the defaults);
    ``model``: the model to ask ``--url`` for (default: the service's only one)."""
    from rich.console import Console

    from mrsa.evals.report.plot import plot
    from mrsa.evals.report.table import comparisons_table, results_table
    from mrsa.evals.runner import parse_config

    given = {"tail_tokens": args.tail_tokens, "trace_max_tokens": args.trace_max_tokens, "temperature": args.temperature}
    defaults = {k: v for k, v in given.items() if v is not None}  # the rest: RsaParams' defaults
    try:
        configs = [parse_config(s, defaults) for s in (args.configs or DEFAULT_CONFIGS)]
        names = [c.name for c in configs]
        if len(set(names)) < len(names):  # results are kept by name: two configs would mix
            twice = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"two configurations are named {twice[0]!r}: give one a name= of its own")
        problems = _problems(args)
    except (ValueError, OSError) as exc:
        raise SystemExit(f"mrsa eval: {exc}") from None
    dataset = f"arithmetic d={args.difficulty} {args.shots}-shot" if args.dataset == "arithmetic" else Path(args.dataset).name
    options = {k: v for k, v in vars(args).items()
               if k not in ("func", "command", "api_key", "engine_source") and not k.startswith("engine.")}
    if args.url:
        options["model"] = model
    elif engine is not None:  # what the embedded engine was started with, beside the defaults
        options["engine"] = engine.model_dump(exclude_defaults=True)
    meta = {"dataset": dataset, "backend": args.url or "embedded", "options": options}
    out = Path(args.out) if args.out else RESULTS / f"eval-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    previous = None
    if args.resume and (out / "results.json").exists():
        previous = json.loads((out / "results.json").read_text())
    t0 = time.perf_counter()
    results = asyncio.run(_run(args, configs, problems, meta, out, previous, engine, cache_dir, model))
    results["meta"]["wall_s"] = (previous or {}).get("meta", {}).get("wall_s", 0.0) + time.perf_counter() - t0
    _save(out, results)
    plot(results, out / "plot.png")
    console = Console()
    console.print(results_table(results))
    console.print(comparisons_table(results))
    console.print(f"results: {out / 'results.json'}\nplot:    {out / 'plot.png'}")
    return 0
