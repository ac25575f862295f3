"""The HTTP routes, by concern: chat completions, responses, background runs, health and models."""

from fastapi import APIRouter

from mrsa.service.routes import chat, meta, responses, runs

router = APIRouter()
for part in (chat, responses, runs, meta):
    router.include_router(part.router)

__all__ = ["router"]
