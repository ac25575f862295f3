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
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from mrsa.engine.base import AsyncCloseable, Completion, Engine, GenerationDelta, SamplingParams


class MemoEngine(AsyncCloseable):
    """:class:`engine.base.Engine` over ``engine``, replaying completions of seeded requests."""

    def __init__(self, engine: Engine, path: Path | None = None) -> None:
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
        raw = json.dumps([self.model_name, list(prompt_ids), dataclasses.asdict(params)], sort_keys=True)
        return hashlib.sha256(raw.encode()).hexdigest()

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
