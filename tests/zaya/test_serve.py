"""ZAYA end to end: ``mrsa serve --model <tiny ZAYA checkpoint>`` with no parser flag (the
plugin is found through its vLLM entry point; a ZAYA checkpoint brings the ``zaya`` reasoning
and tool-call parsers, engine/parsers.py) answers an RSA request through the HTTP API, its
answer split by vLLM's parser as ``vllm serve`` splits a plain one.

The tiny model writes random bytes and never closes a think section, so for zaya's parser
(Qwen3's grammar) every output is thinking: the answer arrives in ``reasoning`` with no
``content``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Server, start_server, stop_server


@pytest.fixture(scope="module")
def zaya_server(tiny_zaya: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    proc, srv = start_server(
        tmp_path_factory.mktemp("zaya-server"),
        args=("--model", str(tiny_zaya), "--served-model-name", "tiny-zaya"),
    )
    try:
        yield srv
    finally:
        stop_server(proc)


RSA = {"population": 3, "k": 2, "rounds": 2, "tail_tokens": 12, "trace_max_tokens": 16, "seed": 5,
       "selection": "aggregate", "return_trace": True}


def test_rsa_request_on_zaya(zaya_server: Server) -> None:
    rsa = RSA
    out = zaya_server.client().chat.completions.create(
        model="tiny-zaya",
        messages=[{"role": "user", "content": "What is 7 + 5?"}],
        extra_body={"rsa": rsa},
    )
    assert zaya_server.model == "tiny-zaya"
    block = out.model_extra["rsa"]
    assert block["rounds_completed"] == 2 and block["stop_reason"] == "rounds"
    assert block["calls"] == 3 * 2 + 1 == len(block["trace"])
    trace = block["trace"]
    assert out.usage.completion_tokens == sum(n["completion_tokens"] for n in trace) > 0
    assert all(0 < n["completion_tokens"] <= 16 for n in trace)
    message = out.choices[0].message
    assert message.content is None and message.model_extra["reasoning"] == trace[-1]["text"]
    # Every token of every trace is thinking, the final answer's included.
    assert out.usage.completion_tokens_details.reasoning_tokens == out.usage.completion_tokens
    # Round-1 aggregation prompts carry K round-0 tails: longer than the round-0 prompts.
    r0 = [n["prompt_tokens"] for n in trace if n["round"] == 0]
    r1 = [n["prompt_tokens"] for n in trace if n["round"] == 1 and n["kind"] == "trace"]
    assert min(r1) > max(r0)


def test_rsa_stream_on_zaya_sends_the_answer_as_reasoning_deltas(zaya_server: Server) -> None:
    client = zaya_server.client()
    kw = dict(model="tiny-zaya", messages=[{"role": "user", "content": "What is 7 + 5?"}], extra_body={"rsa": RSA})
    whole = client.chat.completions.create(**kw).choices[0].message
    chunks = list(client.chat.completions.create(stream=True, **kw))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    streamed = "".join((d.model_extra or {}).get("reasoning") or "" for d in deltas)
    assert streamed == whole.model_extra["reasoning"] and streamed  # same seed: the same run
    assert not "".join(d.content or "" for d in deltas)


def test_plain_completion_on_zaya_is_seeded(zaya_server: Server) -> None:
    client = zaya_server.client()
    kw = dict(model="tiny-zaya", messages=[{"role": "user", "content": "hi"}], max_tokens=12, seed=3)
    a, b = client.chat.completions.create(**kw), client.chat.completions.create(**kw)
    # vLLM's own layer, with the same parser: the output is thinking
    assert a.choices[0].message.model_extra["reasoning"] == b.choices[0].message.model_extra["reasoning"]
    assert a.choices[0].message.model_extra["reasoning"] and a.choices[0].message.content is None
    assert 0 < a.usage.completion_tokens <= 12


def test_a_forced_tool_call_on_zaya_needs_no_parser_flag(zaya_server: Server) -> None:
    """The checkpoint's zaya tool-call parser is on: without it vLLM refuses a named tool_choice
    (400 "requires --tool-call-parser"). The random model's call, if any, names the tool."""
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}}, "required": ["city"]}}}
    out = zaya_server.client().chat.completions.create(
        model="tiny-zaya", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[tool],
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=48, seed=1,
    )
    assert out.model == "tiny-zaya" and out.choices
    assert all(call.function.name == "get_weather" for call in out.choices[0].message.tool_calls or [])
