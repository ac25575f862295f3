"""Prometheus metrics served at ``/metrics``.

Names follow Prometheus conventions (``_total`` counters, ``_seconds`` histograms, base units).
What they answer:

- traffic: ``mrsa_http_requests_total{method,route,status}`` (route = the route's template, so
  cardinality stays bounded) and ``mrsa_http_request_duration_seconds``;
- RSA runs: started (``mrsa_rsa_runs_total``), ended by stop reason
  (``mrsa_rsa_stops_total{reason}``: rounds, consensus, budget, deadline, failed, cancelled),
  rounds completed, engine calls, and the latency of each node (``mrsa_rsa_node_seconds{kind}``,
  kind = trace or final);
- tokens: ``mrsa_tokens_total{phase}`` with phase = trace (RSA reasoning traces), final (the
  final aggregation) or plain (plain chat completions);
- load: ``mrsa_engine_in_flight`` (engine requests now running) and the admission gauges
  ``mrsa_admission_queue_depth{pool}`` / ``mrsa_admission_running{pool}`` that the admission
  layer feeds through :func:`track_admission`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from mrsa.rsa.events import FinalStarted, NodeFinished, NodeStarted, RoundCompleted, RsaEvent, RsaResult, RunCompleted

REQUESTS = Counter("mrsa_http_requests_total", "HTTP requests by method, route and status.", ["method", "route", "status"])
REQUEST_SECONDS = Histogram(
    "mrsa_http_request_duration_seconds", "Time to the end of the response body (streams included).",
    ["route"], buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
RSA_RUNS = Counter("mrsa_rsa_runs_total", "RSA runs started.")
STOP_REASONS = Counter("mrsa_rsa_stops_total", "RSA runs ended, by why they stopped.", ["reason"])
ROUNDS = Counter("mrsa_rsa_rounds_total", "RSA rounds completed (every node of the round ended).")
ENGINE_CALLS = Counter("mrsa_rsa_engine_calls_total", "Engine requests made by finished RSA runs.")
GENERATED_TOKENS = Counter("mrsa_generated_tokens_total", "Completion tokens returned to clients.")
TOKENS = Counter("mrsa_tokens_total", "Completion tokens generated, by phase (trace, final, plain).", ["phase"])
NODE_SECONDS = Histogram(
    "mrsa_rsa_node_seconds", "Wall time of one RSA engine call, launch to end.", ["kind"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640),
)
QUEUE_DEPTH = Gauge(
    "mrsa_admission_queue_depth", "Work waiting for admission (queued, not yet executing), per pool.", ["pool"]
)
RUNNING = Gauge("mrsa_admission_running", "Work admitted and executing, per pool.", ["pool"])
IN_FLIGHT = Gauge("mrsa_engine_in_flight", "Engine requests in flight.")


def track_in_flight(count: Callable[[], int]) -> None:
    """Read the engine's in-flight count at scrape time (never stale)."""
    IN_FLIGHT.set_function(count)


def track_admission(pool: str, queued: Callable[[], int], running: Callable[[], int]) -> None:
    """For the admission layer: read a pool's queue depth and running count at scrape time,
    e.g. ``track_admission(admission.what, lambda: admission.queued, lambda: admission.running)``."""
    QUEUE_DEPTH.labels(pool).set_function(queued)
    RUNNING.labels(pool).set_function(running)


router = APIRouter(include_in_schema=False)


@router.get("/metrics")
def scrape() -> Response:
    """The exposition text, at ``/metrics`` itself (a mounted app would redirect to ``/metrics/``)."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


class RunObserver:
    """Feeds one RSA run's events into the metrics: node latencies, rounds, tokens by phase,
    and at the end the stop reason and engine calls. One per run; ``clock`` for tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._started: dict[tuple[int, int], float] = {}
        self._final_started: float | None = None

    def observe(self, event: RsaEvent) -> None:
        match event:
            case NodeStarted():
                self._started[(event.round, event.index)] = self.clock()
            case NodeFinished():
                t0 = self._started.pop((event.round, event.index), None)
                if t0 is not None:
                    NODE_SECONDS.labels("trace").observe(self.clock() - t0)
                TOKENS.labels("trace").inc(event.completion_tokens)
            case RoundCompleted():
                ROUNDS.inc()
            case FinalStarted():
                self._final_started = self.clock()
            case RunCompleted():
                self.completed(event.result)

    def completed(self, result: RsaResult) -> None:
        final = [n for n in result.trace if n.kind == "final"]
        if final and self._final_started is not None:
            NODE_SECONDS.labels("final").observe(self.clock() - self._final_started)
        TOKENS.labels("final").inc(sum(n.completion_tokens for n in final))
        ENGINE_CALLS.inc(result.calls)
        GENERATED_TOKENS.inc(result.usage.completion_tokens)
        STOP_REASONS.labels(result.stop_reason).inc()

    def failed(self, calls: int, completion_tokens: int) -> None:
        ENGINE_CALLS.inc(calls)
        GENERATED_TOKENS.inc(completion_tokens)
        STOP_REASONS.labels("failed").inc()

    @staticmethod
    def cancelled() -> None:
        STOP_REASONS.labels("cancelled").inc()


class MetricsMiddleware:
    """Pure ASGI middleware counting requests by route template and status, and timing them to
    the end of the body (a stream's whole life). ``/metrics`` itself is not counted."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/metrics"):
            await self.app(scope, receive, send)
            return
        status = 500  # what the client gets if the app dies before answering
        t0 = time.perf_counter()

        async def record_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            REQUESTS.labels(scope["method"], template, str(status)).inc()
            REQUEST_SECONDS.labels(template).observe(time.perf_counter() - t0)
