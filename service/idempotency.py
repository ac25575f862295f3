"""``Idempotency-Key``: a creating request sent again (a retry after a timeout or a crash)
returns what the first one created instead of creating it twice.

As Stripe and OpenAI's SDKs use it: the header on ``POST /v1/rsa/runs``, a background
``POST /v1/chat/completions`` and a background ``POST /v1/responses``. A repeat with the same
key and the same body (the same JSON, whatever its spacing or key order, to the same route)
answers the object the first created, as it stands now, with ``Idempotent-Replayed: true``
and the first answer's status; no second run starts. The same key with another body is a 409
``idempotency_key_reused``. Keys belong to the caller's API key (every caller is one tenant
with keys off), are written in the run's own transaction (a crash between accepting a run and
answering, then a retry, makes no duplicate), and expire with their object.

A live request (answered while its client waits) keeps nothing to return again, so the header
changes nothing there: a retry runs again, as OpenAI's own endpoints do.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from fastapi import Request

from mrsa.service.errors import APIError

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255


def idempotency(request: Request, body: Any) -> tuple[str, str] | None:
    """``(key, digest of route and body)`` of a request that sends the header, else None."""
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise APIError(f"{HEADER} must be 1 to {MAX_KEY_LENGTH} printable characters.", param=HEADER,
                       code="invalid_value")
    canonical = json.dumps([request.url.path, body], sort_keys=True, separators=(",", ":"))
    return key, hashlib.sha256(canonical.encode()).hexdigest()
