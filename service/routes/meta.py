"""``/health`` and ``/v1/models``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from mrsa.service.context import engine_of, settings_of
from mrsa.service.wire import ModelCard, ModelList

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> dict:
    engine = engine_of(request)
    return {"status": "ok", "model": engine.model_name, "in_flight": engine.num_in_flight()}


@router.get("/v1/models", response_model=None, responses={200: {"model": ModelList}})
async def models(request: Request) -> JSONResponse:
    """vLLM's model list (its cards: ``max_model_len``, ``root``, ``permission``...), each card
    also naming the ``reasoning_efforts`` this server runs as RSA; our own cards when the
    engine's layer has none."""
    engine = engine_of(request)
    efforts = list(settings_of(request).effort_presets)
    result = await engine.openai.models()
    cards = (result.body or {}).get("data") if result.status == 200 else None
    if not cards:
        created = request.app.state.started
        return JSONResponse(ModelList(data=[
            ModelCard(id=name, created=created, max_model_len=engine.max_model_len, reasoning_efforts=efforts)
            for name in engine.served_names
        ]).model_dump())
    return JSONResponse({**result.body, "data": [{**card, "reasoning_efforts": efforts} for card in cards]})
