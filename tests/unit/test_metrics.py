"""Prometheus metrics: requests by route and status, RSA runs by stop reason, rounds, tokens by
phase, node latency, in-flight engine requests and the admission gauges. Counters are process
globals, so every test compares before and after."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY

from mrsa.service import metrics
from mrsa.service.app import create_app
from mrsa.service.settings import Settings
from tests.fakes import FakeEngine


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Snapshot:
    """Sample values now; ``delta`` gives how much each grew since."""

    def __init__(self, *samples: tuple[str, dict]) -> None:
        self.samples = samples
        self.before = [value(name, **labels) for name, labels in samples]

    def delta(self) -> list[float]:
        return [value(name, **labels) - b for (name, labels), b in zip(self.samples, self.before)]


async def test_middleware_counts_requests_by_route_template_and_status() -> None:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict:
        return {"id": item_id}

    wrapped = metrics.MetricsMiddleware(app)
    snap = Snapshot(
        ("mrsa_http_requests_total", {"method": "GET", "route": "/items/{item_id}", "status": "200"}),
        ("mrsa_http_requests_total", {"method": "GET", "route": "/items/{item_id}", "status": "422"}),
        ("mrsa_http_requests_total", {"method": "GET", "route": "unmatched", "status": "404"}),
        ("mrsa_http_request_duration_seconds_count", {"route": "/items/{item_id}"}),
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=wrapped), base_url="http://test") as client:
        assert (await client.get("/items/1")).status_code == 200
        assert (await client.get("/items/2")).status_code == 200
        assert (await client.get("/items/x")).status_code == 422
        assert (await client.get("/nowhere")).status_code == 404
    assert snap.delta() == [2, 1, 1, 3]


@pytest.fixture
async def client():
    engine = FakeEngine(answer=lambda r: str((r.params.seed or 0) % 2), delay=0.001)
    app = create_app(Settings(), engine_factory=lambda _: engine)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            yield engine, http


RSA = {"population": 3, "k": 2, "rounds": 2, "tail_tokens": 8, "trace_max_tokens": 40, "seed": 3}
BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "What is 1+1?"}]}


@pytest.mark.parametrize("stream", [False, True])
async def test_an_rsa_run_feeds_rounds_tokens_by_phase_latency_and_stop_reason(client, stream: bool) -> None:
    engine, http = client
    snap = Snapshot(
        ("mrsa_rsa_runs_total", {}),
        ("mrsa_rsa_stops_total", {"reason": "rounds"}),
        ("mrsa_rsa_rounds_total", {}),
        ("mrsa_tokens_total", {"phase": "trace"}),
        ("mrsa_tokens_total", {"phase": "final"}),
        ("mrsa_rsa_node_seconds_count", {"kind": "trace"}),
        ("mrsa_rsa_node_seconds_count", {"kind": "final"}),
        ("mrsa_rsa_engine_calls_total", {}),
        ("mrsa_http_requests_total", {"method": "POST", "route": "/v1/chat/completions", "status": "200"}),
    )
    body = {**BODY, "stream": stream, "rsa": {**RSA, "selection": "aggregate"}}
    response = await http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    final = engine.requests[-1]
    trace_tokens = sum(r.completion_tokens for r in engine.requests[:-1])
    assert snap.delta() == [1, 1, 2, trace_tokens, final.completion_tokens, 6, 1, 7, 1]


async def test_plain_tokens_and_errors_are_counted(client) -> None:
    engine, http = client
    snap = Snapshot(
        ("mrsa_tokens_total", {"phase": "plain"}),
        ("mrsa_http_requests_total", {"method": "POST", "route": "/v1/chat/completions", "status": "400"}),
        ("mrsa_http_requests_total", {"method": "POST", "route": "/v1/chat/completions", "status": "404"}),
    )
    assert (await http.post("/v1/chat/completions", json={**BODY, "n": 2, "max_tokens": 5})).status_code == 200
    assert (await http.post("/v1/chat/completions", json={**BODY, "rsa": {"k": 0}})).status_code == 400
    assert (await http.post("/v1/chat/completions", json={**BODY, "model": "nope"})).status_code == 404
    assert snap.delta() == [engine.completion_tokens, 1, 1]


async def test_metrics_endpoint_exposes_every_family(client) -> None:
    engine, http = client
    metrics.track_admission("test-pool", lambda: 3, lambda: 1)
    text = (await http.get("/metrics")).text
    for family in (
        "mrsa_http_requests_total", "mrsa_rsa_runs_total", "mrsa_rsa_stops_total", "mrsa_rsa_rounds_total",
        "mrsa_tokens_total", "mrsa_rsa_node_seconds_bucket", "mrsa_engine_in_flight",
    ):
        assert family in text, family
    assert 'mrsa_admission_queue_depth{pool="test-pool"} 3.0' in text
    assert 'mrsa_admission_running{pool="test-pool"} 1.0' in text


async def test_background_runs_feed_the_same_metrics(client) -> None:
    import asyncio

    engine, http = client
    snap = Snapshot(
        ("mrsa_rsa_stops_total", {"reason": "rounds"}),
        ("mrsa_rsa_rounds_total", {}),
        ("mrsa_tokens_total", {"phase": "trace"}),
        ("mrsa_rsa_stops_total", {"reason": "cancelled"}),
    )
    created = await http.post("/v1/rsa/runs", json={**BODY, "rsa": {**RSA, "selection": "majority"}})
    assert created.status_code == 202
    run_id = created.json()["id"]
    for _ in range(500):
        status = (await http.get(f"/v1/rsa/runs/{run_id}")).json()["status"]
        if status == "completed":
            break
        await asyncio.sleep(0.01)
    assert status == "completed"
    trace_tokens = sum(r.completion_tokens for r in engine.requests)
    assert snap.delta() == [1, 2, trace_tokens, 0]
    engine.delay = 0.05  # slow enough to cancel mid-run
    slow = (await http.post("/v1/rsa/runs", json={**BODY, "rsa": RSA})).json()["id"]
    for _ in range(500):  # cancel mid-run: once it is running and has finished a node
        run = (await http.get(f"/v1/rsa/runs/{slow}")).json()
        if run["status"] == "running" and run["progress"]["nodes_finished"] >= 1:
            break
        await asyncio.sleep(0.01)
    assert (await http.delete(f"/v1/rsa/runs/{slow}")).status_code == 200
    assert snap.delta()[3] == 1


async def test_admission_pools_report_queue_depth_and_running() -> None:
    engine = FakeEngine(delay=0.02)
    settings = Settings(admission={"max_running_runs": 1, "max_queued_runs": 4})
    app = create_app(settings, engine_factory=lambda _: engine)
    body = {**BODY, "rsa": {**RSA, "population": 2, "k": 1}}
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            first = (await http.post("/v1/rsa/runs", json=body)).json()["id"]
            second = (await http.post("/v1/rsa/runs", json=body)).json()["id"]
            text = (await http.get("/metrics")).text
            assert 'mrsa_admission_queue_depth{pool="runs"} 1.0' in text
            assert 'mrsa_admission_running{pool="runs"} 1.0' in text
            assert 'mrsa_admission_running{pool="requests"} 0.0' in text
            for run_id in (second, first):
                await http.delete(f"/v1/rsa/runs/{run_id}")
            text = (await http.get("/metrics")).text
            assert 'mrsa_admission_queue_depth{pool="runs"} 0.0' in text
            assert 'mrsa_admission_running{pool="runs"} 0.0' in text
