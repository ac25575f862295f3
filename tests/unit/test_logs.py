"""Structured JSON logs: one object per line with the request id and run id, uvicorn's access
lines as fields, and the request id echoed to the client."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import httpx
from fastapi import FastAPI

from mrsa.service import logs
from mrsa.service.app import create_app
from mrsa.service.settings import Settings
from tests.fakes import FakeEngine


def _capture(logger: logging.Logger | None = None) -> tuple[io.StringIO, logging.Handler]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    (logger or logging.getLogger()).addHandler(handler)
    return stream, handler


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_formatter_writes_one_json_object_with_context_and_extras() -> None:
    logger = logging.getLogger("test.logs.formatter")
    logger.setLevel(logging.INFO)
    stream, handler = _capture(logger)
    try:
        req, run = logs.REQUEST_ID.set("req-1"), logs.RUN_ID.set("chatcmpl-9")
        logger.info("run %s done", "x", extra={"rounds": 3, "answer": None, "odd": {1, 2}})
        logs.RUN_ID.reset(run)
        logs.REQUEST_ID.reset(req)
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("it failed")
    finally:
        logger.removeHandler(handler)
    first, second = _lines(stream)
    assert first["msg"] == "run x done" and first["level"] == "info" and first["logger"] == "test.logs.formatter"
    assert first["request_id"] == "req-1" and first["run_id"] == "chatcmpl-9"
    assert first["rounds"] == 3 and first["answer"] is None and first["odd"] == "{1, 2}"
    assert first["ts"].endswith("Z")
    assert "request_id" not in second and "run_id" not in second  # context reset
    assert second["level"] == "error" and "ValueError: boom" in second["exc"]


def test_uvicorn_access_records_become_fields() -> None:
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/health", "1.1", 200), None,
    )
    record.color_message = "\x1b[36m%s\x1b[0m"  # uvicorn's ANSI twin of the message: dropped
    entry = json.loads(logs.JsonFormatter().format(record))
    assert "color_message" not in entry
    assert entry["msg"] == '127.0.0.1:5000 - "GET /health HTTP/1.1" 200'
    assert (entry["method"], entry["path"], entry["status"], entry["client"]) == ("GET", "/health", 200, "127.0.0.1:5000")


def test_setup_routes_uvicorn_loggers_to_the_json_handler() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.setup("warning", "json")
        assert len(root.handlers) == 1 and isinstance(root.handlers[0].formatter, logs.JsonFormatter)
        assert root.level == logging.WARNING
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            assert logging.getLogger(name).propagate and not logging.getLogger(name).handlers
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])


async def _client(app: FastAPI):
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_request_id_is_bound_for_logs_and_echoed() -> None:
    app = FastAPI()
    seen: list[str | None] = []

    @app.get("/x")
    async def x() -> dict:
        async def in_a_task() -> None:  # tasks started by the request inherit its context
            seen.append(logs.REQUEST_ID.get())

        await asyncio.create_task(in_a_task())
        logging.getLogger("test.logs.mw").warning("inside")
        return {}

    wrapped = logs.RequestIdMiddleware(app)
    stream, handler = _capture(logging.getLogger("test.logs.mw"))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=wrapped), base_url="http://test") as client:
            given = await client.get("/x", headers={"X-Request-ID": "abc-123"})
            made = await client.get("/x")
    finally:
        logging.getLogger("test.logs.mw").removeHandler(handler)
    assert given.headers["x-request-id"] == "abc-123"
    assert len(made.headers["x-request-id"]) == 32 and made.headers["x-request-id"] != "abc-123"
    assert seen == ["abc-123", made.headers["x-request-id"]]
    assert [e["request_id"] for e in _lines(stream)] == seen
    assert logs.REQUEST_ID.get() is None  # nothing leaks out of the request


async def test_rsa_run_logs_carry_request_and_run_ids() -> None:
    engine = FakeEngine()
    app = create_app(Settings(), engine_factory=lambda _: engine)
    stream, handler = _capture(logging.getLogger("mrsa.service.pipeline"))
    logging.getLogger("mrsa.service.pipeline").setLevel(logging.INFO)
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "2+2?"}],
            "rsa": {"population": 2, "k": 1, "rounds": 2, "tail_tokens": 8, "trace_max_tokens": 64, "seed": 1}}
    try:
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
                response = await client.post("/v1/chat/completions", json=body, headers={"X-Request-ID": "r-42"})
                streamed = await client.post("/v1/chat/completions", json={**body, "stream": True})
    finally:
        logging.getLogger("mrsa.service.pipeline").removeHandler(handler)
    assert response.status_code == 200 and streamed.status_code == 200
    entries = [e for e in _lines(stream) if e["msg"].startswith("rsa run")]
    plain = [e for e in entries if e.get("request_id") == "r-42"]
    assert [e["msg"] for e in plain] == ["rsa run started", "rsa run completed"]
    assert {e["run_id"] for e in plain} == {response.json()["id"]}
    assert plain[1]["stop_reason"] == "rounds" and plain[1]["calls"] == 4
    other = [e for e in entries if e.get("request_id") == streamed.headers["x-request-id"]]
    assert [e["msg"] for e in other] == ["rsa run started", "rsa run completed"]
    assert len({e["run_id"] for e in other}) == 1 and other[0]["run_id"] != response.json()["id"]
