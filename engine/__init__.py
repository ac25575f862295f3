"""Engines behind the :class:`engine.base.Engine` protocol."""

from __future__ import annotations

from mrsa.engine.base import Engine
from mrsa.engine.config import EngineConfig


def create_engine(config: EngineConfig) -> Engine:
    """The remote-replica engine when ``config.upstreams`` is set, else the embedded vLLM
    engine (vLLM is imported only then, lazily)."""
    if config.upstreams:
        from mrsa.engine.remote import RemoteEngine

        return RemoteEngine(config)
    from mrsa.engine.local import LocalEngine

    return LocalEngine(config)
