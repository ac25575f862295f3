"""The default model carries its tool-call parser: ``mrsa serve`` with no parser flag answers a
forced tool call (``tool_choice`` naming a function) and an ``auto`` one, as
``vllm serve --enable-auto-tool-choice --tool-call-parser hermes`` does, through the openai SDK.
Before, both were a 400 "requires --tool-call-parser"."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest

from mrsa.engine.provision import DEFAULT_MODEL, lookup
from tests.e2e.server import WEATHER, Server, start_server, stop_server

ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def default_model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    assert lookup(DEFAULT_MODEL).tool_call_parser == "hermes"
    # The default model itself (not the suite's small one), with no parser flag at all.
    proc, srv = start_server(tmp_path_factory.mktemp("default-model"), extra_env={"MRSA_ENGINE__MODEL": DEFAULT_MODEL},
                             timeout=600)
    try:
        yield srv
    finally:
        stop_server(proc)


def test_a_forced_tool_call_is_answered_with_the_call(default_model_server: Server) -> None:
    out = default_model_server.client(timeout=300).chat.completions.create(
        model=default_model_server.model, messages=ASK, tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=32, temperature=0,
    )
    (call,) = out.choices[0].message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    assert json.loads(call.function.arguments) in ({"city": "Paris"}, {"city": "Rome"})  # the schema, enforced


def test_auto_tool_choice_is_on_for_the_models_parser(default_model_server: Server) -> None:
    client = default_model_server.client(timeout=300)
    out = client.chat.completions.create(
        model=default_model_server.model, messages=ASK, tools=[WEATHER], tool_choice="auto", max_tokens=48, temperature=0,
    )
    message = out.choices[0].message
    # hermes' parser ran: a <tool_call> the model wrote is a tool call, never left in the text
    assert message.tool_calls or "<tool_call>" not in (message.content or "")
    if message.tool_calls:
        assert out.choices[0].finish_reason == "tool_calls"
        assert message.tool_calls[0].function.name == "get_weather"


def test_a_forced_tool_call_without_tools_is_still_a_400(default_model_server: Server) -> None:
    with pytest.raises(openai.BadRequestError):
        default_model_server.client(timeout=300).chat.completions.create(
            model=default_model_server.model, messages=ASK, max_tokens=8,
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
        )
