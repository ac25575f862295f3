"""An engine wrapper that generates each distinct seeded request once per evaluation.

Configurations share seeds (see runner.py): ``single`` is the first trace of every RSA run's
first round, and ``majority@8``'s first four samples are ``rsa N=4``'s first round. With a
deterministic engine those requests would reproduce the same completions; on a CPU batch
composition changes float rounding, so they would differ in a few tokens and cost the same
compute again. Memoising completions by (prompt ids, sampling parameters) makes the shared
samples *identical* across configurations, which is what the paired comparison assumes, and
spends the compute once. Only completed requests are kept (an aborted one is not a sample).

With ``path``, completions are also appended to a JSON-lines file and read back by the next
evaluation of the same model: changing only the aggregation prompt then regenerates only the
aggregation rounds, and an evaluation killed mid-way loses only what was in flight.

Tokens are still counted in every configuration that uses a sample: a replayed completion
reports its own token counts, so each configuration's cost is what it would cost alone. Wall
times of configurations that replay samples are therefore not comparable; tokens are.

A kept run's later rounds (aggregation traces) can be replayed too (``seeded``, from
:func:`seeded_from_traces`): their prompts are built from their parents' tails, which a kept
trace does not hold as ids, so such a trace is matched by what fixes it instead: its seed (the
run seed, round and index, hence the same node of the same plan), its token limit, and its
prompt's length. A request with all three is the same node over the same parents' tails (the
first round replayed from the memo), and is answered with the kept completion, which is then
memoised under the request's own key.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from mrsa.engine.base import AsyncCloseable, Completion, Engine, EngineError, GenerationDelta, SamplingParams
from mrsa.evals.datasets import Problem


def memo_key(model_name: str, prompt_ids: Sequence[int], params: SamplingParams) -> str:
    """What a memoised completion is filed under: the model, the prompt's ids, the sampling."""
    raw = json.dumps([model_name, list(prompt_ids), dataclasses.asdict(params)], sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()


class MemoEngine(AsyncCloseable):
    """:class:`engine.base.Engine` over ``engine``, replaying completions of seeded requests."""

    def __init__(self, engine: Engine, path: Path | None = None,
                 seeded: dict[tuple[int, int, int, float], Completion] | None = None) -> None:
        self.engine = engine
        self.model_name = engine.model_name
        self.served_names = engine.served_names
        self.tokenizer = engine.tokenizer
        self.max_model_len = engine.max_model_len
        self.reasoning_parser = engine.reasoning_parser
        self._done: dict[str, Completion] = {}
        self._pending: dict[str, asyncio.Future[Completion]] = {}
        self.hits = 0
        self.misses = 0
        self.seeded = dict(seeded or {})  # (seed, max_tokens, prompt length, temperature) -> completion
        self._path = path
        if path is not None and path.exists():
            with path.open(encoding="utf-8") as f:
                for line in f:
                    try:
                        row = json.loads(line)
                    except ValueError:  # a line cut by a kill
                        continue
                    self._done[row["key"]] = Completion(row["token_ids"], row["text"], row["finish_reason"],
                                                        row["prompt_tokens"])

    def _key(self, prompt_ids: Sequence[int], params: SamplingParams) -> str:
        return memo_key(self.model_name, prompt_ids, params)

    def _keep(self, key: str, completion: Completion) -> None:
        self._done[key] = completion
        if self._path is not None:
            row = {"key": key, **dataclasses.asdict(completion)}
            with self._path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    async def generate(
        self, prompt_ids: Sequence[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[GenerationDelta]:
        key = self._key(prompt_ids, params)
        if params.seed is None:  # an unseeded request is a fresh sample every time
            async for delta in self.engine.generate(prompt_ids, params, request_id):
                yield delta
            return
        if key not in self._done and key in self._pending:
            with contextlib.suppress(Exception):  # the first caller failed or was aborted
                await asyncio.shield(self._pending[key])
        kept = self.seeded.get((params.seed, params.max_tokens, len(prompt_ids), params.temperature))
        if key not in self._done and kept is not None:
            self._keep(key, kept)
        if key in self._done:
            self.hits += 1
            done = self._done[key]
            yield GenerationDelta(list(done.token_ids), done.text, True, done.finish_reason, done.prompt_tokens)
            return
        self.misses += 1
        future: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        completion = Completion()
        try:
            async for delta in self.engine.generate(prompt_ids, params, request_id):
                completion.add(delta)
                if delta.finished and completion.finish_reason in ("stop", "length"):
                    # Kept before the caller sees the last delta: callers close the stream
                    # as soon as it arrives.
                    self._keep(key, completion)
                    future.set_result(completion)
                yield delta
        finally:
            self._pending.pop(key, None)
            if not future.done():
                future.set_exception(RuntimeError(f"request {request_id} ended without completing"))
                future.exception()  # retrieved: no "never retrieved" warning

    async def abort(self, request_id: str) -> None:
        await self.engine.abort(request_id)

    def num_in_flight(self) -> int:
        return self.engine.num_in_flight()

    async def aclose(self) -> None:
        """Closes the wrapped engine: the memo owns nothing else (the file is appended per line)."""
        await self.engine.aclose()


class ReplayOnlyEngine(AsyncCloseable):
    """An engine with the model's tokenizer and no model: every request fails. Under a
    :class:`MemoEngine` it answers exactly what the memo holds, so a calibration or evaluation
    whose samples were all generated before is recomputed without loading the model (and a
    request the memo lacks fails its run instead of being generated)."""

    def __init__(self, tokenizer, model_name: str, max_model_len: int = 32768) -> None:
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.served_names = [model_name]
        self.max_model_len = max_model_len
        self.requests = 0

    def reasoning_parser(self, prompt_ids: Sequence[int]) -> None:
        return None

    async def generate(self, prompt_ids: Sequence[int], params: SamplingParams,
                       request_id: str) -> AsyncIterator[GenerationDelta]:
        self.requests += 1
        raise EngineError(f"request {request_id} is not in the memo (replay only)")
        yield  # an async generator

    async def abort(self, request_id: str) -> None:
        return None

    def num_in_flight(self) -> int:
        return 0

    async def aclose(self) -> None:
        return None


def read_traces(path: str | Path) -> dict[str, dict[str, list[dict]]]:
    """A traces file as ``mrsa eval --keep-traces`` writes it, or gzipped: configuration ->
    problem -> the run's calls."""
    import gzip

    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return json.loads(raw)


def memo_rows_from_traces(traces: dict[str, dict[str, list[dict]]], problems: dict[str, Problem], tokenizer,
                          model_name: str, temperature: float, top_p: float = 1.0) -> list[dict]:
    """Memo lines for the first-round traces an ``mrsa eval --keep-traces`` run kept.

    A kept trace holds its text, seed and max_tokens, not its token ids: the ids are the text
    re-encoded, plus the end-of-sequence token where the trace's token count says it had one
    (the same ids wherever the model wrote the tokenizer's own split of its text: 454 of 456
    GSM8K traces), and the key is rebuilt as the run built it (the problem's plain prompt, the
    trace's sampling). A
    later evaluation given the file replays those samples instead of generating them again, so a
    new configuration pays only for what it changes. One line per distinct key."""
    rows: dict[str, dict] = {}
    for runs in traces.values():
        for pid, nodes in runs.items():
            prompt_ids = tokenizer.apply_chat_template(problems[pid].messages())
            for node in nodes:
                if node["round"] != 0 or node["kind"] != "trace" or node["status"] != "finished":
                    continue
                params = SamplingParams(max_tokens=node["max_tokens"], temperature=temperature, top_p=top_p,
                                        seed=node["seed"])
                key = memo_key(model_name, prompt_ids, params)
                ids = tokenizer.encode(node["text"])
                stop = tokenizer.eos_token_id
                if node["finish_reason"] == "stop" and stop is not None and len(ids) < node["completion_tokens"]:
                    ids.append(stop)  # the engine counted its stop token, which the text leaves out
                completion = Completion(ids, node["text"], node["finish_reason"], node["prompt_tokens"])
                rows[key] = {"key": key, **dataclasses.asdict(completion)}
    return list(rows.values())


def seeded_from_traces(traces: dict[str, dict[str, list[dict]]], tokenizer, temperature: float,
                       rounds: range = range(1, 1 << 16)) -> dict[tuple[int, int, int, float], Completion]:
    """The finished traces of ``rounds`` (default: every round after the first) that a kept run
    holds, by (seed, max_tokens, prompt tokens, temperature: the run's trace temperature): what
    :class:`MemoEngine` replays them by. Ids are re-encoded from the text as in
    :func:`memo_rows_from_traces`."""
    kept: dict[tuple[int, int, int, float], Completion] = {}
    for runs in traces.values():
        for nodes in runs.values():
            for node in nodes:
                if node["round"] not in rounds or node["kind"] != "trace" or node["status"] != "finished":
                    continue
                ids = tokenizer.encode(node["text"])
                stop = tokenizer.eos_token_id
                if node["finish_reason"] == "stop" and stop is not None and len(ids) < node["completion_tokens"]:
                    ids.append(stop)
                kept[(node["seed"], node["max_tokens"], node["prompt_tokens"], temperature)] = Completion(
                    ids, node["text"], node["finish_reason"], node["prompt_tokens"])
    return kept


def main(argv: list[str] | None = None) -> int:
    """``python -m mrsa.evals.memo --traces T --dataset D --model M --out memo.jsonl``"""
    import argparse

    from mrsa.engine import EngineConfig, load_tokenizer
    from mrsa.evals.datasets import load_jsonl

    parser = argparse.ArgumentParser(prog="python -m mrsa.evals.memo", description=memo_rows_from_traces.__doc__)
    parser.add_argument("--traces", required=True, help="traces.json(.gz) of mrsa eval --keep-traces")
    parser.add_argument("--dataset", required=True, help="the eval's dataset (JSONL)")
    parser.add_argument("--model", required=True, help="the eval's model (a built-in name or a folder)")
    parser.add_argument("--temperature", type=float, required=True, help="the eval's trace temperature")
    parser.add_argument("--out", required=True, help="memo file to append to")
    args = parser.parse_args(argv)
    tokenizer, name = load_tokenizer(EngineConfig(model=args.model))
    problems = {p.id: p for p in load_jsonl(args.dataset)}
    rows = memo_rows_from_traces(read_traces(args.traces), problems, tokenizer, name, args.temperature)
    with Path(args.out).open("a", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    print(f"{len(rows)} completions written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
