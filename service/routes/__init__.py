"""The HTTP routes, by concern: chat completions, background runs, health and models."""

from fastapi import APIRouter

from mrsa.service.routes import chat, meta, runs

router = APIRouter()
for part in (chat, runs, meta):
    router.include_router(part.router)

__all__ = ["router"]
