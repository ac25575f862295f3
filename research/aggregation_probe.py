"""Can a model aggregate? Re-ask an eval's mixed aggregation prompts with any model.

An aggregation whose K candidates disagree on correctness (some right, some wrong) is where
aggregation can beat a vote: a model that reads the candidates should keep the right answer
more often than picking a candidate at random would (``right / K`` of the time). This probe
takes the traces an ``mrsa eval --keep-traces`` run wrote, rebuilds exactly the prompts of those
mixed round-2 nodes (the same tails, labels and seeds), asks ``--model`` to answer them, and
reports how often it keeps a right answer, beside how often the eval's own model did.

    python -m research.aggregation_probe --traces docs/eval/gsm8k-qwen05b/traces.json.gz \\
        --dataset ../shared/data/gsm8k-dev.jsonl --config "rsa N=4 K=2 T=2" \\
        --model Qwen2.5-Coder-1.5B-Instruct --out docs/eval/gsm8k-qwen05b/probe-15b.json

It costs one generation per mixed prompt (37 for the 36 problems of the K=2 run measured here).
``--population`` asks instead one aggregate per problem whose first round is partly right, with
that whole round as its candidates: does an aggregator that sees every sample beat their vote?
``--aggregates`` asks instead what a third round would be asked: every pair of a problem's
round-2 aggregates with one right answer. Do aggregates of aggregates select as well?
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

from mrsa.evals.datasets import Problem, load_jsonl
from mrsa.evals.memo import read_traces
from mrsa.rsa.answers import extract_answer, normalize_answer
from mrsa.rsa.tails import Tail, take_tail
from research.traces import round_traces


@dataclass(frozen=True)
class MixedPrompt:
    """One aggregation node of round 2 whose parents are partly right."""

    problem: Problem
    index: int
    seed: int
    tails: list[Tail]
    texts: list[str]  # the parents' whole traces, for tails of another length
    right_parents: int
    original_answer: str | None  # what the eval's model answered

    def is_right(self, answer: str | None) -> bool:
        return answer is not None and normalize_answer(answer) == normalize_answer(self.problem.answer)


def _tail(node: dict) -> Tail:
    return Tail(node["tail_text"], node["tail_tokens"], node["cut"], node["answer"], node["finish_reason"] == "stop")


def mixed_prompts(traces: dict[str, list[dict]], problems: dict[str, Problem]) -> list[MixedPrompt]:
    """The round-2 nodes (``round == 1``) of one configuration's traces whose parents in round 1
    hold both a right and a wrong (or missing) answer, in problem then index order."""
    out: list[MixedPrompt] = []
    for pid, nodes in traces.items():
        problem = problems[pid]
        first = {n["index"]: n for n in round_traces(nodes, 0)}
        for node in nodes:
            if node["round"] != 1 or node["kind"] != "trace":
                continue
            parents = [first[i] for i in node["parents"]]
            probe = MixedPrompt(problem, node["index"], node["seed"], [_tail(p) for p in parents],
                                [p["text"] for p in parents], 0, node["answer"])
            right = sum(probe.is_right(p["answer"]) for p in parents)
            if 0 < right < len(parents):
                out.append(replace(probe, right_parents=right))
    return out


def population_prompts(traces: dict[str, list[dict]], problems: dict[str, Problem]) -> list[MixedPrompt]:
    """One prompt per problem whose first-round population is partly right: all of that round's
    traces as the candidates (K = N, in index order), seeded like the problem's first round-2
    node. This asks whether an aggregator that sees the whole population picks better than the
    population's vote."""
    out: list[MixedPrompt] = []
    for pid, nodes in traces.items():
        problem = problems[pid]
        first, second = round_traces(nodes, 0), round_traces(nodes, 1)
        if not first or not second:
            continue
        probe = MixedPrompt(problem, second[0]["index"], second[0]["seed"], [_tail(n) for n in first],
                            [n["text"] for n in first], 0, second[0]["answer"])
        right = sum(probe.is_right(n["answer"]) for n in first)
        if 0 < right < len(first):
            out.append(replace(probe, right_parents=right))
    return out


