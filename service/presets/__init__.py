"""Effort presets measured on a model: the file ``mrsa calibrate`` writes and ``mrsa serve`` loads.

A preset file maps each ``reasoning_effort`` (low, medium, high, xhigh, auto) to the fields of
the request's ``rsa`` object that measured best at that effort's budget on one model, and says
how it was measured::

    {"model": "Qwen2.5-Coder-1.5B-Instruct",
     "measured": {"dataset": "gsm8k-dev", "problems": 150, "date": "...", ...},
     "efforts": {"low": {"method": "adaptive_vote", "population": 2, "wave": 2,
                         "max_population": 8}, ...}}

``measured`` is provenance, kept as written. An effort the file leaves out keeps the server's
own preset (:data:`~mrsa.service.settings.EFFORT_PRESETS`). A built-in model's shipped file is
``<name>.json`` in this folder; the ``presets`` setting names any other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PresetEffort = Literal["low", "medium", "high", "xhigh", "auto"]
SHIPPED = Path(__file__).parent


class PresetFile(BaseModel):
    """One model's measured presets."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="The model the presets were measured on (its served name).")
    measured: dict[str, Any] = Field(
        default_factory=dict, description="How: dataset, problems, seeds, date, machine, the frontier's figures."
    )
    efforts: dict[PresetEffort, dict[str, Any]] = Field(
        description="reasoning_effort -> rsa fields over the server's rsa defaults."
    )

    @field_validator("efforts")
    @classmethod
    def _no_seed(cls, efforts: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for effort, fields in efforts.items():
            if "seed" in fields:
                raise ValueError(f"efforts.{effort}: a preset cannot fix the seed")
        return efforts

    def dump(self, path: Path) -> None:
        """Write the file as :func:`load_presets` reads it."""
        path.write_text(json.dumps(self.model_dump(), indent=2) + "\n")


def load_presets(path: Path) -> PresetFile:
    """The preset file at ``path``; a ValueError naming it if it cannot be read or is not one."""
    path = Path(path).expanduser()
    try:
        return PresetFile.model_validate_json(path.read_text())
    except (OSError, ValidationError) as exc:
        raise ValueError(f"preset file {path}: {exc}") from None


def shipped_presets(model: str) -> Path | None:
    """The preset file shipped for the served model ``model`` (a built-in model's name), or None."""
    path = SHIPPED / f"{Path(model).name}.json"
    return path if path.is_file() else None
