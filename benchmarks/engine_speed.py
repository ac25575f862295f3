"""``mrsa bench engine``: decode throughput of the embedded engine, per dtype and CPU reserve.

Each measurement runs in its own process, because what it varies is read when vLLM starts its
engine core: ``--dtype`` and, on CPU hosts, the cores kept for the front end (the engine's
``cpu_reserved_cores``, which sets ``VLLM_CPU_NUM_OF_RESERVED_CPU``; vLLM's own default on x86
is 1). A measurement starts the engine, warms it up,
then sends ``batch`` concurrent requests of ``--prompt-tokens`` distinct prompt tokens, first
for one new token (the prefill rate), then for ``1 + --tokens`` (``ignore_eos``): the extra
time is the decode, reported as generated tokens per second at that batch size.

    mrsa bench engine --model Qwen2.5-Coder-1.5B-Instruct --dtype float32 bfloat16 --reserve 1 0
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks.servers import cpu_description

RESULTS = Path(__file__).parent / "results"


async def _measure(model: str | None, dtype: str, reserve: int, batches: list[int], tokens: int,
                   prompt_tokens: int) -> dict:
    from mrsa.engine import create_engine
    from mrsa.engine.base import Completion, SamplingParams
    from mrsa.engine.config import EngineConfig

    async with create_engine(EngineConfig(model=model, dtype=dtype, cpu_reserved_cores=reserve)) as engine:
        async def one(i: int, n: int) -> Completion:
            done = Completion()
            params = SamplingParams(max_tokens=n, temperature=1.0, seed=i, ignore_eos=True)
            prompt = [100 + (i * 7919 + j * 104729) % 30000 for j in range(prompt_tokens)]
            async for delta in engine.generate(prompt, params, f"bench-{time.monotonic_ns()}-{i}"):
                done.add(delta)
            return done

        await one(0, 8)  # warm-up
        rows = []
        for batch in batches:
            # The same batch twice, with distinct prompts each time (no prefix-cache hits): one
            # new token each (prefill), then 1 + tokens each; the difference is the decode.
            base = 1000 * batch
            t0 = time.perf_counter()
            await asyncio.gather(*(one(base + i, 1) for i in range(batch)))
            prefill = time.perf_counter() - t0
            t0 = time.perf_counter()
            outs = await asyncio.gather(*(one(base + batch + i, tokens + 1) for i in range(batch)))
            wall = time.perf_counter() - t0
            generated = sum(len(o.token_ids) for o in outs)
            decode = max(wall - prefill, 1e-9)
            rows.append({
                "batch": batch, "tokens": generated, "wall_s": wall, "tok_s": generated / wall,
                "prefill_tok_s": batch * prompt_tokens / prefill, "decode_tok_s": batch * tokens / decode,
            })
        return {"model": engine.model_name, "rows": rows}


def _one(args: argparse.Namespace) -> int:
    result = asyncio.run(_measure(args.model, args.dtype[0], args.reserve[0], args.batch, args.tokens,
                                  args.prompt_tokens))
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mrsa bench engine", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint or built-in model name (default: the default model)")
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--reserve", nargs="+", type=int, default=[1, 0],
                        help="cores kept for the front end (1: vLLM's own default on x86)")
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per request")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        return _one(args)
    console = Console()
    results = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpu": cpu_description(), "cores": os.cpu_count(),
               "tokens": args.tokens, "prompt_tokens": args.prompt_tokens, "runs": []}
    for dtype, reserve in itertools.product(args.dtype, args.reserve):
        env = dict(os.environ)
        cmd = [sys.executable, "-m", "benchmarks.engine_speed", "--one", "--dtype", dtype, "--reserve", str(reserve),
               "--batch", *map(str, args.batch), "--tokens", str(args.tokens),
               "--prompt-tokens", str(args.prompt_tokens), *(["--model", args.model] if args.model else [])]
        console.print(f"dtype={dtype} reserve={reserve} ...")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False,
                              cwd=Path(__file__).resolve().parents[1])
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            console.print(proc.stderr[-3000:])
            raise SystemExit(f"measurement dtype={dtype} reserve={reserve} failed ({proc.returncode})")
        run = json.loads(line[len("RESULT "):])
        results["runs"].append({"dtype": dtype, "reserve": reserve, **run})
    table = Table(title=f"engine decode throughput, {results['cpu']}, {results['cores']} cores")
    for col in ("model", "dtype", "reserved cores", "batch", "prefill tok/s", "decode tok/s"):
        table.add_column(col)
    for run in results["runs"]:
        for row in run["rows"]:
            table.add_row(run["model"], run["dtype"], str(run["reserve"]), str(row["batch"]),
                          f"{row['prefill_tok_s']:.1f}", f"{row['decode_tok_s']:.1f}")
    console.print(table)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"engine-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    console.print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
