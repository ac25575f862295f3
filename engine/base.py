"""The engine interface: the only thing rsa/ and service/ know about model execution.

An engine takes token ids and sampling parameters and streams back token ids and text.
Everything vLLM-specific stays behind this protocol so the algorithm can be tested against a
deterministic fake in milliseconds and every engine (embedded vLLM, remote replicas, the ZAYA1
plugin) serves every front end.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar, runtime_checkable

FinishReason = Literal["stop", "length", "abort"]
_Self = TypeVar("_Self")


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling. One request is one trace: ``n`` is always 1 (see DEVELOPERS.md:
    a seeded ``n > 1`` request crashes vLLM's CPU sampler), so fan-out happens above this."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = disabled
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False


@dataclass(frozen=True)
class GenerationDelta:
    """One streamed step of a request: the new tokens and the text they decode to."""

    token_ids: list[int]
    text: str
    finished: bool = False
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from the engine's prefix cache (0: none or unknown)


@runtime_checkable
class Tokenizer(Protocol):
    """The engine's own tokenizer: tails are sliced from its ids, so they are token-exact."""

    eos_token_id: int | None

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` without special tokens."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, special tokens skipped."""
        ...

    def apply_chat_template(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Prompt ids for a chat, ending with the generation prompt of the assistant turn."""
        ...


@runtime_checkable
class ReasoningParser(Protocol):
    """Which part of one generation is the model's thinking: vLLM's ``--reasoning-parser`` for
    the output of a single request (stateful: one per generation)."""

    def split(self, text: str, token_ids: Sequence[int]) -> tuple[str | None, str | None]:
        """``(reasoning, content)`` of a whole output; either is None where the output has none."""
        ...

    def delta(self, text: str, token_ids: Sequence[int], *, finished: bool) -> tuple[str, str]:
        """``(reasoning, content)`` of the next streamed delta, given in order (either may be empty)."""
        ...

    def reasoning_tokens(self, token_ids: Sequence[int]) -> int:
        """How many of a whole output's tokens are reasoning."""
        ...


@dataclass(frozen=True)
class OpenAIResult:
    """The answer to a plain OpenAI request: a JSON ``body`` with its ``status``, or (a
    streamed request that started) ``stream``, the data of its server-sent events one event at
    a time, unframed: each chunk's JSON text, then ``[DONE]`` (the service frames them). Error
    bodies are an ``{"error": {...}}`` envelope."""

    status: int = 200
    body: dict | None = None
    stream: AsyncIterator[str] | None = None


@runtime_checkable
class OpenAIServing(Protocol):
    """vLLM's own OpenAI server, request for request: what a plain (non-RSA) request gets.

    Each method takes the request's JSON as the client sent it and answers as ``vllm serve``
    would (tools, structured outputs, logprobs, ``n``, streaming and usage as vLLM does them).
    Cancelling a call, or the task reading its ``stream``, aborts its engine requests: the
    service relies on it when a client disconnects.
    """

    async def chat_completions(self, body: dict) -> OpenAIResult:
        """``POST /v1/chat/completions``."""
        ...

    async def completions(self, body: dict) -> OpenAIResult:
        """``POST /v1/completions``."""
        ...

    async def tokenize(self, body: dict) -> OpenAIResult:
        """``POST /tokenize``."""
        ...

    async def detokenize(self, body: dict) -> OpenAIResult:
        """``POST /detokenize``."""
        ...

    async def models(self) -> OpenAIResult:
        """``GET /v1/models``."""
        ...


@runtime_checkable
class Engine(Protocol):
    """What the algorithm and the HTTP service need from a model server."""

    model_name: str
    """The name the engine reports (``/v1/models``, responses): ``served_names[0]``."""
    served_names: list[str]
    """Every name a request may use in ``model``."""
    tokenizer: Tokenizer
    max_model_len: int
    openai: OpenAIServing
    """Plain requests, served by vLLM's own OpenAI layer (in process, or a replica's)."""

    def reasoning_parser(self, prompt_ids: Sequence[int]) -> ReasoningParser | None:
        """A fresh parser for the output of a request on ``prompt_ids``; None when the server
        has no reasoning parser (outputs are then all content)."""
        ...

    def generate(
        self, prompt_ids: Sequence[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[GenerationDelta]:
        """Stream the completion of ``prompt_ids``. The last delta has ``finished=True``.

        Closing the iterator early (``aclose``) or cancelling the task consuming it must abort
        the request in the engine: callers rely on it to free capacity on disconnect.
        """
        ...

    async def abort(self, request_id: str) -> None:
        """Stop ``request_id`` if it is still running; unknown ids are ignored."""
        ...

    def num_in_flight(self) -> int:
        """Requests submitted and not yet finished or aborted."""
        ...

    async def aclose(self) -> None:
        """Release what the engine holds (worker processes, connections, background tasks).

        Idempotent: whoever owns the engine closes it once it is done, and a second close (a
        wrapper closing what it wraps, an error path) must be harmless. Nothing is served after.
        """
        ...

    async def __aenter__(self: _Self) -> _Self:
        """``async with engine:`` scopes an engine's life; see :class:`AsyncCloseable`."""
        ...

    async def __aexit__(self, *exc_info: object) -> None:
        """Closes the engine (:meth:`aclose`), whether or not the block raised."""
        ...


class AsyncCloseable(ABC):
    """``async with x:`` for anything with an ``aclose()``: returns ``x``, closes it on exit.

    Engines inherit it so that the context-manager half of :class:`Engine` is written once.
    """

    @abstractmethod
    async def aclose(self) -> None:
        """Release what the object holds; idempotent."""

    async def __aenter__(self: _Self) -> _Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


@dataclass
class Completion:
    """A whole finished request, gathered from its deltas."""

    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0

    def add(self, delta: GenerationDelta) -> None:
        self.token_ids.extend(delta.token_ids)
        self.text += delta.text
        if delta.prompt_tokens:
            self.prompt_tokens = delta.prompt_tokens
        if delta.cached_tokens:
            self.cached_tokens = delta.cached_tokens
        if delta.finished:
            self.finish_reason = delta.finish_reason


class EngineError(RuntimeError):
    """The engine could not serve a request (dead engine, rejected request).

    ``status`` is the HTTP status the service answers with: subclasses set 503 for a
    temporarily unavailable engine, 400 for a request the engine rejected."""

    status: int = 500
    code: str = "engine_error"
