"""The service's wire format: typed models of what it receives and sends, and the builders of
its stream chunks and progress events.

- requests: the OpenAI chat-completion request plus our ``rsa`` object (kept raw here and
  merged with the server's defaults by :func:`mrsa.service.pipeline.rsa_params`, so its errors
  can name ``rsa.<field>``); unknown top-level fields are ignored, as vLLM's server does;
- responses: ``chat.completion``, its usage, the model list;
- stream chunks (:class:`ChunkFactory`), RSA progress events, background run objects;
- the constructors that turn the algorithm's results (:mod:`mrsa.rsa.events`) into them.

Completions, usage, the model list and run objects are pydantic models;
stream chunks (:class:`ChunkFactory`) are dicts built here. Progress events are dicts each
event of :mod:`mrsa.rsa.events` writes itself (``event.wire()``, ``run.started.wire()``), so the
service, its run log and ``mrsa eval``'s in-process backend send one shape; the ``*_event``
functions below only pick which events a stream or a log carries. The error envelope is not
built here: :mod:`mrsa.service.errors` owns it (:class:`~mrsa.service.errors.APIError`, whose
``body()`` a run object's ``error`` and every error chunk carry), and a failed run's envelope
is :func:`mrsa.service.pipeline.failure`'s.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_serializer

from mrsa.rsa.events import (
    FinalStarted,
    NodeFinished,
    NodeStarted,
    RoundCompleted,
    RsaEvent,
    RsaResult,
    RunCompleted,
    Usage,
)
from mrsa.rsa.params import RsaParams
from mrsa.service.errors import ErrorBody
from mrsa.service.json_body import replacing_surrogates
from mrsa.service.settings import Effort

# The OpenAPI schema documents the rsa object field by field (every field optional: server
# defaults fill the rest), while the request keeps it raw so errors can name `rsa.<field>`.
# RsaParams' own defaults are left out: the server's defaults (settings) are what apply.
_RSA = RsaParams.model_json_schema()
RSA_SCHEMA = {
    **_RSA,
    "title": "RsaObject",
    "properties": {
        name: {k: v for k, v in prop.items() if k != "default"} for name, prop in _RSA["properties"].items()
    },
}


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1)
    user: str | None = None
    ignore_eos: bool = False  # vLLM extension
    include_reasoning: bool = True  # vLLM extension: false drops the answer's reasoning
    background: bool = Field(
        False, description="RSA only: return a run object at once; follow it under /v1/rsa/runs/{id}."
    )
    rsa: Annotated[dict[str, Any], WithJsonSchema(RSA_SCHEMA)] | None = Field(
        None, description="Markovian RSA parameters (see rsa.params.RsaParams); omit for plain."
    )
    reasoning_effort: Effort | None = Field(
        None, description="low..xhigh: an RSA run of the server's preset for that effort (fields of "
        "rsa override it); none, minimal: a plain generation."
    )

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> list[str] | None:
        if v is None:
            return None
        stops = [v] if isinstance(v, str) else v
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        return stops

    def chat(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]

    @property
    def completion_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    reasoning: str | None = None  # vLLM's field for a reasoning model's thinking (--reasoning-parser)


class Choice(BaseModel):
    index: int
    message: ResponseMessage
    finish_reason: str | None
    logprobs: None = None


class FailedTraceInfo(BaseModel):
    round: int
    index: int
    error: str


class RsaSummary(BaseModel):
    """The ``rsa`` block of a finished run (in the completion, and in ``run_completed``)."""

    seed: int
    rounds_completed: int
    calls: int
    stop_reason: str = Field(description="rounds, consensus, settled, max_population, budget or deadline.")
    final_mode: str
    method: str = Field("rsa", description="rsa, adaptive_vote or adaptive_rsa: the method that ran.")
    samples: int = Field(0, description="first-round traces the run counted (adaptive: where its vote stopped).")
    answer: str | None
    answers: list[list[str | None]]
    degraded: bool
    failed: list[FailedTraceInfo]
    trace: list[dict[str, Any]] | None = Field(None, description="every engine call, with return_trace")

    @model_serializer(mode="wrap")
    def _without_absent_trace(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if data.get("trace") is None:
            data.pop("trace", None)
        return data


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: UsageInfo
    rsa: RsaSummary | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "markovian-rsa"
    max_model_len: int
    reasoning_efforts: list[str] = Field(
        default_factory=list, description="reasoning_effort values this server runs as RSA presets."
    )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


@dataclass(frozen=True)
class ChunkFactory:
    """Builds the ``chat.completion.chunk`` objects of one response (same id, created and model
    on all of them). RSA progress rides in chunks with ``choices: []`` and an extra ``rsa``
    field, the shape of the usage chunk, so every OpenAI SDK's stream parser accepts them and
    ignores what it does not know."""

    id: str
    created: int
    model: str

    def _chunk(self, choices: list[dict], **extra: Any) -> dict:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }

    def role(self, index: int = 0) -> dict:
        return self._chunk(
            [{"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
        )

    def content(self, text: str, index: int = 0) -> dict:
        return self._chunk([{"index": index, "delta": {"content": text}, "finish_reason": None}])

    def reasoning(self, text: str, index: int = 0) -> dict:
        return self._chunk([{"index": index, "delta": {"reasoning": text}, "finish_reason": None}])

    def finish(self, reason: str, index: int = 0, **extra: Any) -> dict:
        return self._chunk([{"index": index, "delta": {}, "finish_reason": reason}], **extra)

    def progress(self, event: dict) -> dict:
        return self._chunk([], rsa=event)

    def usage(self, usage: dict) -> dict:
        return self._chunk([], usage=usage)


class RunProgress(BaseModel):
    nodes_finished: int
    nodes_total: int
    rounds: int
    attempts: int


RunStatus = Literal["queued", "running", "completed", "failed", "cancelled"]


class RunObject(BaseModel):
    """A background run as ``/v1/rsa/runs`` shows it."""

    id: str
    object: Literal["rsa.run"] = "rsa.run"
    created: int
    model: str
    status: RunStatus
    seed: int
    progress: RunProgress
    usage: UsageInfo
    result: ChatCompletion | None = None
    error: ErrorBody | None = None


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


# ------------------------------------------------------------------ from the algorithm's results


def usage_info(u: Usage) -> UsageInfo:
    return UsageInfo.model_validate(u.wire())


def rsa_summary(result: RsaResult, with_trace: bool) -> RsaSummary:
    return RsaSummary.model_validate(result.summary(with_trace))


def answer_message(result: RsaResult, include_reasoning: bool = True) -> ResponseMessage:
    """The final message as vLLM's server writes a reasoning parser's split: the thinking in
    ``reasoning``, the rest in ``content`` (None when the whole answer is thinking)."""
    reasoning = result.reasoning if include_reasoning else None
    content = None if result.reasoning is not None and not result.content else result.content
    return ResponseMessage(content=content, reasoning=reasoning)


def rsa_completion(
    id: str, created: int, model: str, result: RsaResult, with_trace: bool, include_reasoning: bool = True
) -> ChatCompletion:
    """The ``chat.completion`` of a finished run (a lone surrogate in the model's text as
    U+FFFD: UTF-8 cannot carry it)."""
    completion = ChatCompletion(
        id=id,
        created=created,
        model=model,
        choices=[
            Choice(index=0, message=answer_message(result, include_reasoning), finish_reason=result.finish_reason)
        ],
        usage=usage_info(result.usage),
        rsa=rsa_summary(result, with_trace),
    )
    dumped = completion.model_dump()
    repaired = replacing_surrogates(dumped)
    return completion if repaired is dumped else ChatCompletion(**repaired)


def planned_nodes(params: dict[str, Any]) -> tuple[int, int]:
    """(traces, rounds) a run of these rsa fields may launch at most: an adaptive run's first
    round may grow to max_population, and an adaptive vote has that round only."""
    method, population = params.get("method", "rsa"), params["population"]
    first = (params.get("max_population") or population) if method != "rsa" else population
    rounds = 1 if method == "adaptive_vote" else params["rounds"]
    return first + population * (rounds - 1), rounds


def summary_event(result: RsaResult, with_trace: bool) -> dict[str, Any]:
    """The ``run_completed`` progress event: the summary (without a null trace)."""
    return RunCompleted(result).wire(with_trace)


def started_event(event: NodeStarted) -> dict[str, Any]:
    """``node_started``: sent on live streams only (a resumed run would repeat them)."""
    return event.wire()


def progress_event(event: RsaEvent) -> dict[str, Any] | None:
    """The ``rsa`` progress object of an event, as streams and the run event log carry it
    (None for what is not logged progress: node starts, content deltas, the result)."""
    return event.wire() if isinstance(event, NodeFinished | RoundCompleted | FinalStarted) else None
