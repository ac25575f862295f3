"""A deterministic stand-in for vLLM's OpenAI layer, over :class:`tests.fakes.FakeEngine`.

Enough of the protocol for the service's own tests (routing, admission, disconnects, error
envelopes, metrics): chat completions with ``n`` seeded choices (``seed + i``), ``max_tokens``,
``stop`` ignored, streaming with ``include_usage``; text completions; tokenize and detokenize
with the fake tokenizer; the model list. Bad requests get vLLM's error body (``code`` is the
status). What vLLM itself does with tools, structured outputs and logprobs is tested against
the real layer in tests/e2e/test_openai_plain.py.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import TYPE_CHECKING

from pydantic import ValidationError

from mrsa.engine.base import Completion, GenerationDelta, OpenAIResult, SamplingParams
from mrsa.service.tasks import fan_in
from mrsa.service.wire import ChatCompletionRequest

if TYPE_CHECKING:
    from tests.fakes import FakeEngine


def _error(message: str, status: int = 400, param: str | None = None) -> OpenAIResult:
    kind = "BadRequestError" if status == 400 else "NotFoundError"
    return OpenAIResult(status=status, body={"error": {"message": message, "type": kind, "param": param,
                                                       "code": status}})


def _data(data: dict | str) -> str:
    """One event's data, unframed, as :class:`engine.base.OpenAIResult` streams it."""
    return data if isinstance(data, str) else json.dumps(data)


class FakeOpenAI:
    """:class:`engine.base.OpenAIServing` for a :class:`FakeEngine`."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.calls: list[tuple[str, dict]] = []  # (method, body) of every call

    def _params(self, prompt_ids: list[int], body: dict, n: int, seed: int | None,
                limit: int | None) -> list[SamplingParams] | OpenAIResult:
        room = self.engine.max_model_len - len(prompt_ids)
        if room <= 0 or (limit is not None and limit > room):
            return _error(f"This model's maximum context length is {self.engine.max_model_len} tokens.", 400,
                          "max_tokens")
        temperature = body.get("temperature")
        return [SamplingParams(max_tokens=limit or room, temperature=1.0 if temperature is None else temperature,
                               seed=None if seed is None else seed + i) for i in range(n)]

    def _run(self, prompt_ids: list[int], params: list[SamplingParams], rid: str
             ) -> AsyncIterator[tuple[int, GenerationDelta]]:
        return fan_in([self.engine.generate(prompt_ids, p, f"{rid}-{i}") for i, p in enumerate(params)])

    async def chat_completions(self, body: dict) -> OpenAIResult:
        self.calls.append(("chat_completions", body))
        try:
            req = ChatCompletionRequest.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            return _error(first["msg"], 400, ".".join(str(p) for p in first["loc"]))
        prompt_ids = self.engine.tokenizer.apply_chat_template(req.chat())
        params = self._params(prompt_ids, body, req.n, req.seed, req.completion_limit)
        if isinstance(params, OpenAIResult):
            return params
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        head = {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": req.model}
        if req.stream:
            return OpenAIResult(stream=self._chat_stream(prompt_ids, params, head, req.include_usage))
        outs = await self._collect(prompt_ids, params, rid)
        choices = [{"index": i, "message": {"role": "assistant", "content": o.text, "tool_calls": []},
                    "logprobs": None, "finish_reason": o.finish_reason} for i, o in enumerate(outs)]
        return OpenAIResult(body={**head, "choices": choices, "usage": _usage(prompt_ids, outs)})

    async def completions(self, body: dict) -> OpenAIResult:
        self.calls.append(("completions", body))
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            prompt_ids = self.engine.tokenizer.encode(prompt)
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            prompt_ids = list(prompt)
        else:
            return _error("prompt must be a string or a list of token ids", 400, "prompt")
        params = self._params(prompt_ids, body, int(body.get("n") or 1), body.get("seed"), body.get("max_tokens") or 16)
        if isinstance(params, OpenAIResult):
            return params
        rid = f"cmpl-{uuid.uuid4().hex}"
        outs = await self._collect(prompt_ids, params, rid)
        choices = [{"index": i, "text": o.text, "logprobs": None, "finish_reason": o.finish_reason}
                   for i, o in enumerate(outs)]
        return OpenAIResult(body={"id": rid, "object": "text_completion", "created": int(time.time()),
                                  "model": body.get("model"), "choices": choices, "usage": _usage(prompt_ids, outs)})

    async def tokenize(self, body: dict) -> OpenAIResult:
        self.calls.append(("tokenize", body))
        if isinstance(body.get("prompt"), str):
            ids = self.engine.tokenizer.encode(body["prompt"])
        elif isinstance(body.get("messages"), list):
            ids = self.engine.tokenizer.apply_chat_template(ChatCompletionRequest.model_validate(
                {"model": "x", "messages": body["messages"]}).chat())
        else:
            return _error("prompt or messages is required", 400, "prompt")
        return OpenAIResult(body={"count": len(ids), "max_model_len": self.engine.max_model_len, "tokens": ids})

    async def detokenize(self, body: dict) -> OpenAIResult:
        self.calls.append(("detokenize", body))
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            return _error("tokens must be a list of token ids", 400, "tokens")
        return OpenAIResult(body={"prompt": self.engine.tokenizer.decode(tokens)})

    async def models(self) -> OpenAIResult:
        cards = [{"id": name, "object": "model", "created": 0, "owned_by": "vllm", "root": name,
                  "max_model_len": self.engine.max_model_len} for name in self.engine.served_names]
        return OpenAIResult(body={"object": "list", "data": cards})

    async def _collect(self, prompt_ids: list[int], params: list[SamplingParams], rid: str) -> list[Completion]:
        outs = [Completion() for _ in params]
        async with aclosing(self._run(prompt_ids, params, rid)) as events:
            async for i, delta in events:
                outs[i].add(delta)
        return outs

    async def _chat_stream(self, prompt_ids: list[int], params: list[SamplingParams], head: dict,
                           include_usage: bool) -> AsyncIterator[str]:
        chunk = {**head, "object": "chat.completion.chunk"}
        for i in range(len(params)):
            yield _data({**chunk, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                              "finish_reason": None}]})
        outs = [Completion() for _ in params]
        async with aclosing(self._run(prompt_ids, params, head["id"])) as events:
            async for i, delta in events:
                outs[i].add(delta)
                if delta.text:
                    yield _data({**chunk, "choices": [{"index": i, "delta": {"content": delta.text},
                                                      "finish_reason": None}]})
                if delta.finished:
                    yield _data({**chunk, "choices": [{"index": i, "delta": {}, "finish_reason": delta.finish_reason}]})
        if include_usage:
            yield _data({**chunk, "choices": [], "usage": _usage(prompt_ids, outs)})
        yield _data("[DONE]")


def _usage(prompt_ids: list[int], outs: list[Completion]) -> dict:
    completion = sum(len(o.token_ids) for o in outs)
    return {"prompt_tokens": len(prompt_ids), "completion_tokens": completion,
            "total_tokens": len(prompt_ids) + completion}
