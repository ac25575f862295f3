"""Parameters of one Markovian RSA run, and the server-side limits they are checked against.

The request's ``rsa`` object is validated into :class:`RsaParams` (server defaults fill what the
client left out); :meth:`RsaParams.check_limits` then applies the operator's limits. Errors name
the offending field so the service can put it in the OpenAI error envelope's ``param``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

Selection = Literal["aggregate", "majority", "auto"]
AggregationPrompt = Literal["annotated", "bare", "compare"]
Schedule = Literal["dataflow", "rounds"]
FinalVote = Literal["last", "all"]
Method = Literal["rsa", "adaptive_vote", "adaptive_rsa"]
StopRule = Literal["posterior", "supermajority"]


class RsaParamError(ValueError):
    """A parameter is out of range for this server; ``param`` is the field's name."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


class RsaLimits(BaseModel):
    """Operator limits: the most work one request may ask for."""

    model_config = ConfigDict(frozen=True)

    max_population: int = Field(64, ge=1)
    max_rounds: int = Field(16, ge=1)
    max_tail_tokens: int = Field(32768, ge=1)
    max_trace_tokens: int = Field(65536, ge=1)


class RsaParams(BaseModel):
    """One run's parameters. Names follow the design notes: N = population, K = k,
    T = rounds (counting the first sampling round), tau = tail_tokens."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    population: int = Field(4, ge=1, description="N: traces per round.")
    k: int = Field(2, ge=1, description="K: tails per aggregation prompt (1 = refine).")
    rounds: int = Field(2, ge=1, description="T: rounds, the first sampling round included.")
    tail_tokens: int = Field(448, ge=1, description="tau: tokens kept from each trace.")
    trace_max_tokens: int = Field(448, ge=1, description="max new tokens of one trace.")
    final_max_tokens: int | None = Field(
        None, ge=1, description="max new tokens of the final answer (default trace_max_tokens)."
    )
    budget_tokens: int | None = Field(
        None, ge=1, description="all generated tokens of the run, final answer included."
    )
    deadline_s: float | None = Field(None, gt=0, description="wall-clock limit for new launches.")
    selection: Selection = "auto"
    final_vote: FinalVote = Field(
        "last",
        description="the traces a final majority vote counts: the last round's, or every round's.",
    )
    aggregation_prompt: AggregationPrompt = Field(
        "compare",
        description="annotated: each candidate is headed by its final answer, or marked unfinished; "
        "bare: the candidates' text only; compare: the problem, the candidates as attempts, what "
        "they concluded side by side, and a request to solve it anew checking every step.",
    )
    temperature: float = Field(0.6, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    final_temperature: float = Field(0.6, ge=0, le=2)
    final_top_p: float = Field(0.95, gt=0, le=1)
    seed: int | None = Field(None, ge=0, description="fixes subset draws and every trace's seed.")
    schedule: Schedule = "dataflow"
    early_stop: Literal["consensus"] | None = None
    method: Method = Field(
        "rsa",
        description="rsa: the planned rounds; adaptive_vote: samples in waves, a vote that stops once "
        "settled (stop_rule); adaptive_rsa: a round settled by stop_rule ends the run, one that is "
        "not grows (up to max_population) and is aggregated.",
    )
    wave: int = Field(4, ge=1, description="adaptive: samples added per wave after the first (population).")
    max_population: int | None = Field(
        None, ge=1,
        description="adaptive: the most samples the first round may grow to (default: population, no growth).",
    )
    stop_rule: StopRule = Field(
        "posterior",
        description="adaptive: posterior: P(the leader stays ahead of the runner-up) under a Beta posterior "
        "of their counts; supermajority: the leader's share of the counted samples.",
    )
    stop_threshold: float = Field(
        0.95, gt=0, le=1, description="adaptive: the stop rule's value at which the vote is settled."
    )
    return_trace: bool = False
    ignore_eos: bool = Field(False, description="generate exactly max tokens (benchmarks).")

    @model_validator(mode="after")
    def _k_within_population(self) -> RsaParams:
        if self.k > self.population:
            raise ValueError(f"k ({self.k}) must not exceed population ({self.population})")
        return self

    @field_validator("max_population")
    @classmethod
    def _grows_from_population(cls, value: int | None, info: ValidationInfo) -> int | None:
        population = info.data.get("population")
        if value is not None and isinstance(population, int) and value < population:
            raise ValueError(f"max_population ({value}) must not be below population ({population})")
        return value

    @property
    def adaptive(self) -> bool:
        return self.method != "rsa"

    @property
    def first_width(self) -> int:
        """The most traces round 0 may hold: max_population for an adaptive run, else population."""
        return (self.max_population or self.population) if self.adaptive else self.population

    @property
    def votes_only(self) -> bool:
        """The final answer is a vote (no final engine call, so no budget reserve)."""
        return self.selection == "majority" or self.method == "adaptive_vote"

    @property
    def final_tokens(self) -> int:
        return self.final_max_tokens or self.trace_max_tokens

    def check_limits(self, limits: RsaLimits) -> None:
        """Raise :class:`RsaParamError` for the first value over an operator limit."""
        for name, value, limit in (
            ("population", self.population, limits.max_population),
            ("max_population", self.max_population or 0, limits.max_population),
            ("rounds", self.rounds, limits.max_rounds),
            ("tail_tokens", self.tail_tokens, limits.max_tail_tokens),
            ("trace_max_tokens", self.trace_max_tokens, limits.max_trace_tokens),
            ("final_max_tokens", self.final_tokens, limits.max_trace_tokens),
        ):
            if value > limit:
                raise RsaParamError(name, f"{name}={value} exceeds this server's limit of {limit}")
        if self.budget_tokens is not None:
            reserve = 0 if self.votes_only else self.final_tokens
            if self.budget_tokens < reserve + min(self.trace_max_tokens, self.tail_tokens):
                raise RsaParamError(
                    "budget_tokens",
                    f"budget_tokens={self.budget_tokens} cannot cover one trace "
                    f"({min(self.trace_max_tokens, self.tail_tokens)} tokens) plus the final "
                    f"answer's reserve ({reserve} tokens)",
                )
