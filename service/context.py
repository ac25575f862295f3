"""What a request handler needs from the app: its engine, settings and runs, and the caller."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import Request

from mrsa.engine.base import Engine
from mrsa.service.errors import APIError
from mrsa.service.settings import Settings

if TYPE_CHECKING:  # the run manager's module reads the pipeline, which reads this one
    from mrsa.service.runs import RunManager


def engine_of(request: Request) -> Engine:
    return request.app.state.engine


def settings_of(request: Request) -> Settings:
    return request.app.state.settings


def runs_of(request: Request) -> RunManager:
    return request.app.state.runs


def owner_of(request: Request) -> str:
    """The hash of the caller's API key (set by service.auth), "" when keys are off."""
    return getattr(request.state, "owner", "")


def served(model: str, request: Request) -> Engine:
    """The engine, once ``model`` is a name it serves (404 otherwise)."""
    engine = engine_of(request)
    if model not in engine.served_names:
        raise APIError(
            f"The model `{model}` does not exist. Available: {', '.join(f'`{n}`' for n in engine.served_names)}.",
            status=404, param="model", code="model_not_found",
        )
    return engine
