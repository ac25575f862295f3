"""Background health probes: eject replicas that stop answering, re-admit those that recover.

Every ``upstream_health_interval_s`` each replica's ``/health`` is probed. A healthy replica
that fails a probe counts a failure (``upstream_eject_after`` in a row, probes and requests
alike, eject it); an ejected one is re-admitted by its first good probe. A replica that was
unreachable at start is verified first (:func:`.startup.admit_late`), in a thread: the checks
are blocking and must not stall the requests streaming on the loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import httpx

from mrsa.engine.config import EngineConfig
from mrsa.engine.remote.errors import UpstreamMismatch
from mrsa.engine.remote.replicas import Replica, ReplicaPool

log = logging.getLogger(__name__)


class HealthMonitor:
    """Probes ``pool`` from a task of the running loop (started on first use)."""

    def __init__(
        self,
        pool: ReplicaPool,
        client: httpx.AsyncClient,
        config: EngineConfig,
        admit_late: Callable[[Replica], None],
    ) -> None:
        self._pool = pool
        self._client = client
        self._interval = config.upstream_health_interval_s
        self._eject_after = config.upstream_eject_after
        self._admit_late = admit_late
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start probing unless already probing (needs a running loop)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def aclose(self) -> None:
        """Stop probing; returns once the probe task has ended."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])  # unlike awaiting it, keeps our own cancellation

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await asyncio.gather(*(self.probe(r) for r in self._pool), return_exceptions=True)

    async def probe(self, r: Replica) -> None:
        try:
            resp = await self._client.get(f"{r.url}/health", timeout=min(5.0, self._interval * 2))
            ok = resp.status_code == 200
        except httpx.HTTPError:
            ok = False
        if not ok:
            if r.healthy:
                r.record_failure(self._eject_after)
            return
        if r.healthy:
            return
        if not r.verified:
            try:
                await asyncio.to_thread(self._admit_late, r)
            except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
                log.warning("upstream %s healthy but not ready: %s", r.url, exc)
                return
            except UpstreamMismatch as exc:
                log.error("upstream %s rejected: %s", r.url, exc)
                return
        r.readmit()
