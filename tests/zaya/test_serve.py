"""ZAYA end to end: ``mrsa serve --model <tiny ZAYA checkpoint>`` (the plugin is found through
its vLLM entry point, nothing else configured) answers an RSA request through the HTTP API."""

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


def test_rsa_request_on_zaya(zaya_server: Server) -> None:
    rsa = {"population": 3, "k": 2, "rounds": 2, "tail_tokens": 12, "trace_max_tokens": 16, "seed": 5,
           "selection": "aggregate", "return_trace": True}
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
    assert out.choices[0].message.content == trace[-1]["text"]
    # Round-1 aggregation prompts carry K round-0 tails: longer than the round-0 prompts.
    r0 = [n["prompt_tokens"] for n in trace if n["round"] == 0]
    r1 = [n["prompt_tokens"] for n in trace if n["round"] == 1 and n["kind"] == "trace"]
    assert min(r1) > max(r0)


def test_plain_completion_on_zaya_is_seeded(zaya_server: Server) -> None:
    client = zaya_server.client()
    kw = dict(model="tiny-zaya", messages=[{"role": "user", "content": "hi"}], max_tokens=12, seed=3)
    a, b = client.chat.completions.create(**kw), client.chat.completions.create(**kw)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert 0 < a.usage.completion_tokens <= 12
