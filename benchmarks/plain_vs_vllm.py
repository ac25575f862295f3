"""``mrsa bench plain``: plain requests through this service against ``vllm serve``, same model.

Users pick this service instead of ``vllm serve``, so a request without RSA must cost what it
costs there. Both servers run at once on 127.0.0.1 with the same model, dtype, context, KV cache
and CPU settings (on a CPU host both engines compute on all cores; only one is busy at a time),
and get the same requests, interleaved pair by pair with the order alternating, so a drift of
the machine falls on both:

- latency: one non-streaming chat completion of exactly ``--tokens`` tokens (``ignore_eos``);
- throughput: ``--concurrency`` such requests at once, generated tokens per second.

Goal: the service within 5% of ``vllm serve`` (ratios of the medians). Then, on the same service,
one RSA run with the server's defaults (the example question of docs/api.md, seed 1): its usage says what
share of an RSA run's prompt tokens vLLM's prefix cache served (``cached_tokens``). Results
are printed and written as JSON to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.servers import free_port, stop, wait_healthy

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]
NAME = "bench-model"
QUESTION = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]
RSA_QUESTION = [{"role": "user", "content": "What is 7 + 5? Answer in \\boxed{}."}]


def _engine_flags(model: str, args: argparse.Namespace) -> tuple[list[str], dict[str, str], bool]:
    """vLLM flags and environment both servers share (what the service's engine chooses), and
    whether that engine runs eager (``vllm serve`` needs the flag for it; the service's
    engine follows the device by itself)."""
    from vllm.platforms import current_platform

    from mrsa.engine.config import EngineConfig
    from mrsa.engine.local import cpu_has_native_bf16, device_defaults

    cpu = current_platform.is_cpu()
    d = device_defaults(EngineConfig(model=model, max_model_len=args.max_model_len,
                                     gpu_memory_utilization=args.gpu_memory_utilization),
                        cpu=cpu, native_bf16=cpu and cpu_has_native_bf16())
    flags = ["--dtype", d["dtype"], "--gpu-memory-utilization", str(d["gpu_memory_utilization"])]
    if d["max_model_len"]:
        flags += ["--max-model-len", str(d["max_model_len"])]
    env = {"VLLM_CPU_KVCACHE_SPACE": f"{args.kv_cache_gib:g}", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"} if cpu else {}
    return flags, env, d["enforce_eager"]


def _start(kind: str, model: str, port: int, args: argparse.Namespace, log: Path,
           shared: tuple[list[str], dict[str, str], bool]) -> subprocess.Popen:
    """``shared``: what :func:`_engine_flags` chose, the same for both servers."""
    flags, shared_env, eager = shared
    env = dict(shared_env)
    if kind == "vllm":
        cmd = [str(Path(sys.executable).parent / "vllm"), "serve", model, "--served-model-name", NAME]
        if eager:
            cmd.append("--enforce-eager")
        env |= {"VLLM_LOGGING_LEVEL": "WARNING"}
    else:
        cmd = [sys.executable, "-m", "mrsa", "serve", "--model", model, "--served-model-name", NAME]
        env |= {"MRSA_ENGINE__CPU_KVCACHE_SPACE_GIB": f"{args.kv_cache_gib:g}", "MRSA_LOG_LEVEL": "warning"}
    cmd += ["--host", "127.0.0.1", "--port", str(port), *flags]
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)


async def _batch(http: httpx.AsyncClient, url: str, size: int, tokens: int, seed: int) -> tuple[float, int]:
    """``size`` concurrent completions of ``tokens`` tokens: (wall seconds, generated tokens)."""

    async def one(i: int) -> int:
        body = {"model": NAME, "messages": QUESTION, "max_tokens": tokens, "temperature": 0.8,
                "seed": seed + i, "ignore_eos": True}
        r = await http.post(f"{url}/v1/chat/completions", json=body)
        r.raise_for_status()
        return r.json()["usage"]["completion_tokens"]

    t0 = time.perf_counter()
    counts = await asyncio.gather(*(one(i) for i in range(size)))
    return time.perf_counter() - t0, sum(counts)


async def _measure(urls: dict[str, str], args: argparse.Namespace) -> dict:
    out: dict = {name: {"latency_s": [], "throughput_tok_s": []} for name in urls}
    async with httpx.AsyncClient(timeout=httpx.Timeout(600)) as http:
        for url in urls.values():  # warm-up, both
            await _batch(http, url, 2, 8, 0)
        order = list(urls)
        for pair in range(args.pairs):
            for name in order if pair % 2 == 0 else order[::-1]:
                seconds, _ = await _batch(http, urls[name], 1, args.tokens, 1000 * pair)
                out[name]["latency_s"].append(seconds)
                seconds, tokens = await _batch(http, urls[name], args.concurrency, args.tokens, 1000 * pair)
                out[name]["throughput_tok_s"].append(tokens / seconds)
                print(f"pair {pair} {name}: latency {out[name]['latency_s'][-1]:.2f} s, "
                      f"{out[name]['throughput_tok_s'][-1]:.1f} tok/s at {args.concurrency}", flush=True)
    for name in urls:
        out[name]["latency_median_s"] = statistics.median(out[name]["latency_s"])
        out[name]["throughput_median_tok_s"] = statistics.median(out[name]["throughput_tok_s"])
    out["latency_ratio_service_over_vllm"] = out["service"]["latency_median_s"] / out["vllm"]["latency_median_s"]
    out["throughput_ratio_service_over_vllm"] = (
        out["service"]["throughput_median_tok_s"] / out["vllm"]["throughput_median_tok_s"])
    out["goal"] = "latency ratio <= 1.05 and throughput ratio >= 0.95"
    async with httpx.AsyncClient(timeout=httpx.Timeout(1800)) as http:
        t0 = time.perf_counter()
        r = await http.post(f"{urls['service']}/v1/chat/completions", json={
            "model": NAME, "messages": RSA_QUESTION, "rsa": {"seed": 1}})
        r.raise_for_status()
        body = r.json()
    usage = body["usage"]
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    out["rsa_run"] = {"seconds": time.perf_counter() - t0, "usage": usage, "answer": body["rsa"]["answer"],
                      "cached_share_of_prompt_tokens": cached / usage["prompt_tokens"]}
    print(f"rsa run: {usage['prompt_tokens']} prompt tokens, {cached} from the prefix cache", flush=True)
    return out


def run(args: argparse.Namespace) -> dict:
    from mrsa.engine.provision import ensure_model

    model = str(ensure_model(args.model))
    shared = _engine_flags(model, args)
    flags = shared[0]
    with tempfile.TemporaryDirectory(prefix="mrsa-plain-") as tmp:
        procs: dict[str, subprocess.Popen] = {}
        urls: dict[str, str] = {}
        try:
            for kind in ("vllm", "service"):  # one at a time: two engines loading at once thrash
                port = free_port()
                procs[kind] = _start(kind, model, port, args, Path(tmp) / f"{kind}.log", shared)
                urls[kind] = f"http://127.0.0.1:{port}"
                try:
                    wait_healthy(urls[kind], procs[kind], timeout=600)
                except RuntimeError as exc:
                    raise RuntimeError(f"{kind}: {exc}\n{(Path(tmp) / f'{kind}.log').read_text()[-3000:]}") from None
            result = asyncio.run(_measure(urls, args))
        finally:
            for proc in procs.values():
                stop(proc)
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "model": model, "engine_flags": flags,
            "settings": vars(args), **result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mrsa bench plain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a built-in model's name (default: the default model)")
    parser.add_argument("--pairs", type=int, default=6, help="interleaved measurements of each server")
    parser.add_argument("--tokens", type=int, default=64, help="generated tokens per request")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--gpu-memory-utilization", type=float, default=None)
    parser.add_argument("--kv-cache-gib", type=float, default=1, help="CPU hosts: each engine's KV cache")
    args = parser.parse_args(argv)
    result = run(args)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"plain-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)} |
                     {k: {m: v[m] for m in ("latency_median_s", "throughput_median_tok_s")}
                      for k, v in result.items() if k in ("service", "vllm")}, indent=2))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
