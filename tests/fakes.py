"""A deterministic fake engine and tokenizer implementing :mod:`engine.base`.

Used by the unit tests of ``rsa/`` and by the service's tests: no model, no GPU, milliseconds.

* :class:`FakeTokenizer` splits text into pieces (whitespace runs, words, single symbols, chat
  markers, think tags) and numbers them with a vocabulary built on the fly, so
  ``decode(encode(text)) == text`` for any text.
* :class:`FakeEngine` answers a prompt with a text that is a pure function of (prompt, seed):
  some filler words drawn from a generator seeded by both, optionally inside ``<think>`` tags,
  then ``The answer is \\boxed{X}.`` where X comes from the ``answer`` callable. It streams a
  few tokens per delta with ``await asyncio.sleep(delay)`` in between, honours ``max_tokens``
  (``finish_reason="length"``), ``ignore_eos`` (pads to exactly ``max_tokens``) and
  ``max_model_len`` (rejects with :class:`EngineError`), and records every request.
  ``abort()`` ends a stream with ``finish_reason="abort"``; closing or cancelling a stream
  counts as an abort too. ``aclose()`` (or leaving ``async with engine:``) closes the engine:
  later requests are rejected with :class:`EngineError`, as a real engine cannot serve them.
  Plain OpenAI requests (``engine.openai``) go to :class:`tests.fake_openai.FakeOpenAI`.
  With ``reasoning=True`` the engine has a reasoning parser (:class:`ThinkTagParser`, the
  contract of vLLM's ``--reasoning-parser``), else ``reasoning_parser()`` is None.

Every knob (``answer``, ``length``, ``delay``, ``script``, ``error``) is either a constant or a
callable of the :class:`FakeRequest`, so tests can vary behaviour per request (by request id,
prompt text, seed...).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TypeVar

from mrsa.engine.base import AsyncCloseable, EngineError, FinishReason, GenerationDelta, SamplingParams
from tests.fake_openai import FakeOpenAI

T = TypeVar("T")
Knob = T | Callable[["FakeRequest"], T]

_PIECES = re.compile(r"<\|[a-z_]+\|>|</?think>|\s+|\w+|[^\w\s]")


class FakeTokenizer:
    """Word-level tokenizer with a vocabulary grown on demand. Id 0 is EOS (skipped on decode)."""

    EOS = "<|eos|>"

    def __init__(self) -> None:
        self.eos_token_id: int | None = 0
        self._ids: dict[str, int] = {self.EOS: 0}
        self._pieces: list[str] = [self.EOS]

    def _id(self, piece: str) -> int:
        if piece not in self._ids:
            self._ids[piece] = len(self._pieces)
            self._pieces.append(piece)
        return self._ids[piece]

    def encode(self, text: str) -> list[int]:
        return [self._id(piece) for piece in _PIECES.findall(text)]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self._pieces[i] for i in ids if i != self.eos_token_id)

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        """``<|role|>\\ncontent\\n`` per message, then the assistant's generation prompt."""
        body = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages)
        return body + "<|assistant|>\n"

    def apply_chat_template(self, messages: Sequence[dict[str, str]]) -> list[int]:
        return self.encode(self.render_chat(messages))


class ThinkTagParser:
    """A reasoning parser over ``<think>...</think>`` (engine.base.ReasoningParser): the text
    before the closing tag, opening tag removed, is reasoning, and so is an opened block that
    never closes; an output without tags is all content. The fake tokenizer keeps tags whole,
    so no tag is split across deltas."""

    def __init__(self, tokenizer: FakeTokenizer) -> None:
        self.tokenizer = tokenizer
        self._text = ""
        self._sent = (0, 0)  # reasoning and content characters already streamed

    @staticmethod
    def _split(text: str) -> tuple[str | None, str | None]:
        if "</think>" not in text:
            return (text.replace("<think>", ""), None) if text.lstrip().startswith("<think>") else (None, text)
        reasoning, content = text.split("</think>", 1)
        return reasoning.replace("<think>", ""), content or None

    def split(self, text: str, token_ids: Sequence[int]) -> tuple[str | None, str | None]:
        return self._split(text)

    def delta(self, text: str, token_ids: Sequence[int], *, finished: bool) -> tuple[str, str]:
        self._text += text
        reasoning, content = self._split(self._text)
        reasoning, content = reasoning or "", content or ""
        r0, c0 = self._sent
        self._sent = (len(reasoning), len(content))
        return reasoning[r0:], content[c0:]

    def reasoning_tokens(self, token_ids: Sequence[int]) -> int:
        reasoning = self._split(self.tokenizer.decode(token_ids))[0]
        return len(self.tokenizer.encode(reasoning)) if reasoning else 0


