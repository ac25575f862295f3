"""``mrsa bench load``: many concurrent clients against one real server, loopback only, bounded.

Starts ``mrsa serve`` (embedded engine, default model) as a subprocess on 127.0.0.1 with its
admission limits set, then runs ``--clients`` concurrent clients that each send ``--requests``
requests, a mix of plain completions and small RSA runs (``--rsa-share``). A 429 is the
service refusing work on purpose: the client waits for ``Retry-After`` and tries again (at most
``--max-retries`` times). Anything else that is not a 200 is an error.

Reported: latency of each request from its first attempt to its answer (p50, p99; 429 waits
included) and of the attempt that was served, status counts, and the memory of the service:
the RSS of the server process and of the whole process tree (the engine core included) sampled
every 0.25 s, its peak, and the medians of the first and last third of the load (flat memory
means those stay close). Everything is bounded: a whole-run time cap (``--time-cap``) cancels
the clients that are left and counts them as errors.

Results are printed and written as JSON to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from benchmarks.servers import cpu_description, free_port, stop, wait_healthy

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]
QUESTION = [{"role": "user", "content": "What is 7 + 5? Put the answer in \\boxed{}."}]
SMALL_RSA = {"population": 2, "k": 2, "rounds": 2, "tail_tokens": 16, "trace_max_tokens": 16,
             "selection": "majority"}


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"plain": [], "rsa": []})
    served: list[float] = field(default_factory=list)  # the successful attempt alone
    statuses: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    retries_exhausted: int = 0

    def count(self, key: str) -> None:
        self.statuses[key] = self.statuses.get(key, 0) + 1


class RssSampler(threading.Thread):
    """RSS of the server process and of its whole tree, every ``period`` seconds."""

    def __init__(self, pid: int, period: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.period = period
        self.samples: list[tuple[float, int, int]] = []  # (t, server rss, tree rss)
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                server = self.root.memory_info().rss
                tree = server + sum(_rss(c) for c in self.root.children(recursive=True))
                self.samples.append((time.monotonic(), server, tree))
            except psutil.NoSuchProcess:
                return
            self._halt.wait(self.period)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def _rss(p: psutil.Process) -> int:
    try:
        return p.memory_info().rss
    except psutil.NoSuchProcess:
        return 0


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


async def _client(http: httpx.AsyncClient, model: str, n: int, rsa_share: float, max_retries: int,
                  stats: Stats, rng: random.Random) -> None:
    for _ in range(n):
        kind = "rsa" if rng.random() < rsa_share else "plain"
        body: dict = {"model": model, "messages": QUESTION, "max_tokens": 16, "seed": rng.randrange(10**6)}
        if kind == "rsa":
            body["rsa"] = SMALL_RSA
        first = time.monotonic()
        for _attempt in range(max_retries + 1):
            start = time.monotonic()
            try:
                r = await http.post("/v1/chat/completions", json=body)
            except httpx.HTTPError as exc:
                stats.count("exception")
                stats.errors.append(f"{type(exc).__name__}: {exc}")
                break
            stats.count(str(r.status_code))
            if r.status_code == 429:
                await asyncio.sleep(float(r.headers.get("retry-after", "1")) * (0.5 + rng.random()))
                continue
            if r.status_code == 200:
                stats.latencies[kind].append(time.monotonic() - first)
                stats.served.append(time.monotonic() - start)
            else:
                stats.errors.append(f"{r.status_code}: {r.text[:200]}")
            break
        else:
            stats.retries_exhausted += 1


async def _load(url: str, model: str, args: argparse.Namespace, stats: Stats) -> float:
    limits = httpx.Limits(max_connections=args.clients + 10, max_keepalive_connections=args.clients + 10)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(args.time_cap), limits=limits) as http:
        rng = random.Random(args.seed)
        tasks = [
            asyncio.create_task(_client(http, model, args.requests, args.rsa_share, args.max_retries, stats,
                                        random.Random(rng.random())))
            for _ in range(args.clients)
        ]
        start = time.monotonic()
        done, pending = await asyncio.wait(tasks, timeout=args.time_cap)
        for task in pending:
            task.cancel()
            stats.count("cut_by_time_cap")
        await asyncio.gather(*pending, return_exceptions=True)
        return time.monotonic() - start


def _start_server(args: argparse.Namespace, port: int, store: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "MRSA_STORE_PATH": str(store),
        "MRSA_ENGINE__MAX_MODEL_LEN": str(args.max_model_len),
        "MRSA_ENGINE__GPU_MEMORY_UTILIZATION": "0.15",
        "MRSA_ENGINE__CPU_KVCACHE_SPACE_GIB": "1",
        "MRSA_ADMISSION__MAX_RUNNING_RUNS": str(args.max_running_runs),
        "MRSA_ADMISSION__MAX_QUEUED_RUNS": str(args.max_queued_runs),
        "MRSA_ADMISSION__MAX_RUNNING_REQUESTS": str(args.max_running_requests),
        "MRSA_ADMISSION__MAX_QUEUED_REQUESTS": str(args.max_queued_requests),
        "MRSA_LOG_LEVEL": "warning",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "mrsa", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )


def run(args: argparse.Namespace) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="mrsa-load-") as tmp:
        proc = _start_server(args, port, Path(tmp) / "runs.sqlite3")
        try:
            model = wait_healthy(url, proc).json()["model"]
            httpx.post(f"{url}/v1/chat/completions", timeout=120,
                       json={"model": model, "messages": QUESTION, "max_tokens": 4})  # warm-up
            sampler = RssSampler(proc.pid)
            sampler.start()
            time.sleep(1.0)
            stats = Stats()
            t0 = time.monotonic()
            print(f"server up ({model}); {args.clients} clients x {args.requests} requests", flush=True)
            wall = asyncio.run(_load(url, model, args, stats))
            t1 = time.monotonic()
            print(f"load done in {wall:.1f} s: {stats.statuses}", flush=True)
            time.sleep(2.0)  # what the service keeps once the load is gone
            after = httpx.get(f"{url}/health", timeout=10).json()
            sampler.stop()
        finally:
            stop(proc)
    during = [s for s in sampler.samples if t0 <= s[0] <= t1]
    third = max(1, len(during) // 3)
    mib = 1 / (1 << 20)
    served = stats.latencies["plain"] + stats.latencies["rsa"]
    statuses = stats.statuses
    deliberate = statuses.get("429", 0)
    ok = statuses.get("200", 0)
    errors = sum(v for k, v in statuses.items() if k not in ("200", "429"))
    return {
        "date": time.strftime("%Y-%m-%d"),
        "model": model,
        "cpu": cpu_description(),
        "settings": vars(args),
        "wall_s": round(wall, 1),
        "requests_ok": ok,
        "responses_429": deliberate,
        "errors": errors,
        "retries_exhausted": stats.retries_exhausted,
        "error_samples": stats.errors[:5],
        "statuses": statuses,
        "latency_s": {
            "all_p50": _pct(served, 0.5), "all_p99": _pct(served, 0.99),
            "plain_p50": _pct(stats.latencies["plain"], 0.5), "plain_p99": _pct(stats.latencies["plain"], 0.99),
            "rsa_p50": _pct(stats.latencies["rsa"], 0.5), "rsa_p99": _pct(stats.latencies["rsa"], 0.99),
            "served_attempt_p50": _pct(stats.served, 0.5), "served_attempt_p99": _pct(stats.served, 0.99),
        },
        "memory_mib": {
            "server_before": round(sampler.samples[0][1] * mib, 1),
            "server_peak": round(max(s[1] for s in sampler.samples) * mib, 1),
            "server_first_third_median": round(statistics.median(s[1] for s in during[:third]) * mib, 1),
            "server_last_third_median": round(statistics.median(s[1] for s in during[-third:]) * mib, 1),
            "server_after": round(sampler.samples[-1][1] * mib, 1),
            "tree_peak": round(max(s[2] for s in sampler.samples) * mib, 1),
            "tree_first_third_median": round(statistics.median(s[2] for s in during[:third]) * mib, 1),
            "tree_last_third_median": round(statistics.median(s[2] for s in during[-third:]) * mib, 1),
            "samples": len(sampler.samples),
        },
        "in_flight_after": after["in_flight"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mrsa bench load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--requests", type=int, default=2, help="requests per client")
    parser.add_argument("--rsa-share", type=float, default=0.25, help="share of small RSA requests")
    parser.add_argument("--max-retries", type=int, default=30, help="429 retries per request")
    parser.add_argument("--time-cap", type=float, default=600, help="seconds; the rest is cancelled")
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--max-running-runs", type=int, default=4)
    parser.add_argument("--max-queued-runs", type=int, default=16)
    parser.add_argument("--max-running-requests", type=int, default=32)
    parser.add_argument("--max-queued-requests", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = run(args)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"load-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"results: {path}")
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
