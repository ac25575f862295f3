"""The HTTP side of the run failure policy, over the fake engine: a failed RSA run answers with
the failing error's status in the OpenAI envelope plus the usage it spent (a streamed run: in
the error chunk); a degraded run says so in its ``rsa`` block."""

from __future__ import annotations

import json

import httpx
import pytest

from mrsa.engine.base import EngineError
from mrsa.service.app import create_app
from mrsa.service.settings import Settings
from tests.fakes import FakeEngine

QUESTION = [{"role": "user", "content": "What is 6 * 7?"}]
RSA = {"population": 4, "k": 2, "rounds": 2, "tail_tokens": 16, "trace_max_tokens": 64, "seed": 5,
       "selection": "aggregate"}


class Gone(EngineError):
    status = 503
    code = "upstream_unavailable"


async def post(engine: FakeEngine, body: dict) -> httpx.Response:
    app = create_app(Settings(), engine_factory=lambda _: engine)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            return await http.post("/v1/chat/completions", json=body)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_lost_run_answers_503_with_usage(stream: bool) -> None:
    # Round 0 completes; every round-1 request finds no replica.
    engine = FakeEngine(error=lambda r: Gone("no replica is reachable") if "-r1-" in r.request_id else None)
    body = {"model": "fake-model", "messages": QUESTION, "rsa": RSA, "stream": stream}
    response = await post(engine, body)
    if stream:
        assert response.status_code == 200
        lines = [line for line in response.text.splitlines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        payload = json.loads(lines[-2][len("data: "):])
    else:
        assert response.status_code == 503
        payload = response.json()
    error, usage = payload["error"], payload["usage"]
    assert error["code"] == "upstream_unavailable" and error["type"] == "server_error"
    assert "no replica is reachable" in error["message"] and "of round 1 failed" in error["message"]
    assert usage["completion_tokens"] == engine.completion_tokens > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] == usage["completion_tokens"]
    assert engine.num_in_flight() == 0


async def test_a_degraded_run_reports_its_failed_traces() -> None:
    engine = FakeEngine(error=lambda r: Gone("replica died") if r.request_id.endswith("-r0-i1") else None)
    response = await post(engine, {"model": "fake-model", "messages": QUESTION, "rsa": {**RSA, "return_trace": True}})
    assert response.status_code == 200
    out = response.json()
    block = out["rsa"]
    assert block["degraded"] is True
    assert block["failed"] == [{"round": 0, "index": 1, "error": "replica died"}]
    assert [n["status"] for n in block["trace"]].count("failed") == 1
    assert out["usage"]["completion_tokens"] == engine.completion_tokens
    assert block["answers"][0][1] is None


async def test_a_healthy_run_is_not_degraded() -> None:
    response = await post(FakeEngine(), {"model": "fake-model", "messages": QUESTION, "rsa": RSA})
    assert response.json()["rsa"]["degraded"] is False and response.json()["rsa"]["failed"] == []


async def test_plain_requests_keep_the_bare_envelope() -> None:
    engine = FakeEngine(error=lambda r: Gone("no replica is reachable"))
    response = await post(engine, {"model": "fake-model", "messages": QUESTION})
    assert response.status_code == 503
    assert set(response.json()) == {"error"}
