"""One attempt of a trace on one replica: a streamed ``/v1/completions`` request.

Nothing is re-tokenized on the way: the prompt goes as token ids and ``return_token_ids``
brings the generated ids back with every chunk of the server-sent event stream.

**Continuation.** An attempt starts where the trace stands: if an earlier attempt broke after
some tokens, those tokens were already handed to the consumer, so they are kept. The prompt is
extended by the received ids and ``max_tokens`` reduced by their count (same seed, same stop
strings). The consumer sees one consistent stream, no token is repeated or retracted, and
usage counts exactly the tokens delivered (``prompt_tokens`` stays the original prompt's
length). Re-issuing the whole request and dropping the streamed tokens was rejected: deltas are
already consumed (the final answer streams to the client), and a seeded re-run on another
replica is not guaranteed to repeat them. The continuation is a valid sample of the model given
the prefix, but not the one the unbroken request would have produced (the sampler's RNG
restarts from the seed), and a stop string straddling the break is not detected.

**Closing.** Closing an unfinished streamed response drops its connection, which is how the
replica learns that nobody wants the rest (vLLM aborts a request whose client went away). The
response is therefore closed in a shielded task that no cancellation can cut short, which is
also why the stream is read with httpx-sse's ``EventSource`` over a response sent here rather
than with ``aconnect_sse`` (whose close a cancellation can interrupt).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
from httpx_sse import EventSource

from mrsa.engine.base import GenerationDelta, Tokenizer
from mrsa.engine.remote.errors import (
    RetryableFailure,
    UpstreamMismatch,
    UpstreamRejected,
    raise_for_status,
    raise_stream_error,
)
from mrsa.engine.remote.replicas import Replica, ReplicaPool
from mrsa.engine.remote.retry import RetryPolicy
from mrsa.engine.remote.trace import Trace

log = logging.getLogger(__name__)


async def attempt(
    client: httpx.AsyncClient, trace: Trace, pool: ReplicaPool, tokenizer: Tokenizer, policy: RetryPolicy
) -> None:
    """Serve the rest of ``trace`` on the least loaded replica, pushing deltas as they arrive.

    Raises :class:`RetryableFailure` (already booked with ``policy``) when another attempt may
    succeed, :class:`UpstreamRejected` / :class:`UpstreamMismatch` when none can.
    """
    if (last := _nothing_left(trace, tokenizer.eos_token_id)) is not None:
        trace.push(last)
        return
    held_back = _held_back_text(trace, tokenizer)
    one = _Attempt(trace, pool.pick(trace.avoid), held_back)
    replica = one.replica
    replica.outstanding += 1
    replica.sent += 1
    try:
        await one.stream(client)
    except (httpx.TransportError, httpx.StreamError, json.JSONDecodeError, RetryableFailure) as exc:
        if one.final is None:  # else everything arrived and only the trailer was lost
            failure = _retryable(exc, one.got)
            policy.record_failure(trace, replica, failure, one.got)
            raise failure
    except (UpstreamRejected, UpstreamMismatch):
        replica.record_success()  # it answered; the request is at fault
        raise
    finally:
        replica.outstanding -= 1
    if one.final is None:
        failure = RetryableFailure(f"upstream {replica.url}: stream ended before the completion finished")
        policy.record_failure(trace, replica, failure, one.got)
        raise failure
    replica.record_success()
    trace.push(one.final)


def _nothing_left(trace: Trace, eos_token_id: int | None) -> GenerationDelta | None:
    """The last delta of a trace whose stream broke after its last token but before the
    finish chunk (nothing left to generate); None while there is."""
    p = trace.params
    remaining = p.max_tokens - len(trace.received)
    ended = bool(trace.received) and not p.ignore_eos and trace.received[-1] == eos_token_id
    if remaining > 0 and not ended:
        return None
    return GenerationDelta([], "", True, "length" if remaining <= 0 else "stop", len(trace.prompt_ids))


def _held_back_text(trace: Trace, tokenizer: Tokenizer) -> str:
    """Text of the received ids that a broken stream never delivered (incomplete UTF-8, a
    possible stop string): the new replica only decodes what it generates, so it is sent first."""
    if not trace.received:
        return ""
    full = tokenizer.decode(trace.received)
    return full[len(trace.delivered_text):] if full.startswith(trace.delivered_text) else ""


def _retryable(exc: Exception, got: int) -> RetryableFailure:
    """``exc`` as a retryable failure, saying how many tokens the attempt delivered."""
    if not isinstance(exc, RetryableFailure):
        exc = RetryableFailure(f"{type(exc).__name__}: {exc}", eject=isinstance(exc, httpx.ConnectError))
    if got:
        exc.args = (f"{exc.args[0]} after {got} tokens",)
    return exc


@dataclass(eq=False)
class _Attempt:
    """The request on ``replica`` and what its stream has brought so far."""

    trace: Trace
    replica: Replica
    held_back: str  # delivered ahead of the first new text
    got: int = 0  # tokens pushed to the trace
    final: GenerationDelta | None = None  # the finish chunk, pushed once the stream is over

    def body(self) -> dict:
        p = self.trace.params
        body: dict = {
            "model": self.replica.served_id,
            "prompt": self.trace.prompt_ids + self.trace.received,
            "max_tokens": p.max_tokens - len(self.trace.received),
            "temperature": p.temperature,
            "top_p": p.top_p,
            "seed": p.seed,
            "stop": list(p.stop),
            "ignore_eos": p.ignore_eos,
            "stream": True,
            "stream_options": {"include_usage": True},
            "return_token_ids": True,
        }
        if p.top_k > 0:
            body["top_k"] = p.top_k
        return body

    async def stream(self, client: httpx.AsyncClient) -> None:
        body = self.body()
        request = client.build_request("POST", f"{self.replica.url}/v1/completions", json=body)
        async with _closing_shielded(await client.send(request, stream=True)) as resp:
            if resp.status_code != 200:
                await raise_for_status(resp)
            async with contextlib.aclosing(EventSource(resp).aiter_sse()) as events:
                async for event in events:
                    if event.data == "[DONE]":
                        break
                    self._on_chunk(event.json(), sent_prompt=len(body["prompt"]))

    def _on_chunk(self, chunk: dict, sent_prompt: int) -> None:
        if "error" in chunk:
            raise_stream_error(chunk["error"])
        for choice in chunk.get("choices") or ():
            self._on_choice(choice)
        usage = chunk.get("usage")
        cached = ((usage or {}).get("prompt_tokens_details") or {}).get("cached_tokens")
        if cached and self.final is not None:  # replicas started with --enable-prompt-tokens-details
            self.final = dataclasses.replace(self.final, cached_tokens=int(cached))
        if usage and usage.get("prompt_tokens") not in (None, sent_prompt):
            log.warning(
                "upstream %s counted %s prompt tokens, sent %d",
                self.replica.url, usage.get("prompt_tokens"), sent_prompt,
            )

    def _on_choice(self, choice: dict) -> None:
        if "token_ids" not in choice:
            raise UpstreamMismatch(
                f"upstream {self.replica.url} does not return token ids (needs vLLM's `return_token_ids`)"
            )
        ids = list(choice.get("token_ids") or ())
        text = choice.get("text") or ""
        reason = choice.get("finish_reason")
        if self.held_back and (ids or reason):
            text, self.held_back = self.held_back + text, ""
        prompt_tokens = len(self.trace.prompt_ids)
        if reason is not None:
            self.final = GenerationDelta(ids, text, True, _finish_reason(reason), prompt_tokens)
        elif ids or text:
            self.got += len(ids)
            self.trace.push(GenerationDelta(ids, text, prompt_tokens=prompt_tokens))
            self.trace.failures_since_progress = 0


@contextlib.asynccontextmanager
async def _closing_shielded(resp: httpx.Response) -> AsyncIterator[httpx.Response]:
    """Yield ``resp``; close it on the way out even if this task is being cancelled.

    A bare ``await resp.aclose()`` interrupted by a cancellation would skip the close, leaving
    the replica generating for nobody (see the module docstring).
    """
    try:
        yield resp
    finally:
        await asyncio.shield(asyncio.ensure_future(resp.aclose()))


def _finish_reason(reason: str | None) -> str:
    return reason if reason in ("stop", "length", "abort") else "stop"
