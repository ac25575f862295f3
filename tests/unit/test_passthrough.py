"""Plain requests through the replicas (engine/remote/passthrough.py) over a mocked HTTP
transport: the body goes unchanged but for the model name, a busy or failing replica hands the
request to another, a 4xx is the answer, a stream is relayed line by line."""

from __future__ import annotations

import json

import httpx
import pytest

from mrsa.engine.config import EngineConfig
from mrsa.engine.remote.errors import UpstreamUnavailable
from mrsa.engine.remote.passthrough import ReplicaOpenAI
from mrsa.engine.remote.replicas import ReplicaPool
from mrsa.engine.remote.retry import RetryPolicy

BODY = {"model": "ours", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}],
        "logprobs": True}


def layer(handler) -> tuple[ReplicaOpenAI, ReplicaPool, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    pool = ReplicaPool(["http://a", "http://b"])
    for r in pool:
        r.verified = r.healthy = True
        r.served_id = "/models/small"
    config = EngineConfig(upstream_backoff_s=0, upstream_backoff_max_s=0)
    client = httpx.AsyncClient(transport=httpx.MockTransport(record))
    return ReplicaOpenAI(client, pool, RetryPolicy(config, pool), ["ours"], lambda: None), pool, seen


async def test_the_body_goes_unchanged_but_for_the_model() -> None:
    openai, _, seen = layer(lambda r: httpx.Response(200, json={"model": "/models/small", "choices": []}))
    result = await openai.chat_completions(BODY)
    assert result.status == 200 and result.body == {"model": "ours", "choices": []}
    assert json.loads(seen[0].content) == {**BODY, "model": "/models/small"}
    assert seen[0].url.path == "/v1/chat/completions"


async def test_a_failing_replica_hands_the_request_to_the_other() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.host == "a":
            return httpx.Response(503, text="overloaded")
        return httpx.Response(200, json={"ok": True})

    openai, pool, seen = layer(answer)
    result = await openai.completions({"model": "ours", "prompt": "x"})
    assert result.body == {"ok": True}
    assert [r.url.host for r in seen] == ["a", "b"]
    assert pool.replicas[0].failures == 1 and all(r.outstanding == 0 for r in pool)


async def test_a_4xx_is_the_answer_and_not_retried() -> None:
    error = {"error": {"message": "bad tools", "type": "BadRequestError", "param": "tools", "code": 400}}
    openai, _, seen = layer(lambda r: httpx.Response(400, json=error))
    result = await openai.chat_completions(BODY)
    assert (result.status, result.body, len(seen)) == (400, error, 1)


async def test_no_replica_left_is_unavailable() -> None:
    openai, _, seen = layer(lambda r: httpx.Response(500, text="down"))
    with pytest.raises(UpstreamUnavailable):
        await openai.tokenize({"prompt": "x"})
    assert len(seen) >= 2


async def test_a_stream_is_relayed_event_by_event() -> None:
    """Each event's data, unframed (the service frames them); comments and a ping are no events."""
    events = b': ping\r\n\r\ndata: {"choices": [{"delta": {"content": "a"}}]}\r\n\r\ndata: [DONE]\n\n'
    openai, pool, _ = layer(lambda r: httpx.Response(200, content=events, headers={"content-type": "text/event-stream"}))
    result = await openai.chat_completions({**BODY, "stream": True})
    assert result.body is None and result.stream is not None
    payloads = [data async for data in result.stream]
    assert payloads == ['{"choices": [{"delta": {"content": "a"}}]}', "[DONE]"]
    assert all(r.outstanding == 0 for r in pool)


async def test_models_are_a_replicas_card_under_our_names() -> None:
    card = {"id": "/models/small", "object": "model", "root": "/models/small", "max_model_len": 2048}
    openai, _, seen = layer(lambda r: httpx.Response(200, json={"object": "list", "data": [card]}))
    result = await openai.models()
    assert result.body == {"object": "list", "data": [{**card, "id": "ours", "root": "ours"}]}
    assert seen[0].method == "GET" and seen[0].url.path == "/v1/models"
