"""When a failed attempt is retried, how long after, and when the trace gives up.

* A first failure since the last token, with a fresh replica available: retry at once there.
* A 429 with no other replica to go to: wait its ``Retry-After`` (capped); otherwise
  full-jitter exponential backoff (``upstream_backoff_s`` .. ``upstream_backoff_max_s``).
* Give up (:class:`UpstreamUnavailable`) after ``upstream_attempts`` failures in a row without
  a new token (at least one more than there are replicas), or ``upstream_retry_deadline_s``
  spent retrying since the last token.

Failures are booked here too: the replica is avoided by this trace, and ejected after
``upstream_eject_after`` consecutive failures unless it was merely busy (429).
"""

from __future__ import annotations

import logging
import time

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_random_exponential

from mrsa.engine.config import EngineConfig
from mrsa.engine.remote.errors import RetryableFailure, UpstreamUnavailable
from mrsa.engine.remote.replicas import Replica, ReplicaPool
from mrsa.engine.remote.trace import Trace

log = logging.getLogger(__name__)


class RetryPolicy:
    """The retry rules of the module docstring over ``pool``, with ``config``'s settings."""

    def __init__(self, config: EngineConfig, pool: ReplicaPool) -> None:
        self._cfg = config
        self._pool = pool
        self._backoff = wait_random_exponential(
            multiplier=config.upstream_backoff_s, max=config.upstream_backoff_max_s
        )

    def retrying(self, trace: Trace) -> AsyncRetrying:
        """The attempts of ``trace``: ``async for attempt in ...: with attempt: ...``."""
        return AsyncRetrying(
            retry=retry_if_exception_type(RetryableFailure),
            wait=lambda rs: self._wait(trace, rs),
            stop=lambda rs: self._stop(trace),
            retry_error_callback=lambda rs: self._give_up(trace, rs),
            before_sleep=lambda rs: log.info(
                "request %s: %s; retrying in %.2fs",
                trace.request_id,
                rs.outcome.exception() if rs.outcome else "?",
                rs.upcoming_sleep,
            ),
        )

    def record_failure(self, trace: Trace, replica: Replica, exc: RetryableFailure, got: int) -> None:
        """Book a failed attempt that delivered ``got`` tokens before it broke."""
        trace.avoid.add(replica)
        # The retry deadline counts time spent retrying since the last token, not the wait for
        # a first token: a request queued long on a busy replica still deserves its retries.
        if got or not trace.failures_since_progress:
            trace.failures_since_progress = 0
            trace.retrying_since = time.monotonic()
        trace.failures_since_progress += 1
        if exc.retry_after is not None:
            replica.not_before = time.monotonic() + min(exc.retry_after, self._cfg.upstream_retry_after_max_s)
            return  # busy, not broken
        replica.record_failure(self._cfg.upstream_eject_after, eject=exc.eject)
        log.warning("request %s on %s failed: %s", trace.request_id, replica.url, exc)

    def _wait(self, trace: Trace, rs: RetryCallState) -> float:
        exc = rs.outcome.exception() if rs.outcome else None
        if trace.failures_since_progress <= 1 and self._pool.candidates(trace.avoid, strict=True):
            # First failure since the last token and a fresh replica can take over: go now.
            return 0.0
        if isinstance(exc, RetryableFailure) and exc.retry_after is not None:
            if not self._pool.candidates(trace.avoid, strict=True):
                return min(exc.retry_after, self._cfg.upstream_retry_after_max_s)
        return self._backoff(rs)

    def _stop(self, trace: Trace) -> bool:
        return (
            trace.failures_since_progress >= self._attempts()
            or time.monotonic() - trace.retrying_since > self._cfg.upstream_retry_deadline_s
        )

    def _attempts(self) -> int:
        return max(self._cfg.upstream_attempts, len(self._pool) + 1)

    def _give_up(self, trace: Trace, rs: RetryCallState) -> None:
        last = rs.outcome.exception() if rs.outcome else None
        raise UpstreamUnavailable(
            f"no upstream replica could serve request {trace.request_id}: "
            f"{trace.failures_since_progress} failed attempt(s) in a row, last: {last}"
        )
