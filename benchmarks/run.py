"""``mrsa bench``: P1 (HTTP service overhead), P2 (remote replicas) and P3 (dataflow vs rounds).

P1 and P3 run in one process on one embedded engine, so the comparisons share everything but the
thing measured:

- P1: the same fixed-length RSA schedule (``ignore_eos``: every trace exactly
  ``trace_max_tokens``) run by ``RsaRun`` on the engine directly, and through the HTTP service
  (uvicorn in this process, the client in a thread with its own connection). Goal: ratio <= 1.05.
- P3: the dataflow and the round-synchronous schedule at natural lengths with the same seeds
  (so both generate the same traces). Goal: dataflow >= 1.25x faster. Reports tokens/s of both.
- P2 (``mrsa bench p2 --upstream URL [--upstream URL ...]``): P1's fixed-length schedule through
  the HTTP service (uvicorn in this process) over the remote engine, first against the first
  upstream alone, then against all of them. Reports wall time and tokens/s of each. No embedded
  engine is started: the upstreams are vLLM servers started beforehand.

Results are printed and written as JSON to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import threading
import time
from contextlib import aclosing
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from mrsa.engine.base import AsyncCloseable, Engine
from mrsa.engine.config import EngineConfig
from mrsa.rsa import RsaParams, RsaRun
from mrsa.rsa.events import RsaResult, RunCompleted

RESULTS = Path(__file__).parent / "results"
QUESTION = [
    {
        "role": "user",
        "content": "A train travels 120 km in 1.5 hours, then 80 km in 0.5 hours. "
        "What is its average speed in km/h? Put the answer in \\boxed{}.",
    }
]
console = Console()


@dataclass
class Timing:
    name: str
    seconds: list[float]
    completion_tokens: int

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.median


async def run_direct(engine: Engine, params: RsaParams, run_id: str) -> RsaResult:
    async with aclosing(RsaRun(engine, QUESTION, params, run_id=run_id).events()) as events:
        async for event in events:
            if isinstance(event, RunCompleted):
                return event.result
    raise RuntimeError("run ended without a result")


def _http_run(url: str, model: str, params: RsaParams) -> dict:
    body = {"model": model, "messages": QUESTION, "rsa": params.model_dump(exclude_none=True)}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=None)
    response.raise_for_status()
    return response.json()


async def _in_thread(fn, *args):
    """Run a blocking client call in its own thread so the server's loop stays free."""
    result: dict = {}

    def target() -> None:
        result["value"] = fn(*args)

    thread = threading.Thread(target=target)
    thread.start()
    while thread.is_alive():
        await asyncio.sleep(0.01)
    return result["value"]


def _fixed_length_params() -> RsaParams:
    """P1's and P2's schedule: every trace exactly ``trace_max_tokens`` (2400 tokens a run)."""
    return RsaParams(
        population=8, k=2, rounds=3, tail_tokens=48, trace_max_tokens=96,
        selection="aggregate", ignore_eos=True, seed=1234, temperature=1.0,
    )


async def bench_p1(engine: Engine, repeats: int, port: int) -> dict:
    import uvicorn

    from mrsa.service.app import create_app
    from mrsa.service.settings import Settings

    params = _fixed_length_params()
    settings = Settings(host="127.0.0.1", port=port)
    app = create_app(settings, engine_factory=lambda _: _Unclosable(engine))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    direct, http, tokens = [], [], 0
    try:
        await run_direct(engine, params, "warmup")
        for i in range(repeats):  # interleaved, so drift hits both alike
            t0 = time.perf_counter()
            result = await run_direct(engine, params, f"p1-direct-{i}")
            direct.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            body = await _in_thread(_http_run, url, engine.model_name, params)
            http.append(time.perf_counter() - t0)
            tokens = result.usage.completion_tokens
            assert body["usage"]["completion_tokens"] == tokens, "fixed-length runs must match"
            console.log(f"P1 {i}: direct {direct[-1]:.2f}s, http {http[-1]:.2f}s ({tokens} tokens)")
    finally:
        server.should_exit = True
        await serving
    d, h = Timing("direct", direct, tokens), Timing("http", http, tokens)
    return {
        "params": params.model_dump(),
        "direct": asdict(d) | {"median_s": d.median, "tokens_per_s": d.tokens_per_s},
        "http": asdict(h) | {"median_s": h.median, "tokens_per_s": h.tokens_per_s},
        "ratio_http_over_direct": h.median / d.median,
        "goal": "<= 1.05",
    }


async def bench_p2(config: EngineConfig, model: str, repeats: int, port: int) -> dict:
    """P1's schedule through the service over the remote engine (``config.upstreams``): 1
    upstream, then all."""
    import uvicorn

    from mrsa.service.app import create_app
    from mrsa.service.settings import Settings

    params = _fixed_length_params()
    upstreams = config.upstreams
    out: dict = {"params": params.model_dump(), "upstreams": upstreams, "configs": []}
    sets = [upstreams[:1], upstreams] if len(upstreams) > 1 else [upstreams]
    for ups in sets:
        engine = config.model_copy(update={"upstreams": ups, "model": model})
        settings = Settings(host="127.0.0.1", port=port, engine=engine)
        app = create_app(settings)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        serving = asyncio.create_task(server.serve())
        while not server.started:
            if serving.done():
                serving.result()  # raises why the service could not start
                raise RuntimeError("the service stopped before serving")
            await asyncio.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        seconds: list[float] = []
        tokens = 0
        try:
            # Blocking calls go to a thread: the server runs on this loop.
            models = await _in_thread(lambda: httpx.get(f"{url}/v1/models", timeout=30).json())
            name = models["data"][0]["id"]
            await _in_thread(_http_run, url, name, params)  # warm-up
            for i in range(repeats):
                t0 = time.perf_counter()
                body = await _in_thread(_http_run, url, name, params)
                seconds.append(time.perf_counter() - t0)
                tokens = body["usage"]["completion_tokens"]
                console.log(f"P2 {len(ups)} upstream(s) run {i}: {seconds[-1]:.2f}s ({tokens} tokens)")
        finally:
            server.should_exit = True
            await serving
        t = Timing(f"{len(ups)} upstream(s)", seconds, tokens)
        out["configs"].append(
            asdict(t) | {"upstreams": ups, "median_s": t.median, "tokens_per_s": t.tokens_per_s}
        )
    if len(out["configs"]) > 1:
        out["speedup_all_over_one"] = out["configs"][0]["median_s"] / out["configs"][-1]["median_s"]
    return out


