"""Server configuration: environment variables ``MRSA_*`` and CLI flags, one model.

Nested groups use ``__``: ``MRSA_ENGINE__MAX_MODEL_LEN=8192``, ``MRSA_RSA__POPULATION=16``,
``MRSA_LIMITS__MAX_ROUNDS=32``. CLI flags override the environment.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from mrsa.engine.config import EngineConfig
from mrsa.rsa.params import RsaLimits, RsaParams


class RsaDefaults(BaseModel):
    """Server defaults for the request's ``rsa`` object: sized so a default request fits the
    embedded default model (4096-token context) and finishes in well under a minute on a CPU."""

    population: int = 8
    k: int = 3
    rounds: int = 3
    tail_tokens: int = 256
    trace_max_tokens: int = 512
    selection: str = "auto"
    schedule: str = "dataflow"


class AdmissionSettings(BaseModel):
    """How much work runs at once; beyond running + queued, requests get 429 with Retry-After."""

    max_running_runs: int = Field(4, ge=1, description="M: RSA runs executing at once.")
    max_queued_runs: int = Field(16, ge=0, description="Q: RSA runs waiting for a slot.")
    max_running_requests: int = Field(64, ge=1, description="Plain completions executing at once.")
    max_queued_requests: int = Field(256, ge=0, description="Plain completions waiting for a slot.")
    retry_after_s: int = Field(2, ge=1, description="Retry-After of a 429.")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MRSA_", env_nested_delimiter="__", extra="ignore"
    )

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_level: str = "info"
    max_n: int = Field(16, ge=1, description="Largest `n` of a plain (non-RSA) request.")
    engine: EngineConfig = EngineConfig()
    rsa: RsaDefaults = RsaDefaults()
    limits: RsaLimits = RsaLimits()
    admission: AdmissionSettings = AdmissionSettings()
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Larger request bodies get 413 unread.")
    api_keys: SecretStr | None = Field(
        None, description="Comma-separated API keys; set = every endpoint but /health needs one."
    )
    api_key_file: Path | None = Field(None, description="A file of API keys, one per line (# comments).")
    store_path: Path | None = Field(
        None,
        description="SQLite file of background runs; `mrsa serve` defaults it to "
        "<cache>/runs-<port>.sqlite3, unset elsewhere = a temporary file (no resume).",
    )

    def default_store_path(self) -> Path:
        """Where ``mrsa serve`` keeps background runs unless ``store_path`` says otherwise."""
        cache = os.environ.get("MRSA_CACHE_DIR") or self.engine.cache_dir or "~/.cache/markovian-rsa"
        return Path(cache).expanduser() / f"runs-{self.port}.sqlite3"

    def rsa_params(self, overrides: dict) -> RsaParams:
        """Server defaults, then the client's values: raises pydantic's ValidationError."""
        return RsaParams(**{**self.rsa.model_dump(), **overrides})