@dataclass
class FakeRequest:
    """One call of :meth:`FakeEngine.generate`, as recorded by the engine."""

    request_id: str
    prompt: str
    prompt_ids: list[int]
    params: SamplingParams
    order: int  # 0-based submission order
    started_at: float  # loop time
    finished_at: float | None = None
    finish_reason: FinishReason | None = None
    completion_tokens: int = 0
    text: str = ""

    def rng(self) -> random.Random:
        """A generator that depends only on (prompt, seed): use it to make knobs deterministic."""
        digest = hashlib.sha256(self.prompt.encode()).hexdigest()
        return random.Random(f"{self.params.seed}|{digest}")

    @property
    def aborted(self) -> bool:
        return self.finish_reason == "abort"


def _knob(value: Knob[T], request: FakeRequest) -> T:
    return value(request) if callable(value) else value  # type: ignore[return-value]


@dataclass
class FakeEngine(AsyncCloseable):
    """Deterministic stand-in for a model server. See the module docstring."""

    max_model_len: int = 32768
    answer: Knob[str | None] = "42"
    length: Knob[int] = 12  # filler words before the answer (about two tokens each)
    delay: Knob[float] = 0.0  # seconds before each delta
    tokens_per_delta: int = 4
    think: bool = False  # wrap the filler in <think>...</think>
    reasoning: bool = False  # the engine has a reasoning parser (ThinkTagParser)
    script: Callable[[FakeRequest], str] | None = None  # overrides the whole output text
    error: Callable[[FakeRequest], BaseException | None] | None = None  # raised on submission
    model_name: str = "fake-model"
    served_names: list[str] = field(default_factory=lambda: ["fake-model"])
    tokenizer: FakeTokenizer = field(default_factory=FakeTokenizer)
    requests: list[FakeRequest] = field(default_factory=list)
    abort_calls: list[str] = field(default_factory=list)
    max_in_flight: int = 0

    def __post_init__(self) -> None:
        self.openai = FakeOpenAI(self)  # plain requests (vLLM's OpenAI layer in the real engines)
        self._in_flight: set[str] = set()
        self._aborted: set[str] = set()
        self.closed = False

    # ---------------------------------------------------------------- Engine protocol

    def num_in_flight(self) -> int:
        return len(self._in_flight)

    def reasoning_parser(self, prompt_ids: Sequence[int]) -> ThinkTagParser | None:
        return ThinkTagParser(self.tokenizer) if self.reasoning else None

    async def abort(self, request_id: str) -> None:
        self.abort_calls.append(request_id)
        if request_id in self._in_flight:
            self._aborted.add(request_id)

    async def aclose(self) -> None:
        self.closed = True

    async def generate(
        self, prompt_ids: Sequence[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[GenerationDelta]:
        if self.closed:
            raise EngineError(f"request {request_id}: the engine is closed")
        request = FakeRequest(
            request_id=request_id,
            prompt=self.tokenizer.decode(prompt_ids),
            prompt_ids=list(prompt_ids),
            params=params,
            order=len(self.requests),
            started_at=asyncio.get_running_loop().time(),
        )
        self.requests.append(request)
        if len(prompt_ids) + params.max_tokens > self.max_model_len:
            raise EngineError(
                f"{len(prompt_ids)} prompt tokens + max_tokens {params.max_tokens} exceed "
                f"max_model_len {self.max_model_len}"
            )
        if self.error is not None and (exc := self.error(request)) is not None:
            raise exc
        output = self._output_ids(request)
        cached = self.cached_prefix(request)
        delay = _knob(self.delay, request)
        self._in_flight.add(request_id)
        self.max_in_flight = max(self.max_in_flight, len(self._in_flight))
        produced: list[int] = []
        finish: FinishReason | None = None
        try:
            while finish is None:
                await asyncio.sleep(delay)
                chunk: list[int] = []
                if request_id in self._aborted:
                    finish = "abort"
                else:
                    room = params.max_tokens - len(produced)
                    chunk = output[len(produced) : len(produced) + min(self.tokens_per_delta, room)]
                    produced += chunk
                    if len(produced) == len(output) and not params.ignore_eos:
                        finish = "stop"
                    elif len(produced) >= params.max_tokens:
                        finish = "length"
                yield GenerationDelta(
                    token_ids=chunk,
                    text=self.tokenizer.decode(chunk),
                    finished=finish is not None,
                    finish_reason=finish,
                    prompt_tokens=len(prompt_ids),
                    cached_tokens=cached,
                )
        finally:
            self._in_flight.discard(request_id)
            self._aborted.discard(request_id)
            request.finish_reason = finish or "abort"  # closed or cancelled mid-stream
            request.completion_tokens = len(produced)
            request.text = self.tokenizer.decode(produced)
            request.finished_at = asyncio.get_running_loop().time()

    # ---------------------------------------------------------------- helpers for tests

    CACHE_BLOCK = 16  # a prefix cache hits whole blocks, as vLLM's does

    def cached_prefix(self, request: FakeRequest) -> int:
        """Prompt tokens a prefix cache would serve: the longest whole-block prefix shared with
        an earlier request (never the whole prompt: the last token is always computed)."""
        best = 0
        for earlier in self.requests[: request.order]:
            shared = 0
            for a, b in zip(earlier.prompt_ids, request.prompt_ids):
                if a != b:
                    break
                shared += 1
            best = max(best, shared)
        best = min(best, len(request.prompt_ids) - 1)
        return best - best % self.CACHE_BLOCK

    def natural_text(self, request: FakeRequest) -> str:
        """What ``request`` says when nothing cuts it (before EOS)."""
        if self.script is not None:
            return self.script(request)
        rng = request.rng()
        words = " ".join(f"w{rng.randrange(1000)}" for _ in range(max(0, _knob(self.length, request))))
        body = f"<think>\n{words}\n</think>\n" if self.think else f"{words}\n"
        answer = _knob(self.answer, request)
        return body + (f"The answer is \\boxed{{{answer}}}." if answer is not None else "I am not sure.")

    def _output_ids(self, request: FakeRequest) -> list[int]:
        ids = self.tokenizer.encode(self.natural_text(request))
        if request.params.ignore_eos:  # keep going past the natural end, like a model past EOS
            rng = request.rng()
            while len(ids) < request.params.max_tokens:
                ids += self.tokenizer.encode(f" pad{rng.randrange(1000)}")
        return ids

    def by_id(self, request_id: str) -> FakeRequest:
        return next(r for r in self.requests if r.request_id == request_id)

    @property
    def completion_tokens(self) -> int:
        """Tokens generated over every request (what a budget must bound)."""
        return sum(r.completion_tokens for r in self.requests)



@dataclass
class CountingEngine(FakeEngine):
    """The fake engine, counting the tokens each request has delivered so far: a test waits for
    what the traces did instead of sleeping for a guess of how long it takes."""

    delivered: dict[str, int] = field(default_factory=dict)

    async def generate(
        self, prompt_ids: Sequence[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[GenerationDelta]:
        async with aclosing(FakeEngine.generate(self, prompt_ids, params, request_id)) as deltas:
            async for delta in deltas:
                self.delivered[request_id] = self.delivered.get(request_id, 0) + len(delta.token_ids)
                yield delta

async def collect(run: object) -> tuple[list[object], object]:
    """Drain ``run.events()`` (an :class:`rsa.RsaRun`); returns (events, the RsaResult)."""
    events = [event async for event in run.events()]  # type: ignore[attr-defined]
    return events, events[-1].result  # type: ignore[attr-defined]
