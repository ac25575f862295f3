"""Server configuration: environment variables ``MRSA_*`` and CLI flags, one model.

Nested groups use ``__``: ``MRSA_ENGINE__MAX_MODEL_LEN=8192``, ``MRSA_RSA__POPULATION=16``,
``MRSA_LIMITS__MAX_ROUNDS=32``. CLI flags override the environment.
"""

from __future__ import annotations

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine.config import EngineConfig
from rsa.params import RsaLimits, RsaParams


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

    def rsa_params(self, overrides: dict) -> RsaParams:
        """Server defaults, then the client's values: raises pydantic's ValidationError."""
        return RsaParams(**{**self.rsa.model_dump(), **overrides})
