"""A model brings the parsers it needs: the built-in Qwen models hermes tool calls, a ZAYA
checkpoint (config.json's architectures) ``zaya`` for both; flags win, an empty one turns off."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mrsa.engine.config import EngineConfig
from mrsa.engine.local import default_parsers
from mrsa.engine.openai_layer import serve_argv
from mrsa.engine.parsers import ModelParsers, model_parsers, with_model_parsers
from mrsa.engine.provision import CATALOG, DEFAULT_MODEL


def _checkpoint(tmp_path: Path, architectures: list[str]) -> str:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": architectures}))
    return str(tmp_path)


def test_the_default_model_speaks_hermes_with_auto_tool_choice() -> None:
    config = with_model_parsers(EngineConfig(), default_parsers(EngineConfig(), "/nonexistent/checkpoint"))
    assert DEFAULT_MODEL.startswith("Qwen2.5")
    assert (config.tool_call_parser, config.enable_auto_tool_choice, config.reasoning_parser) == ("hermes", True, None)


def test_every_built_in_qwen_carries_hermes() -> None:
    qwens = [m for m in CATALOG.values() if m.arch == "qwen2"]
    assert qwens and all(m.tool_call_parser == "hermes" for m in qwens)


def test_a_zaya_checkpoint_gets_zaya_for_both(tmp_path: Path) -> None:
    model = _checkpoint(tmp_path, ["ZayaForCausalLM"])
    assert model_parsers(model) == ModelParsers(tool_call="zaya", reasoning="zaya")
    config = with_model_parsers(EngineConfig(model=model), default_parsers(EngineConfig(model=model), model))
    assert (config.tool_call_parser, config.reasoning_parser, config.enable_auto_tool_choice) == ("zaya", "zaya", True)


def test_other_checkpoints_and_hub_ids_get_none(tmp_path: Path) -> None:
    assert model_parsers(_checkpoint(tmp_path, ["LlamaForCausalLM"])) == ModelParsers()
    assert model_parsers("Zyphra/ZAYA1-8B") == ModelParsers()  # not a folder: the flags say
    config = with_model_parsers(EngineConfig(), ModelParsers())
    assert (config.tool_call_parser, config.reasoning_parser, config.enable_auto_tool_choice) == (None, None, False)


def test_flags_win(tmp_path: Path) -> None:
    zaya = ModelParsers(tool_call="zaya", reasoning="zaya")
    config = with_model_parsers(EngineConfig(tool_call_parser="hermes", reasoning_parser="qwen3"), zaya)
    # a tool-call parser the user named keeps vLLM's rule: auto tool choice only with the switch
    assert (config.tool_call_parser, config.reasoning_parser, config.enable_auto_tool_choice) == ("hermes", "qwen3", False)
    config = with_model_parsers(EngineConfig(enable_auto_tool_choice=False), zaya)
    assert (config.tool_call_parser, config.enable_auto_tool_choice) == ("zaya", False)


def test_an_empty_name_turns_the_models_parser_off() -> None:
    config = with_model_parsers(EngineConfig(tool_call_parser="", reasoning_parser=""), ModelParsers("zaya", "zaya"))
    assert (config.tool_call_parser, config.reasoning_parser, config.enable_auto_tool_choice) == (None, None, False)
    assert "--tool-call-parser" not in serve_argv("m", ["m"], config)


@pytest.mark.vllm_api
@pytest.mark.parametrize("parsers", [ModelParsers("hermes", None), ModelParsers("zaya", "zaya")])
def test_the_chosen_parsers_pass_vllms_own_argument_checks(parsers: ModelParsers) -> None:
    """What the OpenAI layer hands vLLM's `vllm serve` parser: accepted, and the names known."""
    from vllm.reasoning import ReasoningParserManager
    from vllm.tool_parsers import ToolParserManager
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from mrsa.engine.openai_layer import _serve_cli
    from mrsa.engine.zaya import parsers as zaya_parsers

    zaya_parsers.register()  # what LocalEngine does before the layer is built
    make_arg_parser, validate_parsed_serve_args = _serve_cli()
    config = with_model_parsers(EngineConfig(), parsers)
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(serve_argv("m", ["m"], config))
    validate_parsed_serve_args(args)
    assert (args.tool_call_parser, args.enable_auto_tool_choice, args.reasoning_parser or None) == (
        parsers.tool_call, True, parsers.reasoning)
    assert parsers.tool_call in ToolParserManager.list_registered()
    assert parsers.reasoning is None or parsers.reasoning in ReasoningParserManager.list_registered()
