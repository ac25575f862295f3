"""Requests another site's page could send with keys off (the default): refused before any work,
403 for a foreign Origin, 415 for a body that is not JSON, in the OpenAI envelope."""

from __future__ import annotations

import json

import pytest

from tests.fakes import FakeEngine
from tests.serving import QUESTION, serving

BODIES = {
    "/v1/chat/completions": {"model": "fake-model", "messages": QUESTION},
    "/v1/completions": {"model": "fake-model", "prompt": "2 + 2 ="},
    "/tokenize": {"model": "fake-model", "prompt": "hello"},
    "/v1/responses": {"model": "fake-model", "input": "hi"},
    "/v1/rsa/runs": {"model": "fake-model", "messages": QUESTION},
}


@pytest.mark.parametrize("path", list(BODIES))
@pytest.mark.parametrize(("headers", "status", "code"), [
    ({"Content-Type": "text/plain", "Origin": "https://evil.example"}, 403, "cross_origin_forbidden"),
    ({"Content-Type": "application/json", "Origin": "https://evil.example"}, 403, "cross_origin_forbidden"),
    ({"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
    ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
])
async def test_cross_site_shaped_requests_start_nothing(path: str, headers: dict, status: int, code: str) -> None:
    engine = FakeEngine()
    async with serving(engine) as http:
        r = await http.post(path, content=json.dumps(BODIES[path]), headers=headers)
        assert r.status_code == status, r.text
        assert r.json()["error"]["code"] == code
        assert r.json()["error"]["type"] == "invalid_request_error"
        assert (await http.get("/v1/rsa/runs/none")).status_code == 404  # the server is fine
    assert engine.requests == []


@pytest.mark.parametrize("headers", [
    {"Content-Type": "application/json"},
    {"Content-Type": "application/json; charset=utf-8", "Origin": "http://t"},  # the server's own page
    {"Content-Type": "application/json", "Origin": "https://app.example"},  # allowed_origins
    {},  # a script without a Content-Type (FastAPI reads JSON)
])
async def test_same_site_and_non_browser_requests_pass(headers: dict) -> None:
    async with serving(FakeEngine(), allowed_origins=["https://app.example"]) as http:
        r = await http.post("/v1/chat/completions", content=json.dumps(BODIES["/v1/chat/completions"]),
                            headers=headers)
        assert r.status_code == 200, r.text


async def test_a_foreign_origin_cannot_cancel_or_delete(tmp_path) -> None:  # noqa: ANN001
    async with serving(FakeEngine()) as http:
        r = await http.delete("/v1/rsa/runs/run_x", headers={"Origin": "https://evil.example"})
        assert r.status_code == 403
        assert (await http.get("/health", headers={"Origin": "https://evil.example"})).status_code == 200


async def test_any_origin_when_allowed_is_star() -> None:
    async with serving(FakeEngine(), allowed_origins=["*"]) as http:
        r = await http.post("/tokenize", json=BODIES["/tokenize"], headers={"Origin": "https://x.example"})
        assert r.status_code == 200, r.text
