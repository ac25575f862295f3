"""The service in process over the fake engine, and the calls the HTTP tests make to it.

``serving(engine, **settings)`` runs the app's lifespan and yields an httpx client on it (no
socket); ``submit``, ``events`` and ``wait_status`` drive background runs (``/v1/rsa/runs``);
``chat_scope`` is the ASGI scope of a chat request for tests that hang up by hand."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from mrsa.service.app import create_app
from mrsa.service.settings import Settings
from tests.fakes import FakeEngine

QUESTION = [{"role": "user", "content": "What is 6 * 7?"}]
RSA = {"population": 4, "k": 2, "rounds": 3, "tail_tokens": 16, "trace_max_tokens": 64, "seed": 11,
       "selection": "aggregate"}


@asynccontextmanager
async def serving(engine: FakeEngine, **settings: object) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(**settings), engine_factory=lambda _: engine)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            yield http


async def submit(http: httpx.AsyncClient, rsa: dict = RSA, **extra: object) -> dict:
    r = await http.post("/v1/rsa/runs", json={"model": "fake-model", "messages": QUESTION, "rsa": rsa, **extra})
    assert r.status_code == 202, r.text
    return r.json()


async def events(http: httpx.AsyncClient, run_id: str, last: int | None = None) -> list[tuple[int, dict]]:
    headers = {} if last is None else {"Last-Event-ID": str(last)}
    out: list[tuple[int, dict]] = []
    seq = None
    async with http.stream("GET", f"/v1/rsa/runs/{run_id}/events", headers=headers) as stream:
        assert stream.status_code == 200
        async for line in stream.aiter_lines():
            if line.startswith("id: "):
                seq = int(line[4:])
            elif line.startswith("data: "):
                out.append((seq, json.loads(line[6:])))
    return out


async def wait_status(http: httpx.AsyncClient, run_id: str, done: set[str], nodes: int = 0) -> dict:
    for _ in range(3000):  # a generous bound (30 s): a takeover between replicas waits on a lease
        run = (await http.get(f"/v1/rsa/runs/{run_id}")).json()
        if run["status"] in done or (nodes and run["progress"]["nodes_finished"] >= nodes):
            return run
        await asyncio.sleep(0.01)
    raise AssertionError(f"run stuck: {run}")


def chat_scope(body: bytes) -> dict:
    """The ASGI scope of a JSON ``POST /v1/chat/completions`` carrying ``body``, for tests that
    drive the app with their own ``receive`` (a client that hangs up at a chosen moment)."""
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
            "query_string": b"", "root_path": "", "headers": [(b"content-type", b"application/json"),
                                                              (b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 1), "server": ("t", 80)}
