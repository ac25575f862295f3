"""The replicas: what is known about each one, and which one takes the next attempt.

A replica is *verified* once its tokenizer and context length passed the start-up checks
(:mod:`.startup`) and *healthy* while it answers; only verified replicas are ever sent a
request. Health changes here (ejection after failures) and in :mod:`.health` (probes).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from mrsa.engine.remote.errors import UpstreamUnavailable

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Replica:
    """One OpenAI-compatible vLLM server and its counters (compared by identity)."""

    url: str
    served_id: str = ""  # the model id it serves under (its /v1/models)
    max_model_len: int = 0
    verified: bool = False
    healthy: bool = False
    outstanding: int = 0
    sent: int = 0
    failures: int = 0  # total failed attempts
    consecutive_failures: int = 0
    not_before: float = 0.0  # 429 Retry-After: avoid until this monotonic time

    def record_failure(self, eject_after: int, *, eject: bool = False) -> None:
        self.failures += 1
        self.consecutive_failures += 1
        if self.healthy and (eject or self.consecutive_failures >= eject_after):
            log.warning("ejecting upstream %s after %d failure(s)", self.url, self.consecutive_failures)
            self.healthy = False

    def record_success(self) -> None:
        self.consecutive_failures = 0

    def readmit(self) -> None:
        """Back in the pool after a good health probe, with a clean failure streak."""
        log.info("re-admitting upstream %s", self.url)
        self.consecutive_failures = 0
        self.healthy = True


class ReplicaPool:
    """Every configured replica, in configuration order (a URL given twice counts once)."""

    def __init__(self, urls: Iterable[str]) -> None:
        self.replicas = [Replica(url=u.rstrip("/")) for u in dict.fromkeys(urls)]

    def __iter__(self) -> Iterator[Replica]:
        return iter(self.replicas)

    def __len__(self) -> int:
        return len(self.replicas)

    def any_healthy(self) -> bool:
        return any(r.healthy for r in self.replicas)

    def candidates(self, avoid: set[Replica], *, strict: bool = False) -> list[Replica]:
        """Replicas that may take an attempt of a trace that already failed on ``avoid``.

        ``strict``: only fresh ones (not in ``avoid``, healthy, not in a 429 back-off).
        """
        now = time.monotonic()
        live = [r for r in self.replicas if r.healthy and r.verified]
        fresh = [r for r in live if r not in avoid]
        ready = [r for r in fresh if r.not_before <= now]
        if strict:
            return ready
        # Prefer a replica this trace has not failed on and not in a 429 back-off; then any
        # healthy one; then, when every replica is ejected, any verified one this trace has not
        # tried yet (it may be back before its next health probe). A lone upstream stays a
        # candidate whatever failed on it: it is a router (or a load balancer) in front of many
        # engines, which sends the retry to another one; avoiding it would fail the trace.
        alone = len(self.replicas) == 1
        return ready or fresh or live or [r for r in self.replicas if r.verified and (alone or r not in avoid)]

    def pick(self, avoid: set[Replica]) -> Replica:
        """The least loaded candidate: fewest outstanding requests, ties to the fewest sent."""
        pool = self.candidates(avoid)
        if not pool:
            raise UpstreamUnavailable(self.all_down())
        return min(pool, key=lambda r: (r.outstanding, r.sent))

    def all_down(self) -> str:
        return f"all {len(self.replicas)} upstream replicas are down: " + ", ".join(
            r.url for r in self.replicas
        )

    def describe(self) -> str:
        """The replicas for a log line, the unreachable ones marked."""
        return ", ".join(f"{r.url}{'' if r.healthy else ' (down)'}" for r in self.replicas)

