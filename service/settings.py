"""Server configuration: one model, read from CLI flags, ``MRSA_*`` variables and defaults.

Precedence, everywhere: a flag > its ``MRSA_*`` variable > the default. Nested groups use ``__``
in variables (``MRSA_ENGINE__MAX_MODEL_LEN=8192``, ``MRSA_RSA__POPULATION=16``) and ``.`` in
flags (``--rsa.population 16``); the engine's most used flags also have vLLM's short names
(``--model``, ``--max-model-len``). ``mrsa serve``'s flags are derived from this model
(mrsa/cli.py), so a setting is written once. Values are validated at start: a bad one (or an
unknown ``rsa`` field) stops the server before it serves anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mrsa.engine.config import EngineConfig
from mrsa.rsa.params import RsaLimits, RsaParams
from mrsa.service.presets import PresetEffort, load_presets, shipped_presets


class AdmissionSettings(BaseModel):
    """How much work runs at once; beyond running + queued, requests get 429 with Retry-After."""

    max_running_runs: int = Field(4, ge=1, description="M: RSA runs executing at once.")
    max_queued_runs: int = Field(16, ge=0, description="Q: RSA runs waiting for a slot.")
    max_running_requests: int = Field(64, ge=1, description="Plain completions executing at once.")
    max_queued_requests: int = Field(256, ge=0, description="Plain completions waiting for a slot.")
    retry_after_s: int = Field(2, ge=1, description="Retry-After of a 429.")
    key_share: float = Field(
        0.5, gt=0, le=1,
        description="The most of each pool's slots and queue places one API key holds while others "
        "wait (keys off: every caller is one tenant, which holds everything).",
    )


class HttpSettings(BaseModel):
    """Connections as ``mrsa serve``'s uvicorn holds them: how long a client may take, how many
    it may keep open (service/connections.py)."""

    request_read_timeout_s: float = Field(
        15, gt=0, description="A request's headers and body must arrive within this many seconds "
        "of the connection waiting for it (new, or kept alive after a response); else it is closed.",
    )
    keep_alive_s: int = Field(5, ge=1, description="An idle kept-alive connection is closed after this.")
    max_connections: int = Field(
        1000, ge=1, description="Open client connections at most (lowered to fit the open-file "
        "limit); one more closes the oldest connection still waiting for a request, or itself.",
    )
    max_header_bytes: int = Field(16384, ge=1024, description="A larger request line and headers get 400.")
    backlog: int = Field(2048, ge=1, description="Connections the kernel queues before they are accepted.")


Effort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "auto"]
RsaEffort = PresetEffort

# OpenAI's reasoning_effort as RSA work: each preset overrides these rsa fields of the server's
# defaults ("medium" is the defaults themselves); "none" and "minimal" are plain generations.
# "auto" spends samples only while the vote is open (adaptive voting: Adaptive-Consistency,
# arXiv 2305.11860). These are the fallback: a preset file measured on the served model
# (`presets`, or a built-in model's shipped file) replaces the efforts it names.
EFFORT_PRESETS: dict[str, dict[str, Any]] = {
    "low": {"population": 2, "k": 2, "rounds": 2},
    "medium": {},
    "high": {"population": 8, "k": 2, "rounds": 3},
    "xhigh": {"population": 16, "k": 4, "rounds": 4},
    "auto": {"method": "adaptive_vote", "population": 4, "wave": 4, "max_population": 16},
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MRSA_", env_nested_delimiter="__", extra="ignore"
    )

    host: str = Field("127.0.0.1", description="Interface to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on.")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    log_format: Literal["json", "text"] = Field(
        "json", description="json: one object per line with request and run ids; text: plain lines."
    )
    max_n: int = Field(16, ge=1, description="Largest `n` of a plain (non-RSA) request.")
    engine: EngineConfig = EngineConfig()
    rsa: RsaParams = Field(
        RsaParams(), description="Server defaults of the request's rsa object (any field but seed)."
    )
    effort_presets: dict[RsaEffort, dict[str, Any]] = Field(
        default_factory=lambda: {k: dict(v) for k, v in EFFORT_PRESETS.items()},
        description="reasoning_effort low..xhigh, auto as rsa fields over the server's rsa defaults.",
    )
    presets: Path | None = Field(
        None,
        description="A preset file (JSON, as `mrsa calibrate` writes it) whose efforts replace "
        "effort_presets'; unset: the served model's shipped file, if it has one.",
    )
    default_effort: Effort | None = Field(
        None, description="The reasoning_effort of a request that sends none (unset: plain unless rsa)."
    )
    limits: RsaLimits = RsaLimits()
    admission: AdmissionSettings = AdmissionSettings()
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Larger request bodies get 413 unread.")
    http: HttpSettings = HttpSettings()
    shutdown_grace_s: float = Field(
        10, ge=0, description="On SIGTERM/Ctrl-C every stream ends at once with a closing event and "
        "requests not yet answered get 503; work still running this long after is cancelled.",
    )
    allowed_origins: list[str] = Field(
        default_factory=list, description="Browser origins (scheme://host[:port]) besides the server's "
        "own that may send POST/DELETE requests; '*' allows any. Others get 403.",
    )
    api_keys: SecretStr | None = Field(
        None, description="Comma-separated API keys; set = every endpoint but /health needs one."
    )
    api_key_file: Path | None = Field(None, description="A file of API keys, one per line (# comments).")
    cache_dir: Path = Field(
        Path("~/.cache/markovian-rsa"),
        description="Built-in models are provisioned here; mrsa serve keeps its run store here too.",
    )
    store_path: Path | None = Field(
        None,
        description="SQLite file of background runs; `mrsa serve` defaults it to "
        "<cache_dir>/runs-<port>.sqlite3, unset elsewhere = a temporary file (no resume).",
    )
    store_ttl_s: float = Field(
        7 * 24 * 3600, gt=0,
        description="Stored responses and background runs are removed this long after they were "
        "created (responses) or ended (runs); then they answer 404.",
    )
    store_url: str | None = Field(
        None,
        description="Run store: unset = the SQLite file (store_path), one server; postgresql://... = a "
        "database that API replicas share, each run leased to the replica executing it.",
    )
    store_lease_s: float = Field(
        15.0, gt=0,
        description="PostgreSQL store: how long a replica holds a run without renewing (renewed every "
        "third of it); a dead replica's runs resume elsewhere this long after it died.",
    )

    @model_validator(mode="after")
    def _server_defaults_are_sound(self) -> Settings:
        if self.rsa.seed is not None:
            raise ValueError("rsa.seed has no server default: a fixed seed would make every run the same")
        if self.presets is not None:
            self.effort_presets = {**self.effort_presets, **load_presets(self.presets).efforts}
        for effort, preset in self.effort_presets.items():
            if "seed" in preset:
                raise ValueError(f"effort_presets.{effort}: a preset cannot fix the seed")
            RsaParams(**{**self.rsa.model_dump(), **preset})  # an unknown or bad field stops the start
        return self

    def for_model(self, model: str) -> Settings:
        """These settings for the served ``model``: with its shipped preset file's efforts when
        no ``presets`` file was given and one is shipped for it (checked as a given file is)."""
        shipped = shipped_presets(model) if self.presets is None else None
        if shipped is None:
            return self
        efforts = {**self.effort_presets, **load_presets(shipped).efforts}
        for preset in efforts.values():
            RsaParams(**{**self.rsa.model_dump(), **preset})
        return self.model_copy(update={"effort_presets": efforts})

    def default_store_path(self) -> Path:
        """Where ``mrsa serve`` keeps background runs unless ``store_path`` says otherwise."""
        return self.cache_dir.expanduser() / f"runs-{self.port}.sqlite3"

    def rsa_params(self, overrides: dict) -> RsaParams:
        """Server defaults, then the client's values: raises pydantic's ValidationError (a
        request's values are merged in :func:`mrsa.service.pipeline.rsa_params`).

        A k the client did not send follows a small population (population 2 with the default
        k of 3 runs with k 2); only an explicit k larger than the population is an error."""
        values = {**self.rsa.model_dump(exclude={"seed"}), **overrides}
        population = values.get("population")
        if "k" not in overrides and isinstance(population, int) and not isinstance(population, bool):
            values["k"] = min(values["k"], population)  # a population of the wrong type: RsaParams says so
        return RsaParams(**values)
