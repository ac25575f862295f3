"""Plain requests through the replicas: the client's JSON to one replica's own OpenAI server.

The request goes unchanged but for ``model``, which becomes the name the replica serves
under; what the replica answers (status, JSON body or event stream) comes back as it is. The
replica is picked and failures are retried as for a trace (:mod:`.replicas`, :mod:`.retry`):
a refused connection, a 408, 429 or 5xx moves the request to another replica, while a 4xx is
the request's own fault and is the answer. A stream is relayed once it has started and is not
retried after that (the client already holds its first chunks).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable

import httpx
from httpx_sse import EventSource

from mrsa.engine.base import OpenAIResult, SamplingParams
from mrsa.engine.remote.errors import RetryableFailure, UpstreamUnavailable, raise_for_status
from mrsa.engine.remote.replicas import Replica, ReplicaPool
from mrsa.engine.remote.retry import RetryPolicy
from mrsa.engine.remote.trace import Trace


class ReplicaOpenAI:
    """:class:`engine.base.OpenAIServing` over the replicas of ``pool``."""

    def __init__(self, client: httpx.AsyncClient, pool: ReplicaPool, policy: RetryPolicy, served_names: list[str],
                 on_use: Callable[[], None]) -> None:
        self._client = client
        self._pool = pool
        self._policy = policy
        self._names = served_names
        self._on_use = on_use  # starts the health probes on first use

    async def chat_completions(self, body: dict) -> OpenAIResult:
        return await self._send("POST", "/v1/chat/completions", body)

    async def completions(self, body: dict) -> OpenAIResult:
        return await self._send("POST", "/v1/completions", body)

    async def tokenize(self, body: dict) -> OpenAIResult:
        return await self._send("POST", "/tokenize", body)

    async def detokenize(self, body: dict) -> OpenAIResult:
        return await self._send("POST", "/detokenize", body)

    async def models(self) -> OpenAIResult:
        """A replica's model card under each of our served names."""
        result = await self._send("GET", "/v1/models", None)
        cards = (result.body or {}).get("data") or []
        if result.status != 200 or not cards:
            return result
        return OpenAIResult(body={**result.body, "data": [{**cards[0], "id": n, "root": n} for n in self._names]})

    async def _send(self, method: str, path: str, body: dict | None) -> OpenAIResult:
        self._on_use()
        # A trace of no tokens: what the retry policy books a request's failures on.
        trace = Trace(prompt_ids=[], params=SamplingParams(max_tokens=1), request_id=f"plain-{uuid.uuid4().hex[:12]}")
        async for attempt in self._policy.retrying(trace):
            with attempt:
                return await self._once(method, path, body, trace)
        raise AssertionError("the retry policy returns or raises")

    async def _once(self, method: str, path: str, body: dict | None, trace: Trace) -> OpenAIResult:
        replica = self._pool.pick(trace.avoid)
        sent = body
        if body is not None and body.get("model") in self._names and replica.served_id:
            sent = {**body, "model": replica.served_id}
        replica.outstanding += 1
        replica.sent += 1
        streaming = False
        try:
            request = self._client.build_request(method, f"{replica.url}{path}", json=sent)
            resp = await self._client.send(request, stream=True)
            try:
                if resp.status_code in (408, 429) or resp.status_code >= 500:
                    await raise_for_status(resp)
                if resp.status_code == 200 and resp.headers.get("content-type", "").startswith("text/event-stream"):
                    streaming = True
                    return OpenAIResult(stream=self._relay(resp, replica))
                await resp.aread()
            finally:
                if not streaming:
                    await resp.aclose()
        except (httpx.TransportError, RetryableFailure) as exc:
            failure = exc if isinstance(exc, RetryableFailure) else RetryableFailure(
                f"{type(exc).__name__}: {exc}", eject=isinstance(exc, httpx.ConnectError))
            self._policy.record_failure(trace, replica, failure, 0)
            raise failure from None
        finally:
            if not streaming:
                replica.outstanding -= 1
        replica.record_success()
        try:
            answer = resp.json()
        except ValueError:
            answer = {"error": {"message": resp.text[:500], "type": "UpstreamError", "param": None,
                                "code": resp.status_code}}
        if body is not None and isinstance(answer, dict) and "model" in answer and "model" in body:
            answer["model"] = body["model"]
        return OpenAIResult(status=resp.status_code, body=answer)

    async def _relay(self, resp: httpx.Response, replica: Replica) -> AsyncIterator[str]:
        """The data of the replica's events (:class:`engine.base.OpenAIResult`); closing this
        closes the upstream response, which is how the replica learns to abort (shielded, so a
        cancellation cannot skip it)."""
        try:
            async with contextlib.aclosing(EventSource(resp).aiter_sse()) as events:
                async for event in events:
                    yield event.data
            replica.record_success()
        except (httpx.TransportError, httpx.StreamError) as exc:
            raise UpstreamUnavailable(f"upstream {replica.url} broke off the stream: {exc}") from None
        finally:
            replica.outstanding -= 1
            await asyncio.shield(asyncio.ensure_future(resp.aclose()))
