"""API keys, run privacy, the default bind address and the body-size limit."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mrsa.service.settings import Settings
from tests.fakes import FakeEngine
from tests.serving import QUESTION, RSA, serving

KEYS = "alpha-key-1,beta-key-2"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_the_server_binds_to_loopback_by_default() -> None:
    assert Settings().host == "127.0.0.1"


def test_keys_never_appear_in_the_settings_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MRSA_API_KEYS", KEYS)
    settings = Settings()
    assert "alpha-key-1" not in repr(settings) and "alpha-key-1" not in str(settings.model_dump())


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/v1/rsa/runs"),
     ("GET", "/v1/rsa/runs/run_x"), ("GET", "/metrics/"), ("GET", "/openapi.json"), ("GET", "/nowhere")],
)
@pytest.mark.parametrize("auth", [None, "Bearer wrong-key", "Basic YWxwaGE6a2V5", "Bearer ", "alpha-key-1"])
async def test_every_endpoint_but_health_needs_a_key(method: str, path: str, auth: str | None) -> None:
    engine = FakeEngine()
    async with serving(engine, api_keys=KEYS) as http:
        headers = {} if auth is None else {"Authorization": auth}
        r = await http.request(method, path, headers=headers, json={"model": "fake-model", "messages": QUESTION})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["code"] == "invalid_api_key" and r.json()["error"]["type"] == "invalid_request_error"
        assert (await http.get("/health")).status_code == 200
    assert engine.requests == []


async def test_the_trace_page_is_open_and_holds_no_data() -> None:
    """docs/operations.md (API keys): with keys on, /health and the trace view's static page and script are open;
    the page's own API calls carry the key typed into it. /docs is not open."""
    async with serving(FakeEngine(), api_keys=KEYS) as http:
        page, script = await http.get("/trace"), await http.get("/trace/trace.js")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert script.status_code == 200 and "Authorization" in script.text
        assert (await http.get("/trace?run=run_x")).status_code == 200  # a run id opens nothing by itself
        assert (await http.get("/v1/rsa/runs/run_x/events")).status_code == 401
        assert (await http.get("/docs")).status_code == 401


async def test_a_configured_key_opens_the_api(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("# operators\nfile-key-3\n\n")
    caplog.set_level(logging.DEBUG)
    async with serving(FakeEngine(), api_keys=KEYS, api_key_file=key_file) as http:
        for key in ("alpha-key-1", "beta-key-2", "file-key-3"):
            assert (await http.get("/v1/models", headers=bearer(key))).status_code == 200
        out = await http.post("/v1/chat/completions", headers=bearer("beta-key-2"),
                              json={"model": "fake-model", "messages": QUESTION, "max_tokens": 5})
        assert out.status_code == 200
        await http.get("/v1/models", headers=bearer("alpha-key-1x"))
    assert not any(k in caplog.text for k in ("alpha-key", "beta-key", "file-key"))


async def test_runs_are_visible_only_to_the_key_that_created_them() -> None:
    async with serving(FakeEngine(delay=0.01), api_keys=KEYS) as http:
        r = await http.post("/v1/rsa/runs", headers=bearer("alpha-key-1"),
                            json={"model": "fake-model", "messages": QUESTION, "rsa": RSA})
        run_id = r.json()["id"]
        for method, path in [("GET", f"/v1/rsa/runs/{run_id}"), ("GET", f"/v1/rsa/runs/{run_id}/events"),
                             ("DELETE", f"/v1/rsa/runs/{run_id}")]:
            other = await http.request(method, path, headers=bearer("beta-key-2"))
            assert other.status_code == 404 and other.json()["error"]["code"] == "run_not_found"
        mine = await http.get(f"/v1/rsa/runs/{run_id}", headers=bearer("alpha-key-1"))
        assert mine.status_code == 200 and mine.json()["status"] != "cancelled"
        assert (await http.delete(f"/v1/rsa/runs/{run_id}", headers=bearer("alpha-key-1"))).json()["status"] == "cancelled"


async def test_oversized_bodies_get_413_before_parsing() -> None:
    engine = FakeEngine()
    async with serving(engine, max_body_bytes=4096) as http:
        big = {"model": "fake-model", "messages": [{"role": "user", "content": "x" * 5000}]}
        r = await http.post("/v1/chat/completions", json=big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

        async def chunked():  # no Content-Length: refused once the limit is passed
            yield b'{"model": "fake-model", "messages": [{"role": "user", "content": "'
            for _ in range(10):
                yield b"y" * 1000
            yield b'"}]}'

        r = await http.post("/v1/chat/completions", content=chunked(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["message"]
        lying = await http.post("/v1/chat/completions", content=b"{" * 10, headers={"Content-Length": "999999999"})
        assert lying.status_code == 413
        small = {"model": "fake-model", "messages": QUESTION, "max_tokens": 5}
        assert (await http.post("/v1/chat/completions", json=small)).status_code == 200
    assert len(engine.requests) == 1


@pytest.mark.parametrize("content", ["", "   ", "日本語で答えて 🙂", "\u0000\u202e\ud7ff", "é" * 300])
async def test_unicode_and_empty_messages_behave(content: str) -> None:
    async with serving(FakeEngine()) as http:
        for rsa in (None, RSA):
            body = {"model": "fake-model", "messages": [{"role": "user", "content": content}], "max_tokens": 8}
            if rsa:
                body["rsa"] = rsa
            r = await http.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            assert isinstance(r.json()["choices"][0]["message"]["content"], str)
        empty = await http.post("/v1/chat/completions", json={"model": "fake-model", "messages": []})
        assert empty.status_code == 400 and empty.json()["error"]["param"] == "messages"
