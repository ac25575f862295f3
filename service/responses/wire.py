"""The wire format of ``/v1/responses``: the request, the ``response`` object and its parts,
as OpenAI's SDKs parse them.

A request becomes the chat our runs already execute (:meth:`ResponseRequest.conversation`);
a finished run becomes a response object (:func:`response_object`) whose ``output`` is a
reasoning item (only where the model wrote a ``<think>`` block) and the message item.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_serializer

from mrsa.rsa.tails import THINK_CLOSE, THINK_OPEN
from mrsa.service.errors import APIError, ErrorBody
from mrsa.service.settings import Effort
from mrsa.service.wire import RSA_SCHEMA, UsageInfo

ResponseStatus = Literal["queued", "in_progress", "completed", "failed", "cancelled", "incomplete"]


# ------------------------------------------------------------------------ request


class InputText(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["input_text", "output_text", "text"]
    text: str


class InputMessage(BaseModel):
    """A message item of ``input`` (``type`` may be left out, as the SDKs allow)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputText]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


def _text_as_message(value: Any) -> Any:
    """``input: "..."`` is one user message (so errors name ``input.0.role``, not a union member)."""
    return [{"role": "user", "content": value}] if isinstance(value, str) else value


Input = Annotated[
    list[InputMessage],
    BeforeValidator(_text_as_message, json_schema_input_type=Annotated[str, Field(min_length=1)] | list[InputMessage]),
    Field(min_length=1),
]


class ReasoningConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")

    effort: Effort | None = Field(
        None, description="low..xhigh: an RSA run of the server's preset for that effort; none, minimal: plain."
    )
    summary: str | None = None  # accepted; the summary is the model's own <think> text


IGNORED = frozenset({"user", "safety_identifier", "prompt_cache_key", "prompt_cache_retention", "service_tier",
                     "stream_options"})
"""Fields that change nothing an answer holds (identifiers, cache and delivery hints)."""

NEUTRAL: dict[str, list[Any]] = {
    "tools": [[]],
    "tool_choice": ["none", "auto"],
    "parallel_tool_calls": [True, False],
    "text": [{"format": {"type": "text"}}],
    "truncation": ["disabled"],
    "include": [[]],
    "top_logprobs": [0],
}
"""Other fields of OpenAI's, with the values that ask for nothing a text-only run would do."""


class ResponseRequest(BaseModel):
    """``POST /v1/responses``: OpenAI's fields (text input only) plus our ``rsa`` object. Any
    other field is refused by name (:meth:`check_supported`) unless it asks for nothing: nothing
    is silently dropped, as in RSA chat completions."""

    model_config = ConfigDict(extra="allow")

    model: str
    input: Input
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    reasoning: ReasoningConfig | None = None
    stream: bool = False
    background: bool = False
    store: bool = True
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = Field(None, max_length=16)
    previous_response_id: str | None = None
    rsa: Annotated[dict[str, Any], WithJsonSchema(RSA_SCHEMA)] | None = Field(
        None, description="Markovian RSA parameters (as in chat completions); omit for plain."
    )

    def check_supported(self) -> None:
        """Raise the 400 naming the first field this server would have to ignore."""
        for name, value in (self.model_extra or {}).items():
            if value is None or name in IGNORED or value in NEUTRAL.get(name, []):
                continue
            raise APIError(
                f"`{name}` is not supported here (text responses honour: "
                f"{', '.join(sorted(type(self).model_fields))}).",
                param=name, code="unsupported_parameter",
            )

    @property
    def effort(self) -> str | None:
        return None if self.reasoning is None else self.reasoning.effort

    def input_messages(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.text()} for m in self.input]

    def echo(self, rsa: dict | None) -> dict[str, Any]:
        """What the response object repeats of its request (kept with a stored response)."""
        return {
            "instructions": self.instructions,
            "metadata": self.metadata or {},
            "max_output_tokens": self.max_output_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "reasoning": {"effort": self.effort, "summary": None},
            "previous_response_id": self.previous_response_id,
            "background": self.background,
            "store": self.store,
            "rsa": rsa is not None,
        }


def chat_of(instructions: str | None, conversation: list[dict[str, str]]) -> list[dict[str, str]]:
    """The chat a run answers: the instructions as the system message, then the conversation
    (the previous response's, if any, then this input). Instructions are never inherited."""
    return ([{"role": "system", "content": instructions}] if instructions else []) + conversation