def aggregate_pair_prompts(traces: dict[str, list[dict]], problems: dict[str, Problem]) -> list[MixedPrompt]:
    """What a third round would be asked: every pair of one problem's round-2 aggregates
    (``round == 1``; lower index first) with one right and one wrong (or missing) answer, seeded
    from the pair's own seeds. Does aggregating aggregates select as well as the first
    aggregation did?"""
    out: list[MixedPrompt] = []
    for pid, nodes in traces.items():
        problem = problems[pid]
        second = round_traces(nodes, 1)
        for a, b in itertools.combinations(second, 2):
            probe = MixedPrompt(problem, len(out), (a["seed"] * 1_000_003 + b["seed"]) % 2**31, [_tail(a), _tail(b)],
                                [a["text"], b["text"]], 0, None)
            right = probe.is_right(a["answer"]) + probe.is_right(b["answer"])
            if right == 1:
                out.append(replace(probe, right_parents=1))
    return out


def retailed(probe: MixedPrompt, tokenizer, tau: int) -> list[Tail]:
    """The probe's candidates with tails of ``tau`` tokens cut from the parents' whole traces."""
    out = []
    for tail, text in zip(probe.tails, probe.texts):
        cut = take_tail(tokenizer.encode(text), text, tokenizer, tau, finished=tail.finished)
        out.append(replace(cut, answer=tail.answer))
    return out


async def _ask(model: str, prompts: list[MixedPrompt], style: str, tau: int | None, max_tokens: int,
               temperature: float, top_p: float, kv_cache_gib: float) -> list[dict]:
    from mrsa.engine import create_engine
    from mrsa.engine.base import SamplingParams
    from mrsa.engine.config import EngineConfig
    from mrsa.rsa.prompts import aggregation_messages

    async with create_engine(EngineConfig(model=model, cpu_kvcache_space_gib=kv_cache_gib)) as engine:

        async def one(i: int, p: MixedPrompt) -> dict:
            tails = p.tails if tau is None else retailed(p, engine.tokenizer, tau)
            ids = engine.tokenizer.apply_chat_template(aggregation_messages(p.problem.messages(), tails, style))
            sampling = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=p.seed)
            text, tokens = "", 0
            async for delta in engine.generate(ids, sampling, f"probe-{i}"):
                text, tokens = text + delta.text, tokens + len(delta.token_ids)
            answer = extract_answer(text)
            return {"problem": p.problem.id, "index": p.index, "gold": p.problem.answer,
                    "right_parents": p.right_parents, "candidates": len(p.tails),
                    "candidate_answers": [t.answer for t in p.tails],
                    "original_answer": p.original_answer, "original_right": p.is_right(p.original_answer),
                    "answer": answer, "right": p.is_right(answer), "tokens": tokens, "text": text}

        return await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))


def summarize(model: str, rows: list[dict]) -> dict:
    chance = sum(r["right_parents"] / r["candidates"] for r in rows)
    return {"model": model, "prompts": len(rows), "right": sum(r["right"] for r in rows),
            "original_right": sum(r["original_right"] for r in rows), "chance": chance,
            "tokens": sum(r["tokens"] for r in rows)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m research.aggregation_probe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", required=True, help="traces.json(.gz) written by mrsa eval --keep-traces")
    parser.add_argument("--dataset", required=True, help="the eval's dataset (JSONL)")
    parser.add_argument("--config", default="rsa N=4 K=2 T=2", help="the configuration's name in the traces")
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--prompt", default="annotated", choices=["annotated", "bare", "compare"])
    parser.add_argument("--tail-tokens", type=int,
                        help="re-cut every candidate to this many tokens (default: the eval's own tails)")
    parser.add_argument("--population", action="store_true",
                        help="one prompt per partly-right first round, all its traces as candidates "
                             "(default: the configuration's own mixed round-2 prompts)")
    parser.add_argument("--aggregates", action="store_true",
                        help="pairs of round-2 aggregates, one right and one wrong (what a third round is asked)")
    parser.add_argument("--max-tokens", type=int, default=448)
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--kv-cache-gib", type=float, default=3)
    args = parser.parse_args(argv)
    traces = read_traces(args.traces)[args.config]
    problems = {p.id: p for p in load_jsonl(args.dataset)}
    pick = population_prompts if args.population else aggregate_pair_prompts if args.aggregates else mixed_prompts
    prompts = pick(traces, problems)
    t0 = time.perf_counter()
    rows = asyncio.run(_ask(args.model, prompts, args.prompt, args.tail_tokens, args.max_tokens, args.temperature,
                            args.top_p, args.kv_cache_gib))
    summary = summarize(args.model, rows) | {"config": args.config, "prompt": args.prompt,
                                             "population": args.population, "aggregates": args.aggregates,
                                             "tail_tokens": args.tail_tokens, "wall_s": time.perf_counter() - t0,
                                             "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    Path(args.out).write_text(json.dumps({"summary": summary, "results": rows}, indent=1))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
