"""``mrsa bench effort``: what each ``reasoning_effort`` costs on the served model, in tokens and time.

Starts ``mrsa serve`` (embedded engine, the default model unless ``--model``) on 127.0.0.1 and
sends the first ``--problems`` GSM8K questions of ``--dataset`` once per effort level, as an
OpenAI client would (``reasoning_effort`` and nothing else about RSA; ``seed`` fixed per
problem, so every level sees the same questions and seeds). ``--concurrency`` requests of a
level are in flight at once (default: all of them; 1 measures a lone request's latency). For
each level it reports, per problem: engine calls, prompt, completion, reasoning and
prefix-cached tokens (the response's ``usage``), the method that ran and why it stopped, whether
the answer was right and the request's wall time; per level: the p50 / p95 wall time and the
level's total. The presets recorded are the ones the server runs (its shipped file, if any).
Results are printed and written as JSON to ``benchmarks/results/``.

    mrsa bench effort --dataset ../shared/data/gsm8k-dev.jsonl --problems 4 --concurrency 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.servers import cpu_description, free_port, stop, wait_healthy

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]
LEVELS = ["none", "low", "medium", "high", "xhigh", "auto"]


async def _ask(http: httpx.AsyncClient, url: str, model: str, effort: str, problem, seed: int) -> dict:  # noqa: ANN001
    from mrsa.rsa.answers import extract_answer, normalize_answer

    body = {"model": model, "messages": problem.messages(), "reasoning_effort": effort, "seed": seed}
    t0 = time.perf_counter()
    r = await http.post(f"{url}/v1/chat/completions", json=body)
    wall = time.perf_counter() - t0
    r.raise_for_status()
    out = r.json()
    rsa = out.get("rsa") or {}
    usage = out["usage"]
    answer = rsa["answer"] if rsa else extract_answer(out["choices"][0]["message"]["content"] or "")
    return {
        "problem": problem.id,
        "calls": rsa.get("calls", 1),
        "method": rsa.get("method", "plain"),
        "stopped": rsa.get("stop_reason"),
        "wall_s": wall,
        "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": usage["completion_tokens"],
        "reasoning_tokens": (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0,
        "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0,
        "answer": answer,
        "right": answer is not None and normalize_answer(answer) == normalize_answer(problem.answer),
    }


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank ``q`` percentile (0 < q <= 100): a value that was measured."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


async def _measure(url: str, model: str, problems: list, levels: list[str], concurrency: int) -> dict:  # noqa: ANN001
    out: dict = {}
    gate = asyncio.Semaphore(concurrency or len(problems))

    async def ask(http: httpx.AsyncClient, level: str, problem, seed: int) -> dict:  # noqa: ANN001
        async with gate:
            return await _ask(http, url, model, level, problem, seed)

    async with httpx.AsyncClient(timeout=httpx.Timeout(3600)) as http:
        for level in levels:
            t0 = time.perf_counter()
            rows = await asyncio.gather(*(ask(http, level, p, 1000 + i) for i, p in enumerate(problems)))
            wall = time.perf_counter() - t0
            summary = {key: statistics.mean(r[key] for r in rows)
                       for key in ("calls", "prompt_tokens", "completion_tokens", "reasoning_tokens", "cached_tokens")}
            walls = [r["wall_s"] for r in rows]
            out[level] = {"wall_s": wall, "p50_s": percentile(walls, 50), "p95_s": percentile(walls, 95),
                          "right": sum(r["right"] for r in rows), "mean": summary, "problems": rows}
            print(f"{level}: {summary['calls']:.1f} calls, {summary['completion_tokens']:.0f} completion tokens "
                  f"and {summary['prompt_tokens']:.0f} prompt tokens per problem "
                  f"({summary['cached_tokens']:.0f} cached), {out[level]['right']}/{len(rows)} right, "
                  f"p50 {out[level]['p50_s']:.0f} s, p95 {out[level]['p95_s']:.0f} s, {wall:.0f} s in all",
                  flush=True)
    return out


def run(args: argparse.Namespace) -> dict:
    from mrsa.evals.datasets import load_jsonl

    problems = load_jsonl(args.dataset, limit=args.problems)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "mrsa", "serve", "--port", str(port)]
    if args.model:
        cmd += ["--model", args.model]
    env = {**os.environ, "MRSA_LOG_LEVEL": "warning"}
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            health = wait_healthy(url, proc, timeout=900).json()
            model = health["model"]
            print(f"server up ({model}); {len(problems)} problems per level", flush=True)
            levels = asyncio.run(_measure(url, model, problems, args.levels, args.concurrency))
        except Exception:
            print(log.read_text()[-4000:], file=sys.stderr)
            raise
        finally:
            stop(proc)
    from mrsa.service.settings import Settings

    presets = Settings().for_model(model).effort_presets  # what the server ran: its shipped file over the fallback
    return {"benchmark": "effort", "model": model, "dataset": str(args.dataset), "problems": len(problems),
            "concurrency": args.concurrency or len(problems), "presets": presets, "levels": levels,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpu": cpu_description()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mrsa bench effort", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="GSM8K-style JSONL (question, answer)")
    parser.add_argument("--problems", type=int, default=4, help="the first N problems")
    parser.add_argument("--model", help="checkpoint or built-in name (default: the default model)")
    parser.add_argument("--concurrency", type=int, default=0,
                        help="requests of a level in flight at once (0: all; 1: a lone request's latency)")
    parser.add_argument("--levels", nargs="+", default=LEVELS, choices=LEVELS)
    args = parser.parse_args(argv)
    result = run(args)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"effort-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"results: {path}")
    return 0
