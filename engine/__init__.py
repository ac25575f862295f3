"""Engines behind the :class:`engine.base.Engine` protocol."""

from __future__ import annotations

from pathlib import Path

from mrsa.engine.base import Engine, Tokenizer
from mrsa.engine.config import EngineConfig


def create_engine(config: EngineConfig, cache_dir: Path | str | None = None) -> Engine:
    """The remote-replica engine when ``config.upstreams`` is set, else the embedded vLLM
    engine (vLLM is imported only then, lazily). ``cache_dir``: where built-in models are
    provisioned (default ``~/.cache/markovian-rsa``)."""
    if config.upstreams:
        from mrsa.engine.remote import RemoteEngine

        return RemoteEngine(config)
    from mrsa.engine.local import LocalEngine

    return LocalEngine(config, cache_dir)


def load_tokenizer(config: EngineConfig, cache_dir: Path | str | None = None) -> tuple[Tokenizer, str]:
    """The tokenizer of the model ``config`` names and the name it is served under, without
    starting an engine (a built-in model is provisioned first, as an engine would)."""
    from mrsa.engine.local import resolve_model
    from mrsa.engine.tokenizer import HFTokenizer

    checkpoint, name = resolve_model(config, cache_dir)
    return HFTokenizer(checkpoint), name
