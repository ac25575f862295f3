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
from tests.serving import chat_scope, events, serving, submit, wait_status

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


async def test_a_background_run_whose_round_fails_ends_failed_and_its_events_end() -> None:
    """Regression: the failure's usage used to reach json.dumps as a pydantic model, which
    raised inside the handler, so the run stayed `running` and its event stream never ended."""
    engine = FakeEngine(error=lambda r: Gone("no replica is reachable") if "-r1-" in r.request_id else None)
    async with serving(engine) as http:
        run = await submit(http, rsa=RSA)
        done = await wait_status(http, run["id"], {"completed", "failed", "cancelled"})
        assert done["status"] == "failed"
        assert done["error"]["code"] == "upstream_unavailable" and "of round 1 failed" in done["error"]["message"]
        assert done["usage"]["completion_tokens"] == engine.completion_tokens > 0
        log = await events(http, run["id"])  # returns: the stream ends after the last event
        assert log[-1][1]["event"] == "run_failed"
        assert log[-1][1]["usage"]["completion_tokens"] == engine.completion_tokens
        assert engine.num_in_flight() == 0


@pytest.mark.parametrize("rsa", [True, False])
async def test_a_client_that_leaves_a_non_streaming_request_is_a_499_not_a_500(rsa: bool) -> None:
    """Regression: the disconnect watch called task.result() on a task it had just cancelled,
    so a hang-up was logged as an unhandled error and counted as a 500. It is a 499 in the
    metrics, nothing is logged as an error, and the run's engine requests are aborted (a plain
    request's too: the call into the engine's OpenAI layer is cancelled)."""
    import asyncio
    import logging

    from mrsa.service import metrics

    engine = FakeEngine(delay=0.05, length=400)  # slow: the client leaves mid-run
    app = create_app(Settings(), engine_factory=lambda _: engine)
    body = json.dumps({"model": "fake-model", "messages": QUESTION, **({"rsa": RSA} if rsa else {"n": 2})}).encode()
    hung_up = asyncio.Event()
    sent: list[dict] = []

    async def receive() -> dict:
        if not sent and not hung_up.is_set():
            sent.append({"type": "http.request"})
            return {"type": "http.request", "body": body, "more_body": False}
        await hung_up.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = chat_scope(body)
    errors: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.ERROR)
    handler.emit = errors.append  # type: ignore[method-assign]
    logging.getLogger().addHandler(handler)
    before = metrics.REQUESTS.labels("POST", "/v1/chat/completions", "499")._value.get()
    try:
        async with app.router.lifespan_context(app):
            call = asyncio.create_task(app(scope, receive, send))
            for _ in range(400):  # until traces are being generated
                if engine.num_in_flight():
                    break
                await asyncio.sleep(0.01)
            assert engine.num_in_flight() > 0, "the run never started"
            hung_up.set()
            await asyncio.wait_for(call, 10)
            assert engine.num_in_flight() == 0  # aborted before the response was sent
    finally:
        logging.getLogger().removeHandler(handler)
    starts = [m for m in sent if m.get("type") == "http.response.start"]
    assert [m["status"] for m in starts] == [499]
    assert metrics.REQUESTS.labels("POST", "/v1/chat/completions", "499")._value.get() == before + 1
    assert not errors, [e.getMessage() for e in errors]
    assert engine.requests and all(r.aborted for r in engine.requests)  # every trace was mid-generation
