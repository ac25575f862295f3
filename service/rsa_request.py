"""The body of an RSA chat completion: every field a client sends is honoured or refused.

A plain request goes to vLLM's layer as it is; an RSA run reads only the fields of
:class:`~mrsa.service.wire.ChatCompletionRequest`. Any other field (``tools``,
``response_format``, ``logprobs``, penalties...) would be silently dropped, so it is a 400
that names it, unless its value asks for nothing (null, or the OpenAI default: ``logprobs:
false``, a penalty of 0...). Messages carry only ``role``, ``content`` and ``name``.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from mrsa.service.errors import APIError, from_validation_error
from mrsa.service.wire import ChatCompletionRequest

HONOURED = frozenset(ChatCompletionRequest.model_fields)
"""The fields an RSA run reads (``n`` and ``stop`` among them, refused by value in rsa_chat)."""

NEUTRAL: dict[str, Any] = {
    "logprobs": False,
    "top_logprobs": 0,
    "frequency_penalty": 0,
    "presence_penalty": 0,
    "repetition_penalty": 1,
    "tools": [],
    "tool_choice": "none",
    "parallel_tool_calls": True,
    "response_format": {"type": "text"},
    "store": False,
    "metadata": {},
}
"""Fields whose value here asks for nothing an RSA run would have to do."""

MESSAGE_FIELDS = frozenset({"role", "content", "name"})


def rsa_request(raw: dict) -> ChatCompletionRequest:
    """``raw`` as the request model of an RSA run, or the 400 naming the first field it
    cannot honour."""
    for name, value in raw.items():
        if name in HONOURED or value is None or (name in NEUTRAL and NEUTRAL[name] == value):
            continue
        raise APIError(
            f"`{name}` is not supported with rsa (a run honours: {', '.join(sorted(HONOURED))}); "
            "send the request without rsa (and without a reasoning_effort that maps to rsa) for vLLM's "
            "full protocol.",
            param=name,
            code="unsupported_parameter",
        )
    messages = raw.get("messages")
    for i, message in enumerate(messages if isinstance(messages, list) else ()):  # else validation's 400
        if isinstance(message, dict):
            extra = sorted(k for k, v in message.items() if k not in MESSAGE_FIELDS and v is not None)
            if extra:
                raise APIError(
                    f"`messages[{i}].{extra[0]}` is not supported with rsa (messages carry role, content, name)",
                    param=f"messages.{i}.{extra[0]}",
                    code="unsupported_parameter",
                )
    try:
        return ChatCompletionRequest.model_validate(raw)
    except ValidationError as exc:
        raise from_validation_error(exc) from None
