"""Requests a browser page of another site could make: refused before any work starts.

With API keys off (the default) a page anywhere could POST to a server on the visitor's machine
or network: a ``text/plain`` body is a "simple" request the browser sends without asking, and
the routes that parse their body by hand ran it. Two checks, for every method that changes
state (POST, PUT, PATCH, DELETE):

- an ``Origin`` header (browsers send one on every such request) that is neither the server's
  own (``scheme://Host``) nor one of ``allowed_origins`` gets 403 ``cross_origin_forbidden``;
- a non-empty body whose ``Content-Type`` is not JSON (``application/json`` or ``*/*+json``)
  gets 415 ``unsupported_media_type``: every route here reads JSON. A body without a
  ``Content-Type`` stays accepted (curl and scripts; browsers always name one).

Clients that are not browsers (the OpenAI SDKs, curl) send no ``Origin``: they pass.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from mrsa.service.errors import APIError

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class CrossSiteMiddleware:
    def __init__(self, app: ASGIApp, allowed_origins: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed = {o.rstrip("/").lower() for o in allowed_origins}

    def _own_origin(self, scope: Scope, origin: str, host: str) -> bool:
        return origin in (f"{scope.get('scheme', 'http')}://{host}", f"https://{host}") if host else False

    def _refusal(self, scope: Scope) -> APIError | None:
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope.get("headers", ())}
        origin = headers.get("origin", "").rstrip("/").lower()
        host = headers.get("host", "").lower()
        if origin and "*" not in self.allowed and origin not in self.allowed and not self._own_origin(scope, origin, host):
            return APIError(f"Requests from origin {origin!r} are not allowed (allowed_origins).",
                            status=403, param=None, code="cross_origin_forbidden")
        content_type = headers.get("content-type")
        has_body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
        if has_body and content_type is not None and not is_json(content_type):
            return APIError(f"Content-Type {content_type!r} is not supported: send application/json.",
                            status=415, param=None, code="unsupported_media_type")
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in STATE_CHANGING:
            refusal = self._refusal(scope)
            if refusal is not None:
                await refusal.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)
