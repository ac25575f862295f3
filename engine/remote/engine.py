""":class:`RemoteEngine`: the start-up checks, the replica pool, the health probes and the
retried attempts, behind :class:`engine.base.Engine`.

Each ``generate()`` is a :class:`.trace.Trace` served by its own task, so that the consumer
only reads a queue and ``abort`` (or the consumer going away) is one cancellation of that task,
which closes the upstream response (:mod:`.stream`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from functools import partial

import httpx

from mrsa.engine.base import AsyncCloseable, EngineError, GenerationDelta, SamplingParams
from mrsa.engine.config import EngineConfig
from mrsa.engine.reasoning import reasoning_parsers
from mrsa.engine.remote import startup, stream
from mrsa.engine.remote.errors import UpstreamUnavailable
from mrsa.engine.remote.health import HealthMonitor
from mrsa.engine.remote.passthrough import ReplicaOpenAI
from mrsa.engine.remote.replicas import ReplicaPool
from mrsa.engine.remote.retry import RetryPolicy
from mrsa.engine.remote.trace import Trace
from mrsa.engine.tokenizer import HFTokenizer

log = logging.getLogger(__name__)


class RemoteEngine(AsyncCloseable):
    """:class:`engine.base.Engine` over OpenAI-compatible vLLM servers."""

    def __init__(self, config: EngineConfig) -> None:
        if not config.upstreams:
            raise ValueError("RemoteEngine needs at least one upstream URL")
        self._cfg = config
        self._pool = ReplicaPool(config.upstreams)
        timeout = httpx.Timeout(
            connect=config.upstream_connect_timeout_s,
            read=config.upstream_read_timeout_s,
            write=30.0,
            pool=30.0,
        )
        model = startup.discover(self._pool, config.model, timeout)
        self.tokenizer = HFTokenizer(model)
        self.reasoning_parser = reasoning_parsers(config.reasoning_parser, self.tokenizer)
        startup.verify_reachable(self._pool, self.tokenizer, timeout)
        self.served_names = served_names(config, self._pool)
        self.model_name = self.served_names[0]
        self.max_model_len: int = min(r.max_model_len for r in self._pool if r.verified)
        self._client = httpx.AsyncClient(
            timeout=timeout,
            limits=httpx.Limits(
                max_connections=config.upstream_max_connections,
                max_keepalive_connections=config.upstream_max_connections,
            ),
        )
        self._policy = RetryPolicy(config, self._pool)
        self.openai = ReplicaOpenAI(self._client, self._pool, self._policy, self.served_names, self._start_health)
        admit = partial(
            startup.admit_late, tokenizer=self.tokenizer, min_model_len=self.max_model_len, timeout=timeout
        )
        self._health = HealthMonitor(self._pool, self._client, config, admit)
        self._traces: dict[str, Trace] = {}
        self._in_flight = 0
        self._closed = False
        with contextlib.suppress(RuntimeError):  # no running loop: started on first use
            asyncio.get_running_loop()
            self._health.start()
        log.info(
            "remote engine: %s over %s (max_model_len %d)",
            self.model_name, self._pool.describe(), self.max_model_len,
        )

    # ------------------------------------------------------------------ Engine protocol

    async def generate(
        self, prompt_ids: Sequence[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[GenerationDelta]:
        self._health.start()
        trace = Trace(prompt_ids=list(prompt_ids), params=params, request_id=request_id)
        trace.task = asyncio.get_running_loop().create_task(self._run(trace))
        self._traces[request_id] = trace
        try:
            while True:
                item = await trace.queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finished:
                    return
        finally:
            if self._traces.get(request_id) is trace:
                del self._traces[request_id]
            if trace.running():
                trace.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await trace.task

    async def abort(self, request_id: str) -> None:
        trace = self._traces.get(request_id)
        if trace is not None and trace.running():
            trace.aborted = True
            trace.cancel()

    def num_in_flight(self) -> int:
        return self._in_flight

    def _start_health(self) -> None:
        self._health.start()

    async def check_health(self) -> None:
        if not self._pool.any_healthy():
            raise UpstreamUnavailable(self._pool.all_down())

    async def aclose(self) -> None:
        """Cancel every request (each closes its upstream response), stop the health probes,
        close the connection pool. Idempotent."""
        if self._closed:
            return
        self._closed = True
        tasks = [t.task for t in self._traces.values() if t.task is not None]
        for trace in list(self._traces.values()):
            trace.cancel()
        if tasks:
            # asyncio.wait, not gather: a cancelled gather would cancel these tasks a second time.
            await asyncio.wait(tasks)
        await self._health.aclose()
        await self._client.aclose()

    # ------------------------------------------------------------------ one request

    async def _run(self, trace: Trace) -> None:
        """Attempts until the trace is served; its outcome goes to the consumer's queue."""
        self._in_flight += 1
        try:
            async for try_ in self._policy.retrying(trace):
                with try_:
                    await stream.attempt(self._client, trace, self._pool, self.tokenizer, self._policy)
        except asyncio.CancelledError:
            if trace.aborted and not trace.done:
                trace.push(GenerationDelta([], "", True, "abort", prompt_tokens=len(trace.prompt_ids)))
                return
            raise
        except EngineError as exc:
            trace.queue.put_nowait(exc)
        except Exception as exc:  # a bug here must not hang the consumer
            log.exception("request %s failed", trace.request_id)
            trace.queue.put_nowait(EngineError(f"remote engine error: {exc!r}"))
        finally:
            self._in_flight -= 1


def served_names(config: EngineConfig, pool: ReplicaPool) -> list[str]:
    """The names clients may use in ``model``: ``served_model_name``, else what the user passed
    as the model (as the embedded engine and ``vllm serve`` do), else what the replicas serve
    under (their ``/v1/models`` id)."""
    if config.served_model_name:
        return list(config.served_model_name)
    return [config.model or next(r.served_id for r in pool if r.served_id)]
