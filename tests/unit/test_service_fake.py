"""The HTTP layer over the deterministic fake engine: the OpenAI SDK parses every response and
chunk, envelopes carry the right status and param. Milliseconds, no vLLM; the same paths run
against the real engine in tests/e2e."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import openai
import pytest

from mrsa.engine.base import EngineError
from mrsa.service.app import create_app
from mrsa.service.settings import Settings
from tests.fakes import FakeEngine

QUESTION = [{"role": "user", "content": "What is 6 * 7?"}]
RSA = {"population": 4, "k": 2, "rounds": 2, "tail_tokens": 16, "trace_max_tokens": 64, "seed": 5}


@pytest.fixture
async def engine_and_client() -> AsyncIterator[tuple[FakeEngine, openai.AsyncOpenAI]]:
    engine = FakeEngine(answer=lambda r: str((r.params.seed or 0) % 3))
    app = create_app(Settings(), engine_factory=lambda _: engine)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield engine, openai.AsyncOpenAI(base_url="http://test/v1", api_key="x", http_client=http, max_retries=0)


async def test_rsa_response_sums_usage_over_the_trace(engine_and_client) -> None:
    engine, client = engine_and_client
    out = await client.chat.completions.create(
        model="fake-model", messages=QUESTION,
        extra_body={"rsa": {**RSA, "selection": "aggregate", "return_trace": True}},
    )
    block = out.model_extra["rsa"]
    assert block["calls"] == 4 * 2 + 1 == len(engine.requests) == len(block["trace"])
    assert out.usage.completion_tokens == engine.completion_tokens
    assert out.usage.prompt_tokens == sum(n["prompt_tokens"] for n in block["trace"])
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    assert out.choices[0].message.content == block["trace"][-1]["text"]
    assert block["seed"] == 5


async def test_top_level_fields_feed_the_run(engine_and_client) -> None:
    engine, client = engine_and_client
    await client.chat.completions.create(
        model="fake-model", messages=QUESTION, temperature=0.3, max_tokens=7,
        extra_body={"rsa": {**RSA, "selection": "aggregate"}},
    )
    traces, final = engine.requests[:-1], engine.requests[-1]
    assert {r.params.temperature for r in traces} == {0.3}
    assert final.params.max_tokens == 7


async def test_max_tokens_is_a_ceiling_of_the_final_answer() -> None:
    """A client default like max_tokens=4096 on a 4096-token context runs (the final answer
    keeps its own budget, trace_max_tokens); an explicit rsa.final_max_tokens is exact."""
    engine = FakeEngine(max_model_len=4096)
    app = create_app(Settings(), engine_factory=lambda _: engine)
    rsa = {**RSA, "selection": "aggregate"}
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            ok = await http.post("/v1/chat/completions", json={
                "model": "fake-model", "messages": QUESTION, "max_tokens": 4096, "rsa": rsa})
            assert ok.status_code == 200, ok.text
            assert engine.requests[-1].params.max_tokens == RSA["trace_max_tokens"]
            exact = await http.post("/v1/chat/completions", json={
                "model": "fake-model", "messages": QUESTION, "rsa": {**rsa, "final_max_tokens": 4096}})
            assert exact.status_code == 400 and exact.json()["error"]["code"] == "context_length_exceeded"


async def test_an_unset_k_follows_a_small_population(engine_and_client) -> None:
    engine, client = engine_and_client
    out = await client.chat.completions.create(
        model="fake-model", messages=QUESTION, extra_body={"rsa": {"population": 2, "rounds": 2}})
    assert out.model_extra["rsa"]["calls"] >= 4  # k became 2: every aggregation saw both traces
    with pytest.raises(openai.BadRequestError) as bad:
        await client.chat.completions.create(
            model="fake-model", messages=QUESTION, extra_body={"rsa": {"population": 2, "k": 3}})
    assert bad.value.body["param"] == "rsa"


async def test_rsa_stream_is_parsed_by_the_sdk(engine_and_client) -> None:
    _, client = engine_and_client
    stream = await client.chat.completions.create(
        model="fake-model", messages=QUESTION, stream=True, stream_options={"include_usage": True},
        extra_body={"rsa": {**RSA, "selection": "aggregate"}},
    )
    events, content, usage = [], "", None
    async for chunk in stream:
        if (rsa := (chunk.model_extra or {}).get("rsa")) is not None:
            events.append(rsa["event"])
        if chunk.choices:
            content += chunk.choices[0].delta.content or ""
        usage = chunk.usage or usage
    assert events[0] == "run_started"
    assert events.count("node_finished") == 8 and events.count("round_completed") == 2
    assert events.index("final_started") > max(i for i, e in enumerate(events) if e == "node_finished")
    assert events[-1] == "run_completed"
    assert "\\boxed{" in content and usage.completion_tokens > 0


async def test_majority_makes_no_final_call(engine_and_client) -> None:
    engine, client = engine_and_client
    out = await client.chat.completions.create(
        model="fake-model", messages=QUESTION, extra_body={"rsa": {**RSA, "selection": "majority"}}
    )
    block = out.model_extra["rsa"]
    assert block["calls"] == 8 == len(engine.requests) and block["final_mode"] == "majority"
    last_round = block["answers"][-1]
    assert block["answer"] == max(set(last_round), key=last_round.count)


async def test_plain_completion_without_rsa(engine_and_client) -> None:
    engine, client = engine_and_client
    out = await client.chat.completions.create(model="fake-model", messages=QUESTION, n=2, seed=10, max_tokens=50)
    assert len(out.choices) == 2 and len(engine.requests) == 2
    assert [r.params.seed for r in engine.requests] == [10, 11]
    assert out.model_extra.get("rsa") is None


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "other", "messages": QUESTION}, 404, "model"),
        ({"model": "fake-model", "messages": QUESTION, "rsa": {"k": 9, "population": 2}}, 400, "rsa"),
        ({"model": "fake-model", "messages": QUESTION, "rsa": {"rounds": 999}}, 400, "rsa.rounds"),
        ({"model": "fake-model", "messages": QUESTION, "rsa": {"tail_tokens": "x"}}, 400, "rsa.tail_tokens"),
        ({"model": "fake-model", "messages": QUESTION, "rsa": {"budget_tokens": 5}}, 400, "rsa.budget_tokens"),
        ({"model": "fake-model", "messages": QUESTION, "stop": ["a"], "rsa": {}}, 400, "stop"),
        ({"model": "fake-model", "messages": QUESTION, "n": 99}, 400, "n"),
        # vLLM's request model reads "99" and 99.0 as 99: the limit must too
        ({"model": "fake-model", "messages": QUESTION, "n": "99"}, 400, "n"),
        ({"model": "fake-model", "messages": QUESTION, "n": 99.0}, 400, "n"),
        ({"model": "fake-model", "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages.0.role"),
    ],
)
async def test_bad_input_gets_the_envelope(engine_and_client, body: dict, status: int, param: str) -> None:
    engine, client = engine_and_client
    response = await client._client.post("http://test/v1/chat/completions", json=body)
    assert response.status_code == status
    err = response.json()["error"]
    assert err["param"] == param and err["message"] and err["type"] == "invalid_request_error"
    assert engine.requests == []  # rejected before any engine work


class _Unavailable(EngineError):
    status = 503
    code = "engine_unavailable"


@pytest.mark.parametrize("stream", [False, True])
async def test_engine_failure_reaches_the_client_as_an_envelope(stream: bool) -> None:
    engine = FakeEngine(error=lambda r: _Unavailable("every replica is gone") if r.order >= 2 else None)
    app = create_app(Settings(), engine_factory=lambda _: engine)
    body = {"model": "fake-model", "messages": QUESTION, "rsa": RSA, "stream": stream}
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            response = await http.post("/v1/chat/completions", json=body)
    if stream:
        assert response.status_code == 200
        lines = [line for line in response.text.splitlines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        error = json.loads(lines[-2][len("data: "):])["error"]
    else:
        assert response.status_code == 503
        error = response.json()["error"]
    assert error["code"] == "engine_unavailable" and "every replica is gone" in error["message"]
    assert engine.num_in_flight() == 0
