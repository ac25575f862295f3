"""Plain requests go to the engine's OpenAI layer as the client sent them; RSA requests honour
every field or refuse it by name. Over the fake engine and its fake layer (tests/fake_openai.py);
what vLLM's real layer does with the fields is tests/e2e/test_openai_plain.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import openai
import pytest

from mrsa.engine.base import OpenAIResult
from mrsa.service.app import create_app
from mrsa.service.settings import Settings
from tests.fakes import FakeEngine
from tests.serving import chat_scope

QUESTION = [{"role": "user", "content": "What is 6 * 7?"}]
TOOL = {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}


@pytest.fixture
async def served() -> AsyncIterator[tuple[FakeEngine, httpx.AsyncClient]]:
    engine = FakeEngine()
    app = create_app(Settings(), engine_factory=lambda _: engine)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            yield engine, http


async def test_a_plain_request_reaches_the_layer_with_every_field(served) -> None:
    engine, http = served
    body = {"model": "fake-model", "messages": QUESTION, "tools": [TOOL], "tool_choice": "auto",
            "response_format": {"type": "json_object"}, "logprobs": True, "top_logprobs": 2, "rsa": None,
            "background": False, "reasoning_effort": "none"}
    response = await http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    ((method, sent),) = engine.openai.calls
    assert method == "chat_completions"
    assert sent == {k: v for k, v in body.items() if k not in ("rsa", "background")}


async def test_the_sdk_parses_plain_chat_and_text_completions(served) -> None:
    engine, http = served
    client = openai.AsyncOpenAI(base_url="http://t/v1", api_key="x", http_client=http, max_retries=0)
    chat = await client.chat.completions.create(model="fake-model", messages=QUESTION, max_tokens=8)
    assert chat.choices[0].message.content == engine.requests[0].text
    assert chat.usage.completion_tokens == engine.requests[0].completion_tokens
    text = await client.completions.create(model="fake-model", prompt="Once upon", max_tokens=6, seed=3)
    assert text.object == "text_completion" and text.choices[0].text == engine.requests[-1].text
    assert text.usage.completion_tokens == engine.requests[-1].completion_tokens
    stream = await client.chat.completions.create(model="fake-model", messages=QUESTION, stream=True,
                                                  stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == engine.requests[-1].text
    assert chunks[-1].usage.completion_tokens == engine.requests[-1].completion_tokens


async def test_tokenize_and_detokenize_round_trip(served) -> None:
    _, http = served
    ids = (await http.post("/tokenize", json={"model": "fake-model", "prompt": "six times seven"})).json()
    assert ids["count"] == len(ids["tokens"]) > 0
    text = (await http.post("/detokenize", json={"model": "fake-model", "tokens": ids["tokens"]})).json()
    assert text["prompt"] == "six times seven"


async def test_the_layers_errors_come_in_our_envelope(served) -> None:
    _, http = served
    response = await http.post("/detokenize", json={"tokens": "not ids"})
    assert response.status_code == 400
    assert response.json() == {"error": {"message": "tokens must be a list of token ids",
                                         "type": "invalid_request_error", "param": "tokens", "code": "bad_request"}}
    missing = await http.post("/v1/completions", json={"prompt": "x"})  # no model: the served one, as vLLM
    assert missing.status_code == 200 and missing.json()["choices"][0]["text"]
    wrong = await http.post("/v1/completions", json={"model": 3, "prompt": "x"})
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "model"
    other = await http.post("/v1/completions", json={"model": "other", "prompt": "x"})
    assert other.status_code == 404 and other.json()["error"]["code"] == "model_not_found"


async def test_models_are_the_layers_cards_with_the_efforts(served) -> None:
    _, http = served
    (card,) = (await http.get("/v1/models")).json()["data"]
    assert card["owned_by"] == "vllm" and card["root"] == "fake-model"  # the layer's own card
    assert card["reasoning_efforts"] == ["low", "medium", "high", "xhigh", "auto"]


async def test_a_layer_failure_after_the_200_is_an_error_chunk() -> None:
    engine = FakeEngine()

    async def broken() -> AsyncIterator[str]:
        yield '{"choices": []}'
        raise RuntimeError("boom")

    async def chat(body: dict) -> OpenAIResult:
        return OpenAIResult(stream=broken())

    engine.openai.chat_completions = chat  # type: ignore[method-assign]
    app = create_app(Settings(), engine_factory=lambda _: engine)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            response = await http.post("/v1/chat/completions", json={"model": "fake-model", "messages": QUESTION,
                                                                     "stream": True})
            assert (await http.get("/health")).status_code == 200
    lines = [line for line in response.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and '"internal_error"' in lines[-2]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [TOOL]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logprobs": True}, "logprobs"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"n": 2}, "n"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None,
                                                           "tool_calls": [{"id": "1"}]}]}, "messages.1.tool_calls"),
    ],
)
@pytest.mark.parametrize("how", [{"rsa": {"population": 2}}, {"reasoning_effort": "low"}])
async def test_rsa_refuses_what_it_cannot_honour_by_name(served, extra: dict, param: str, how: dict) -> None:
    engine, http = served
    for path in ("/v1/chat/completions", "/v1/rsa/runs"):
        response = await http.post(path, json={"model": "fake-model", "messages": QUESTION, **how, **extra})
        assert response.status_code == 400, (path, response.text)
        error = response.json()["error"]
        assert error["param"] == param and param.split(".")[-1] in error["message"], error
    assert engine.requests == [] and engine.openai.calls == []


async def test_rsa_accepts_fields_that_ask_for_nothing(served) -> None:
    engine, http = served
    body = {"model": "fake-model", "messages": QUESTION, "rsa": {"population": 2, "rounds": 1},
            "logprobs": False, "frequency_penalty": 0, "tools": None, "parallel_tool_calls": True}
    response = await http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["rsa"]["calls"] >= 2 and engine.openai.calls == []


async def test_a_client_that_leaves_a_plain_stream_aborts_its_engine_requests() -> None:
    import asyncio
    import json

    engine = FakeEngine(delay=0.05, length=400)  # slow: the client leaves mid-stream
    app = create_app(Settings(), engine_factory=lambda _: engine)
    body = json.dumps({"model": "fake-model", "messages": QUESTION, "stream": True, "n": 2}).encode()
    hung_up = asyncio.Event()
    sent: list[dict] = []
    asked = False

    async def receive() -> dict:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": body, "more_body": False}
        await hung_up.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)
        if message.get("type") == "http.response.body" and b"content" in message.get("body", b""):
            hung_up.set()  # the first tokens arrived: leave

    scope = chat_scope(body)
    async with app.router.lifespan_context(app):
        await asyncio.wait_for(app(scope, receive, send), 10)
        assert engine.num_in_flight() == 0
        assert app.state.plain_admission.running == 0  # the slot was given back
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [200]
    assert len(engine.requests) == 2 and all(r.aborted for r in engine.requests)
    assert all(r.completion_tokens < 100 for r in engine.requests)  # stopped, not run to the end


@pytest.mark.parametrize("messages", [1.5, 7, True, {"role": "user", "content": "hi"}, "hi"])
@pytest.mark.parametrize("how", [{"rsa": {"population": 2}}, {"reasoning_effort": "low"}])
async def test_rsa_messages_that_are_not_a_list_are_a_400_naming_messages(served, messages, how: dict) -> None:
    engine, http = served
    for path in ("/v1/chat/completions", "/v1/rsa/runs"):
        response = await http.post(path, json={"model": "fake-model", "messages": messages, **how})
        assert response.status_code == 400, (path, response.text)
        assert response.json()["error"]["param"].split(".")[0] == "messages", response.text
    assert engine.requests == [] and engine.openai.calls == []
