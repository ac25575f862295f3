"""``/health`` and ``/v1/models``."""

from __future__ import annotations

from fastapi import APIRouter, Request

from mrsa.service.context import engine_of, settings_of
from mrsa.service.wire import ModelCard, ModelList

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> dict:
    engine = engine_of(request)
    return {"status": "ok", "model": engine.model_name, "in_flight": engine.num_in_flight()}


@router.get("/v1/models")
async def models(request: Request) -> ModelList:
    engine = engine_of(request)
    created = request.app.state.started
    efforts = list(settings_of(request).effort_presets)
    return ModelList(data=[
        ModelCard(id=name, created=created, max_model_len=engine.max_model_len, reasoning_efforts=efforts)
        for name in engine.served_names
    ])
