"""A client that leaves an RSA chat completion, streamed or not, aborts every engine request of
its run by the time the server has handled the hang-up: none runs on to its token limit. The
e2e tests (tests/e2e/test_service.py) check the same against vLLM, waiting for the engine to
go idle; this pins that the abort itself is immediate."""

from __future__ import annotations

import asyncio
import json

import pytest

from mrsa.service.app import create_app
from mrsa.service.settings import Settings
from tests.fakes import CountingEngine
from tests.serving import chat_scope
from tests.waits import until

QUESTION = [{"role": "user", "content": "What is 6 * 7?"}]
RSA = {"population": 3, "k": 2, "rounds": 3, "tail_tokens": 16, "trace_max_tokens": 300, "seed": 4,
       "selection": "aggregate"}


@pytest.mark.parametrize("stream", [True, False])
async def test_a_client_that_leaves_an_rsa_run_aborts_its_engine_requests(stream: bool) -> None:
    engine = CountingEngine(delay=0.02, length=400, tokens_per_delta=1)  # no trace ends by itself soon
    app = create_app(Settings(), engine_factory=lambda _: engine)
    body = json.dumps({"model": "fake-model", "messages": QUESTION, "stream": stream, "rsa": RSA}).encode()
    sent: list[dict] = []
    asked = False

    async def receive() -> dict:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": body, "more_body": False}
        # Leave once every first-round trace has delivered tokens: mid-generation.
        await until(lambda: len(engine.delivered) == RSA["population"], "the first round generating", within_s=60)
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = chat_scope(body)
    async with app.router.lifespan_context(app):
        await asyncio.wait_for(app(scope, receive, send), 60)  # bounds a hang only
        assert engine.num_in_flight() == 0
    assert len(engine.requests) == RSA["population"]  # the run went no further than its first round
    assert all(r.aborted and 0 < r.completion_tokens < RSA["trace_max_tokens"] for r in engine.requests)