class _Unclosable(AsyncCloseable):
    """Lets the in-process server share the bench's engine without closing it: the server
    closes its engine when it stops, and the bench goes on with this one (P3)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    async def aclose(self) -> None:
        pass  # the bench closes the engine itself, once it is done with it


async def bench_p3(engine: Engine, seeds: list[int]) -> dict:
    base = dict(
        population=8, k=2, rounds=3, tail_tokens=64, trace_max_tokens=384,
        selection="aggregate", temperature=1.0,
    )
    out: dict = {"params": base, "seeds": seeds, "runs": []}
    totals = {"dataflow": [0.0, 0], "rounds": [0.0, 0]}
    await run_direct(engine, RsaParams(**{**base, "rounds": 1, "seed": 0}), "warmup")
    for seed in seeds:
        for schedule in ("rounds", "dataflow"):
            params = RsaParams(**base, seed=seed, schedule=schedule)
            t0 = time.perf_counter()
            result = await run_direct(engine, params, f"p3-{schedule}-{seed}")
            seconds = time.perf_counter() - t0
            tokens = result.usage.completion_tokens
            totals[schedule][0] += seconds
            totals[schedule][1] += tokens
            console.log(f"P3 seed {seed} {schedule}: {seconds:.2f}s, {tokens} tokens")
            out["runs"].append(
                {"seed": seed, "schedule": schedule, "seconds": seconds, "completion_tokens": tokens,
                 "tokens_per_s": tokens / seconds}
            )
    for schedule, (seconds, tokens) in totals.items():
        out[schedule] = {"seconds": seconds, "completion_tokens": tokens, "tokens_per_s": tokens / seconds}
    out["speedup_dataflow"] = totals["rounds"][0] / totals["dataflow"][0]
    out["goal"] = ">= 1.25"
    return out


def _report(results: dict) -> None:
    table = Table(title="markovian-rsa benchmarks")
    table.add_column("bench")
    table.add_column("figure")
    table.add_column("goal")
    if "p1" in results:
        p1 = results["p1"]
        table.add_row(
            "P1 HTTP / direct",
            f"{p1['ratio_http_over_direct']:.3f} ({p1['http']['median_s']:.2f}s vs {p1['direct']['median_s']:.2f}s, "
            f"{p1['direct']['tokens_per_s']:.0f} tok/s)",
            p1["goal"],
        )
    if "p2" in results:
        for c in results["p2"]["configs"]:
            table.add_row(
                f"P2 remote, {c['name']}",
                f"{c['median_s']:.2f}s median of {len(c['seconds'])}, {c['tokens_per_s']:.1f} tok/s",
                "-",
            )
        if "speedup_all_over_one" in results["p2"]:
            table.add_row("P2 all / one upstream", f"{results['p2']['speedup_all_over_one']:.2f}x", "-")
    if "p3" in results:
        p3 = results["p3"]
        table.add_row(
            "P3 dataflow speedup",
            f"{p3['speedup_dataflow']:.2f}x (dataflow {p3['dataflow']['tokens_per_s']:.0f} tok/s, "
            f"rounds {p3['rounds']['tokens_per_s']:.0f} tok/s)",
            p3["goal"],
        )
    console.print(table)


async def _main(args: argparse.Namespace, config: EngineConfig) -> dict:
    if args.which == "p2":
        from mrsa.engine.provision import ensure_model

        if not config.upstreams:
            raise SystemExit("mrsa bench p2 needs at least one --upstream URL")
        model = config.model or str(ensure_model())
        results: dict = {"model": model, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
        results["p2"] = await bench_p2(config, model, args.repeats, args.port)
        return results

    from mrsa.engine.local import LocalEngine

    async with LocalEngine(config) as engine:
        results = {"model": engine.model_name, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
        if args.which in ("p1", "all"):
            results["p1"] = await bench_p1(engine, args.repeats, args.port)
        if args.which in ("p3", "all"):
            results["p3"] = await bench_p3(engine, list(range(1, args.seeds + 1)))
    return results


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's own flags, and the engine's as ``mrsa serve`` spells them (``--model``,
    ``--max-model-len``, ...; p2's ``--upstream`` is ``engine.upstreams``)."""
    from mrsa.cli import engine_flags

    parser = argparse.ArgumentParser(
        prog="mrsa bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "which", nargs="?", choices=["p1", "p2", "p3", "all"], default="all",
        help="all = p1 and p3 (embedded engine); p2 needs --upstream (repeat it: p2 runs the first alone, then all)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--port", type=int, default=8765)
    engine_flags(parser, "mrsa bench")
    return parser


def main(argv: list[str] | None = None) -> int:
    from mrsa.cli import engine_from

    args = build_parser().parse_args(argv)
    results = asyncio.run(_main(args, engine_from(args).engine))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    _report(results)
    console.print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
