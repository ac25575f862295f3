"""``/v1/chat/completions``: a plain completion, or with ``rsa`` (or a ``reasoning_effort`` of
low..xhigh) a Markovian RSA run (answered at once, streamed, or with ``background`` accepted
as a run to follow under ``/v1/rsa/runs``)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from mrsa.service import plain, rsa_chat
from mrsa.service.context import served, settings_of
from mrsa.service.errors import APIError
from mrsa.service.routes.runs import submit_run
from mrsa.service.wire import ChatCompletionRequest, ChunkFactory, completion_id, now

router = APIRouter()


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    engine = served(body.model, request)
    rsa = settings_of(request).rsa_object(body.rsa, body.reasoning_effort)
    if rsa != body.rsa:
        body = body.model_copy(update={"rsa": rsa})
    if body.background:
        if body.rsa is None:
            raise APIError("background needs an rsa object: only RSA runs run in the background", param="background")
        return await submit_run(body, request, engine)
    chunks = ChunkFactory(id=completion_id(), created=now(), model=engine.model_name)
    if body.rsa is not None:
        return await rsa_chat.complete(body, request, engine, chunks)
    return await plain.complete(body, request, engine, chunks)
