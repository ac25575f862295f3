"""How a request to the replicas can fail, and which failure an upstream's answer is.

Three outcomes reach the caller as :class:`engine.base.EngineError` (the service answers with
their ``status``); :class:`RetryableFailure` never leaves the package: it marks an attempt that
another attempt, on this replica or another, may get through. A 4xx answer is the request's
fault (no retry, status 400); 408, 429 and 5xx, in the status line or in an error event of the
stream, are retryable.
"""

from __future__ import annotations

import contextlib
import json
import time
from email.utils import parsedate_to_datetime
from typing import NoReturn

import httpx

from mrsa.engine.base import EngineError


class UpstreamUnavailable(EngineError):
    """No upstream replica could serve the request (all down, or all attempts failed)."""

    status = 503
    code = "upstream_unavailable"


class UpstreamRejected(EngineError):
    """An upstream answered 4xx: the request itself is invalid; retrying cannot help."""

    status = 400
    code = "invalid_request"


class UpstreamMismatch(EngineError):
    """A replica serves a different model/tokenizer than the one loaded locally."""


class RetryableFailure(Exception):
    """One attempt failed in a way another attempt may not.

    ``retry_after``: the replica asked for a pause (429), it is busy rather than broken.
    ``eject``: the replica is gone (connection refused), eject it without waiting for more.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, eject: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.eject = eject


async def raise_for_status(resp: httpx.Response) -> NoReturn:
    """A non-200 answer to a completion request, as the failure it is.

    429 (busy: retry after its ``Retry-After``), 408 and 5xx are retryable; any other 4xx is
    the request's fault.
    """
    body = (await resp.aread()).decode(errors="replace")[:500]
    status = resp.status_code
    if status == 429:
        raise RetryableFailure(
            f"upstream {resp.url.host}:{resp.url.port} busy (429)", retry_after=_retry_after(resp)
        )
    if status >= 500 or status == 408:
        raise RetryableFailure(f"upstream answered {status}: {body}")
    message = body
    with contextlib.suppress(ValueError, KeyError, TypeError):
        message = json.loads(body)["error"]["message"]
    raise UpstreamRejected(f"upstream rejected the request ({status}): {message}")


def raise_stream_error(error: dict) -> NoReturn:
    """An error event inside a 200 stream (vLLM's way to report a failure mid-generation)."""
    code = error.get("code")
    try:
        code = int(code)
    except (TypeError, ValueError):
        code = 500
    message = error.get("message", "upstream error")
    if 400 <= code < 500 and code not in (408, 429):
        raise UpstreamRejected(f"upstream rejected the request ({code}): {message}")
    raise RetryableFailure(f"upstream error mid-stream ({code}): {message}")


def _retry_after(resp: httpx.Response) -> float | None:
    """``Retry-After`` in seconds from now (delta-seconds or an HTTP date); None if absent."""
    value = resp.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None
