"""The FastAPI application: the engine is started in the lifespan and shared by all requests.

``create_app`` takes an engine factory so tests can run the real HTTP stack over a fake engine,
and so service/ never imports vLLM itself.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from mrsa.engine.base import Engine, EngineError
from mrsa.engine.config import EngineConfig
from mrsa.service import metrics
from mrsa.service.admission import Admission, TicketScope
from mrsa.service.auth import ApiKeyMiddleware, load_keys
from mrsa.service.body_limit import BodyLimitMiddleware
from mrsa.service.cross_site import CrossSiteMiddleware
from mrsa.service.errors import install_error_handlers
from mrsa.service.logs import RequestIdMiddleware
from mrsa.service.routes import router
from mrsa.service.runs import RunManager
from mrsa.service.settings import Settings
from mrsa.service.shutdown import Drain, ShutdownMiddleware
from mrsa.service.trace_view import router as trace_router

log = logging.getLogger(__name__)
EngineFactory = Callable[[EngineConfig], Engine]


def create_app(settings: Settings | None = None, engine_factory: EngineFactory | None = None) -> FastAPI:
    settings = settings or Settings()

    def default_engine_factory(config: EngineConfig) -> Engine:
        from mrsa.engine import create_engine

        return create_engine(config, settings.cache_dir)

    factory = engine_factory or default_engine_factory

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        limits = settings.admission
        app.state.plain_admission = Admission(
            "requests", limits.max_running_requests, limits.max_queued_requests, limits.retry_after_s, limits.key_share
        )
        runs = RunManager(
            settings.store_path,
            Admission("runs", limits.max_running_runs, limits.max_queued_runs, limits.retry_after_s, limits.key_share),
            ttl_s=settings.store_ttl_s,
            store_url=settings.store_url,
            lease_s=settings.store_lease_s,
        )
        runs.open()  # a store another server holds stops us here, before a model is loaded
        app.state.runs = runs
        try:
            engine = factory(settings.engine)
        except BaseException:
            await runs.close()
            raise
        app.state.engine = engine
        app.state.settings = settings.for_model(engine.model_name)  # its shipped presets, if any
        metrics.track_in_flight(engine.num_in_flight)
        log.info("serving %s (max_model_len %d)", engine.model_name, engine.max_model_len)
        for pool in (app.state.plain_admission, runs.admission):  # scraped, never stale
            metrics.track_admission(pool.what, lambda p=pool: p.queued, lambda p=pool: p.running)
        try:
            with contextlib.suppress(EngineError):  # builds vLLM's plain-request layer now, not on a first request
                await engine.openai.models()
            resumed = await runs.start(engine)
            if resumed:
                log.info("resumed %d background runs", resumed)
            yield
        finally:
            await runs.close()
            await engine.aclose()

    app = FastAPI(title="markovian-rsa", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.started = int(time.time())
    app.state.drain = Drain()  # begun when the server stops: open requests end at once
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(trace_router)
    app.include_router(metrics.router)
    app.add_middleware(TicketScope)  # innermost: no admission ticket outlives its request
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(CrossSiteMiddleware, allowed_origins=settings.allowed_origins)  # before the body is read
    keys = load_keys(settings.api_keys.get_secret_value() if settings.api_keys else None, settings.api_key_file)
    app.add_middleware(ApiKeyMiddleware, keys=keys)  # outermost: 401 before the body is read
    app.add_middleware(ShutdownMiddleware, drain=app.state.drain)
    if keys:
        log.info("API keys required (%d configured)", len(keys))
    # Outermost: every response (401 and 413 included) is counted and carries a request id.
    app.add_middleware(metrics.MetricsMiddleware)
    app.add_middleware(RequestIdMiddleware)
    return app
