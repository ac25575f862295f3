"""One RSA run as a stream of progress-event dicts, from a service or from an engine.

Both backends yield the same dicts: those the service sends in its SSE chunks' ``rsa`` field
(``run_started``, ``node_started``, ``node_finished``, ``round_completed``, ``final_started``),
each event's own wire form (:mod:`rsa.events`), then one ``run_completed`` (the run's summary)
carrying the ``usage`` the service streams in the chunk after it. The evaluation reads the
population's answers per round from ``node_finished`` events, so what it scores is exactly what
a client of the service sees.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Protocol

import httpx
from httpx_sse import aconnect_sse

from mrsa.engine.base import Engine
from mrsa.rsa import RsaParams, RsaRun
from mrsa.rsa.events import FinalDelta, RunCompleted, RunFailed


class RunError(Exception):
    """A run ended with an error instead of a result (an error chunk, or an HTTP error)."""


class Backend(Protocol):
    model: str

    def run(self, messages: list[dict[str, str]], params: RsaParams, run_id: str,
            effort: str | None = None) -> AsyncIterator[dict]: ...


def _rsa_body(params: RsaParams) -> dict:
    return params.model_dump(exclude_none=True, exclude_defaults=True) | {
        # always explicit, so the server's defaults cannot change the configuration
        k: getattr(params, k)
        for k in ("population", "k", "rounds", "tail_tokens", "trace_max_tokens", "selection", "temperature",
                  "aggregation_prompt", "method")
    }


class HttpBackend:
    """Runs through ``POST /v1/chat/completions`` with ``stream: true`` on a running service."""

    def __init__(
        self, url: str, model: str | None = None, api_key: str | None = None, timeout: float = 30.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = client or httpx.AsyncClient(
            base_url=url.rstrip("/"), headers=headers, timeout=httpx.Timeout(timeout, read=None)
        )
        self.model = model or ""

    async def resolve_model(self) -> str:
        if not self.model:
            response = await self.client.get("/v1/models")
            response.raise_for_status()
            self.model = response.json()["data"][0]["id"]
        return self.model

    async def aclose(self) -> None:
        await self.client.aclose()

    async def run(self, messages: list[dict[str, str]], params: RsaParams, run_id: str,
                  effort: str | None = None) -> AsyncIterator[dict]:
        """``effort``: send that ``reasoning_effort`` and only ``params``' seed, so the server's
        preset decides the method (what a client asking for an effort gets)."""
        body = {
            "model": await self.resolve_model(),
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "rsa": _rsa_body(params),
        }
        if effort is not None:
            body["reasoning_effort"] = effort
            body["rsa"] = {"seed": params.seed} if params.seed is not None else {}
        completed: dict | None = None
        async with aconnect_sse(self.client, "POST", "/v1/chat/completions", json=body) as source:
            response = source.response
            if response.status_code != 200:
                await response.aread()
                raise RunError(f"HTTP {response.status_code}: {response.text[:500]}")
            async for sse in source.aiter_sse():
                if sse.data == "[DONE]":
                    break
                chunk = sse.json()
                if "error" in chunk:
                    raise RunError(chunk["error"].get("message", "error chunk"))
                event = chunk.get("rsa")
                if event is not None:
                    if event.get("event") == "run_completed":
                        completed = dict(event)  # usage follows in its own chunk
                    else:
                        yield event
                if chunk.get("usage") and completed is not None:
                    completed["usage"] = chunk["usage"]
        if completed is None:
            raise RunError("the stream ended without run_completed")
        yield completed


class EngineBackend:
    """Runs :class:`rsa.RsaRun` in-process on an engine (the embedded vLLM engine, or a fake),
    yielding what :class:`HttpBackend` reads from the service: each event's own wire form
    (:mod:`rsa.events`), ``run_completed`` with the usage the service streams after it."""

    def __init__(self, engine: Engine, *, keep_traces: bool = False) -> None:
        self.engine = engine
        self.model = engine.model_name
        self.keep_traces = keep_traces

    async def run(self, messages: list[dict[str, str]], params: RsaParams, run_id: str,
                  effort: str | None = None) -> AsyncIterator[dict]:
        if effort is not None:
            raise RunError("an effort level is the server's preset: evaluate it with --url")
        run = RsaRun(self.engine, messages, params, run_id=run_id)
        yield run.started.wire()
        try:
            async with aclosing(run.events()) as events:
                async for event in events:
                    if isinstance(event, RunCompleted):
                        yield event.wire(with_trace=self.keep_traces or params.return_trace, with_usage=True)
                    elif not isinstance(event, FinalDelta):
                        yield event.wire()
        except RunFailed as exc:  # as the service's error chunk ends a run: a failed run, not a crash
            raise RunError(str(exc)) from exc
