"""Engines behind the :class:`engine.base.Engine` protocol."""

from __future__ import annotations

from engine.base import Engine
from engine.config import EngineConfig


def create_engine(config: EngineConfig) -> Engine:
    """The embedded vLLM engine for ``config`` (vLLM is imported only here, lazily)."""
    from engine.local import LocalEngine

    return LocalEngine(config)