# ------------------------------------------------------------------------ response


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class OutputMessage(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: Literal["in_progress", "completed", "incomplete"] = "completed"
    content: list[OutputText]


class SummaryText(BaseModel):
    type: Literal["summary_text"] = "summary_text"
    text: str


class ReasoningItem(BaseModel):
    id: str
    type: Literal["reasoning"] = "reasoning"
    status: Literal["in_progress", "completed", "incomplete"] = "completed"
    summary: list[SummaryText]


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"] = "max_output_tokens"


class ResponseError(BaseModel):
    code: str
    message: str


class ResponseObject(BaseModel):
    """OpenAI's ``response``, with the fields a text-only server has."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    completed_at: int | None = None
    status: ResponseStatus
    model: str
    output: list[OutputMessage | ReasoningItem]
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    reasoning: dict[str, Any] | None = None
    previous_response_id: str | None = None
    background: bool = False
    store: bool = True
    parallel_tool_calls: bool = False
    tool_choice: Literal["none", "auto", "required"] = "none"
    tools: list[Any] = Field(default_factory=list)
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    truncation: Literal["disabled"] = "disabled"
    usage: ResponseUsage | None = None
    rsa: dict[str, Any] | None = Field(
        None, description="An RSA response's run summary (method, stop_reason, answers...), as chat's rsa block."
    )

    @model_serializer(mode="wrap")
    def _without_absent_rsa(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if data.get("rsa") is None:
            data.pop("rsa", None)
        return data


def response_id() -> str:
    return f"resp_{uuid.uuid4().hex}"


def item_ids(resp_id: str) -> tuple[str, str]:
    """The ids of a response's reasoning and message items (fixed by its id, so a replayed
    stream and the stored object agree)."""
    suffix = resp_id.removeprefix("resp_")
    return f"rs_{suffix}", f"msg_{suffix}"


def split_reasoning(text: str) -> tuple[str | None, str]:
    """``(reasoning, message)`` of a model's text: a leading ``<think>...</think>`` block is the
    reasoning (None without one; an unclosed block is all reasoning)."""
    stripped = text.lstrip()
    if not stripped.startswith(THINK_OPEN):
        return None, text
    body = stripped[len(THINK_OPEN):]
    end = body.find(THINK_CLOSE)
    if end < 0:
        return body, ""
    return body[:end], body[end + len(THINK_CLOSE):].lstrip()


def join_reasoning(reasoning: str | None, content: str | None) -> str:
    """A reasoning parser's split as the text :func:`split_reasoning` reads back: the thinking
    as a leading ``<think>`` block, then the content."""
    if reasoning is None:
        return content or ""
    return f"{THINK_OPEN}{reasoning}{THINK_CLOSE}{content or ''}"


def output_items(resp_id: str, text: str, status: str = "completed") -> list[OutputMessage | ReasoningItem]:
    reasoning, message = split_reasoning(text)
    rs_id, msg_id = item_ids(resp_id)
    items: list[OutputMessage | ReasoningItem] = []
    if reasoning is not None:
        items.append(ReasoningItem(id=rs_id, summary=[SummaryText(text=reasoning)]))
    items.append(OutputMessage(id=msg_id, status=status, content=[OutputText(text=message)]))  # type: ignore[arg-type]
    return items


def response_usage(usage: UsageInfo | dict, plain: bool) -> ResponseUsage:
    """A chat usage as the Responses API counts it (a plain generation reasons in no tokens)."""
    u = usage if isinstance(usage, UsageInfo) else UsageInfo(**usage)
    cached = u.prompt_tokens_details.cached_tokens if u.prompt_tokens_details else 0
    reasoning = u.completion_tokens_details.reasoning_tokens if u.completion_tokens_details and not plain else 0
    return ResponseUsage(
        input_tokens=u.prompt_tokens,
        input_tokens_details=InputTokensDetails(cached_tokens=cached),
        output_tokens=u.completion_tokens,
        output_tokens_details=OutputTokensDetails(reasoning_tokens=reasoning),
        total_tokens=u.prompt_tokens + u.completion_tokens,
    )


def response_object(
    resp_id: str, created_at: int, model: str, echo: dict[str, Any], status: str, *,
    text: str | None = None, usage: UsageInfo | dict | None = None, error: ErrorBody | dict | None = None,
    completed_at: int | None = None, rsa: dict[str, Any] | None = None,
) -> ResponseObject:
    """The response object: ``text`` (the run's answer) once it has one; ``status`` as the
    run's (``incomplete`` when the answer hit ``max_output_tokens``)."""
    err = None
    if error is not None:
        body = error if isinstance(error, ErrorBody) else ErrorBody(**error)
        err = ResponseError(code="server_error" if body.type == "server_error" else (body.code or "server_error"),
                            message=body.message)
    incomplete = status == "incomplete"
    return ResponseObject(
        id=resp_id,
        created_at=created_at,
        completed_at=completed_at,
        status=status,  # type: ignore[arg-type]
        model=model,
        output=[] if text is None else output_items(resp_id, text, "incomplete" if incomplete else "completed"),
        error=err,
        incomplete_details=IncompleteDetails() if incomplete else None,
        instructions=echo.get("instructions"),
        metadata=echo.get("metadata") or {},
        max_output_tokens=echo.get("max_output_tokens"),
        temperature=echo.get("temperature"),
        top_p=echo.get("top_p"),
        reasoning=echo.get("reasoning"),
        previous_response_id=echo.get("previous_response_id"),
        background=bool(echo.get("background")),
        store=echo.get("store", True),
        usage=None if usage is None else response_usage(usage, plain=not echo.get("rsa")),
        rsa=rsa if echo.get("rsa") else None,
    )

