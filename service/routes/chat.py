"""``/v1/chat/completions``: with ``rsa`` (or a ``reasoning_effort`` of low..xhigh) a Markovian
RSA run (answered at once, streamed, or with ``background`` accepted as a run to follow under
``/v1/rsa/runs``); without, the request as ``vllm serve`` answers it (:mod:`mrsa.service.plain`).
Also vLLM's other plain endpoints: ``/v1/completions``, ``/tokenize``, ``/detokenize``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import TypeAdapter, ValidationError

from mrsa.service import plain, rsa_chat
from mrsa.service.context import engine_of, served, settings_of
from mrsa.service.errors import APIError
from mrsa.service.json_body import json_object
from mrsa.service.pipeline import prepare, wants_rsa
from mrsa.service.rsa_request import rsa_request
from mrsa.service.wire import ChunkFactory, completion_id, now

router = APIRouter()

OURS = ("rsa", "background")
"""Fields of ours that a plain request does not pass on to vLLM (null or false there)."""


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI for a route that reads its JSON itself (to route it before validating it)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


_OBJECT = {"type": "object", "additionalProperties": True}


_INT = TypeAdapter(int)


def _as_int(value: Any) -> int | None:
    """``value`` as the integer vLLM's request model would read from it (``"3"``, ``3.0`` and
    ``3`` alike), or None when it reads none (vLLM refuses it then)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return _INT.validate_python(value)
    except ValidationError:
        return None


def _plain_model(raw: dict, request: Request) -> None:
    """What the service itself checks of a plain request: a served model when it names one
    (none: the first, as vLLM does), and ``n`` within the operator's limit. The rest is
    vLLM's to validate."""
    model = raw.get("model")
    if isinstance(model, str):
        served(model, request)
    elif model is not None:
        raise APIError("`model` must be a string naming a served model", param="model", code="invalid_value")
    n = _as_int(raw.get("n"))
    limit = settings_of(request).max_n
    if n is not None and n > limit:
        raise APIError(f"n={n} exceeds this server's limit of {limit}", param="n")


@router.post("/v1/chat/completions", response_model=None,
             openapi_extra=_body({"$ref": "#/components/schemas/ChatCompletionRequest"}))
async def chat_completions(request: Request) -> Response:
    raw = await json_object(request)
    if not wants_rsa(settings_of(request), raw.get("rsa"), raw.get("reasoning_effort")):
        if raw.get("background"):
            raise APIError("background needs an rsa object: only RSA runs run in the background", param="background")
        _plain_model(raw, request)
        body = {k: v for k, v in raw.items() if k not in OURS}
        return await plain.forward(request, lambda: engine_of(request).openai.chat_completions(body))
    body = rsa_request(raw)
    engine = served(body.model, request)
    if body.background:
        return await rsa_chat.background(body, request)
    chunks = ChunkFactory(id=completion_id(), created=now(), model=engine.model_name)
    run, _ = prepare(body, settings_of(request), engine, chunks.id)
    return await rsa_chat.answer(body, run, chunks, request)


@router.post("/v1/completions", response_model=None, openapi_extra=_body(_OBJECT))
async def completions(request: Request) -> Response:
    """A text completion, as ``vllm serve`` answers it."""
    raw = await json_object(request)
    _plain_model(raw, request)
    return await plain.forward(request, lambda: engine_of(request).openai.completions(raw))


@router.post("/tokenize", response_model=None, openapi_extra=_body(_OBJECT))
async def tokenize(request: Request) -> Response:
    """Token ids of a prompt or of a chat (its template applied), as ``vllm serve`` answers."""
    raw = await json_object(request)
    return await plain.forward(request, lambda: engine_of(request).openai.tokenize(raw), admitted=False)


@router.post("/detokenize", response_model=None, openapi_extra=_body(_OBJECT))
async def detokenize(request: Request) -> Response:
    """The text of token ids, as ``vllm serve`` answers."""
    raw = await json_object(request)
    return await plain.forward(request, lambda: engine_of(request).openai.detokenize(raw), admitted=False)
