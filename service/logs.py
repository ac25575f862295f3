"""Structured logs: one JSON object per line, carrying the request id and the run id.

Why JSON: log pipelines (Loki, Elasticsearch, CloudWatch) index fields, so "every line of run
X" is a query rather than a grep. Why context variables: a request's id is set once by
:class:`RequestIdMiddleware` and a run's id once by :func:`bind_run`; every record logged
afterwards in that request (its tasks included: asyncio copies the context into the tasks it
creates) carries them without any call site passing them along. uvicorn's own loggers propagate
to the same root handler (``uvicorn.run(..., log_config=None)``), so its access lines are JSON
too, with method, path and status as fields.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from contextvars import ContextVar
from typing import Any

REQUEST_ID: ContextVar[str | None] = ContextVar("mrsa_request_id", default=None)
RUN_ID: ContextVar[str | None] = ContextVar("mrsa_run_id", default=None)
HEADER = "x-request-id"

# Attributes every LogRecord has; anything else was passed with ``extra=`` and becomes a field.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName", "color_message"}


def bind_run(run_id: str) -> None:
    """Tag every later record of this context (and tasks started from it) with ``run_id``."""
    RUN_ID.set(run_id)


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", "request_id", "run_id", ...extra, "exc"}``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, var in (("request_id", REQUEST_ID), ("run_id", RUN_ID)):
            value = getattr(record, key, None) or var.get()
            if value is not None:
                entry[key] = value
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, version, status = record.args
            entry.update(client=client, method=method, path=path, http_version=version, status=status)
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value if isinstance(value, str | int | float | bool | None) else repr(value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup(level: str = "info", fmt: str = "json") -> None:
    """Route every logger (uvicorn's and vLLM's included) to one stderr handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


class RequestIdMiddleware:
    """Pure ASGI middleware (a ``BaseHTTPMiddleware`` would buffer streams and break
    disconnect detection): takes the client's ``X-Request-ID`` or makes one, binds it for the
    request's logs and returns it in the response headers."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(HEADER.encode())
        request_id = given.decode("latin-1")[:128] if given else uuid.uuid4().hex
        token = REQUEST_ID.set(request_id)
        run_token = RUN_ID.set(None)

        async def send_with_id(message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != HEADER.encode()]
                message = {**message, "headers": [*headers, (HEADER.encode(), request_id.encode("latin-1"))]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            RUN_ID.reset(run_token)
            REQUEST_ID.reset(token)
