"""Optional API keys: when any are configured, every endpoint but ``/health`` needs
``Authorization: Bearer <key>``; anything else gets 401 in the OpenAI envelope.

Keys come from ``MRSA_API_KEYS`` (comma-separated) and/or ``MRSA_API_KEY_FILE`` (one per line,
``#`` comments). A presented key is compared with every configured key through
``hmac.compare_digest`` on SHA-256 digests, without an early exit, so neither the time nor the
length of the comparison tells which bytes matched. Keys are never logged; the request carries
only the key's hash (``request.state.owner``), which is what background runs are filed under:
a run is visible only to the key that created it.

A pure ASGI middleware: it answers before the body is read and wraps streaming responses
without buffering them.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from mrsa.service.errors import APIError

# The trace view's page and script hold no data: its API calls carry the key typed in the page.
OPEN_PATHS = frozenset({"/health", "/trace", "/trace/trace.js"})


def load_keys(keys: str | None, key_file: Path | None) -> list[str]:
    """The configured keys, blank entries dropped."""
    found = [k.strip() for k in (keys or "").split(",")]
    if key_file is not None:
        for line in key_file.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            found.append(line)
    return [k for k in found if k]


def key_hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: Iterable[str]) -> None:
        self.app = app
        self._digests = [key_hash(k) for k in keys]

    def _match(self, presented: str) -> bool:
        digest = key_hash(presented)
        ok = False
        for known in self._digests:  # no early exit: the time says nothing about which key
            ok |= hmac.compare_digest(digest, known)
        return ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._digests or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        auth = ""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                auth = value.decode("latin-1")
                break
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip() or not self._match(token.strip()):
            message = "Missing API key: send Authorization: Bearer <key>." if not auth else "Incorrect API key."
            response = APIError(
                message, status=401, param=None, code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            ).response()
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["owner"] = key_hash(token.strip()).hex()
        await self.app(scope, receive, send)
