"""Remote replicas: the engine is one or more OpenAI-compatible vLLM servers.

Tails stay token-exact because nothing is re-tokenized on the way: the model's own tokenizer
is loaded here (same checkpoint as the replicas, checked against their ``/tokenize`` at start),
prompts go to ``/v1/completions`` as token ids, and ``return_token_ids`` brings the generated
ids back with every streamed chunk.

Routing and failure handling, per request (one request = one trace):

* **Balancing**: least outstanding requests among healthy replicas (ties: fewest sent).
* **Health**: a background task probes ``/health`` every ``upstream_health_interval_s``; a
  replica is ejected after ``upstream_eject_after`` consecutive failures (probes or requests;
  a refused connection ejects at once) and re-admitted by the first good probe. A replica that
  was unreachable at start has its tokenizer checked before it is admitted.
* **Retries** (tenacity): connect errors, timeouts, 5xx, dropped streams are retried with
  full-jitter exponential backoff, on another replica when one is available; a 429 marks the
  replica busy for its ``Retry-After`` and the retry goes elsewhere, or waits that long when
  no other replica can take it. 4xx answers are the request's fault: no retry, ``EngineError``
  with status 400.
* **Mid-stream failover by continuation**: if a stream breaks after some tokens, those tokens
  have already been handed to the consumer, so they are kept. The request is re-issued on
  another replica with the prompt extended by the received ids and ``max_tokens`` reduced by
  their count (same seed, same stop strings). The consumer sees one consistent stream, no
  token is repeated or retracted, and usage counts exactly the tokens delivered
  (``prompt_tokens`` stays the original prompt's length). Re-issuing the whole request and
  dropping the streamed tokens was rejected: deltas are already consumed (the final answer
  streams to the client), and a seeded re-run on another replica is not guaranteed to repeat
  them. The continuation is a valid sample of the model given the prefix, but not the one the
  unbroken request would have produced (the sampler's RNG restarts from the seed), and a stop
  string straddling the break is not detected.
* Only when no replica can serve (every replica ejected, or ``upstream_attempts`` failed
  attempts in a row without a new token) does the request fail, with
  :class:`UpstreamUnavailable` (an ``EngineError`` with status 503).

``abort`` cancels the request's task, which closes the upstream HTTP response; vLLM aborts a
request whose client went away. Two rules keep that close from being lost: the task is
cancelled at most once (a second ``cancel()`` would interrupt the first one's cleanup halfway,
leaving the connection open and the replica generating for nobody), and the response is
closed in a shielded task that no cancellation can cut short.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_random_exponential

from mrsa.engine.base import EngineError, GenerationDelta, SamplingParams
from mrsa.engine.config import EngineConfig

log = logging.getLogger(__name__)

# Strings whose ids must match between the local tokenizer and every replica's.
PROBE_STRINGS = (
    "What is 7 + 5? Put the answer in \\boxed{}.",
    "  leading spaces,\ttabs\nand newlines\n\n",
    "Unicode: café naïve — 日本語 😀 ∑x²",
    "<think>reasoning</think> 12345678901234567890",
)


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


class _Retryable(Exception):
    """One attempt failed in a way another attempt may not."""

    def __init__(self, message: str, *, retry_after: float | None = None, eject: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.eject = eject


@dataclass(eq=False)
class Replica:
    url: str
    served_id: str = ""
    max_model_len: int = 0
    verified: bool = False
    healthy: bool = False
    outstanding: int = 0
    sent: int = 0
    completed: int = 0
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

    def stats(self) -> dict:
        return {
            "url": self.url,
            "healthy": self.healthy,
            "outstanding": self.outstanding,
            "requests": self.sent,
            "completed": self.completed,
            "failures": self.failures,
        }


@dataclass(eq=False)
class _Trace:
    """One generate() call: what has been delivered so far, across attempts."""

    prompt_ids: list[int]
    params: SamplingParams
    request_id: str
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    received: list[int] = field(default_factory=list)
    delivered_text: str = ""
    avoid: set = field(default_factory=set)  # replicas that failed this trace
    failures_since_progress: int = 0
    retrying_since: float = 0.0  # first failure since the last token (0: not retrying)
    task: asyncio.Task | None = None
    aborted: bool = False
    done: bool = False

    def push(self, delta: GenerationDelta) -> None:
        self.received.extend(delta.token_ids)
        self.delivered_text += delta.text
        if delta.finished:
            self.done = True
        self.queue.put_nowait(delta)


class RemoteEngine:
    """:class:`engine.base.Engine` over OpenAI-compatible vLLM servers."""

    def __init__(self, config: EngineConfig) -> None:
        if not config.upstreams:
            raise ValueError("RemoteEngine needs at least one upstream URL")
        self._cfg = config
        self._replicas = [Replica(url=u.rstrip("/")) for u in dict.fromkeys(config.upstreams)]
        self._timeout = httpx.Timeout(
            connect=config.upstream_connect_timeout_s,
            read=config.upstream_read_timeout_s,
            write=30.0,
            pool=30.0,
        )
        model = self._discover(config)
        from mrsa.engine.local import HFTokenizer

        self.tokenizer = HFTokenizer(model)
        self._verify_all()
        self.model_name = config.served_model_name or Path(model.rstrip("/")).name
        self.max_model_len: int = min(r.max_model_len for r in self._replicas if r.verified)
        self._client = httpx.AsyncClient(
            timeout=self._timeout,
            limits=httpx.Limits(
                max_connections=config.upstream_max_connections,
                max_keepalive_connections=config.upstream_max_connections,
            ),
        )
        self._traces: dict[str, _Trace] = {}
        self._in_flight = 0
        self._health_task: asyncio.Task | None = None
        self._closing: asyncio.Task | None = None
        self._backoff = wait_random_exponential(
            multiplier=config.upstream_backoff_s, max=config.upstream_backoff_max_s
        )
        with contextlib.suppress(RuntimeError):  # no running loop: started on first use
            asyncio.get_running_loop()
            self._start_health()
        log.info(
            "remote engine: %s over %s (max_model_len %d)",
            self.model_name,
            ", ".join(f"{r.url}{'' if r.healthy else ' (down)'}" for r in self._replicas),
            self.max_model_len,
        )

    # ------------------------------------------------------------------ start-up checks

    def _discover(self, config: EngineConfig) -> str:
        """Read every reachable replica's /v1/models; the local model path to load."""
        roots: list[str] = []
        with httpx.Client(timeout=self._timeout) as client:
            for r in self._replicas:
                try:
                    resp = client.get(f"{r.url}/v1/models")
                    resp.raise_for_status()
                    card = resp.json()["data"][0]
                except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
                    log.warning("upstream %s unreachable at start (%s); admitted once healthy", r.url, exc)
                    continue
                r.served_id = card["id"]
                r.max_model_len = int(card.get("max_model_len") or 0)
                roots.append(card.get("root") or card["id"])
        if not roots:
            raise UpstreamUnavailable(
                f"none of the upstreams answers /v1/models: {', '.join(r.url for r in self._replicas)}"
            )
        if config.model:
            return config.model
        if len(set(roots)) > 1:
            raise UpstreamMismatch(f"upstreams serve different models ({sorted(set(roots))}); pass --model")
        return roots[0]

    def _verify_all(self) -> None:
        with httpx.Client(timeout=self._timeout) as client:
            for r in self._replicas:
                if r.served_id:
                    self._verify(client, r)  # raises on a mismatch: refuse to start
                    r.healthy = True

    def _verify(self, client: httpx.Client, r: Replica) -> None:
        """The replica tokenizes like the local tokenizer and has a usable context length."""
        if r.max_model_len <= 0:
            raise UpstreamMismatch(f"upstream {r.url} does not report max_model_len in /v1/models")
        for text in PROBE_STRINGS:
            resp = client.post(
                f"{r.url}/tokenize",
                json={"model": r.served_id, "prompt": text, "add_special_tokens": False},
            )
            if resp.status_code != 200:
                raise UpstreamMismatch(
                    f"upstream {r.url} cannot tokenize ({resp.status_code}: {resp.text[:200]}); "
                    "the remote engine needs vLLM's /tokenize endpoint"
                )
            remote = resp.json().get("tokens")
            local = self.tokenizer.encode(text)
            if remote != local:
                raise UpstreamMismatch(
                    f"tokenizer mismatch with upstream {r.url} (model {r.served_id!r}) on {text!r}: "
                    f"local {local[:12]}... vs remote {(remote or [])[:12]}...; --model must be the "
                    "checkpoint the upstreams serve"
                )
        r.verified = True

    def _admit_late(self, r: Replica) -> None:
        """A replica that was down at start: check it like the others, then admit it."""
        with httpx.Client(timeout=self._timeout) as client:
            card = client.get(f"{r.url}/v1/models").raise_for_status().json()["data"][0]
            r.served_id = card["id"]
            r.max_model_len = int(card.get("max_model_len") or 0)
            self._verify(client, r)
        if r.max_model_len < self.max_model_len:
            raise UpstreamMismatch(
                f"upstream {r.url} has max_model_len {r.max_model_len} < {self.max_model_len}"
            )

    # ------------------------------------------------------------------ health

    def _start_health(self) -> None:
        if self._health_task is None or self._health_task.done():
            self._health_task = asyncio.get_running_loop().create_task(self._health_loop())

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self._cfg.upstream_health_interval_s)
            await asyncio.gather(*(self._probe(r) for r in self._replicas), return_exceptions=True)

    async def _probe(self, r: Replica) -> None:
        try:
            resp = await self._client.get(f"{r.url}/health", timeout=min(5.0, self._cfg.upstream_health_interval_s * 2))
            ok = resp.status_code == 200
        except httpx.HTTPError:
            ok = False
        if not ok:
            if r.healthy:
                r.record_failure(self._cfg.upstream_eject_after)
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
        log.info("re-admitting upstream %s", r.url)
        r.consecutive_failures = 0
        r.healthy = True

    # ------------------------------------------------------------------ Engine protocol

    async def generate(
        self, prompt_ids: Sequence[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[GenerationDelta]:
        self._start_health()
        trace = _Trace(prompt_ids=list(prompt_ids), params=params, request_id=request_id)
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
            task = trace.task
            if not task.done():
                _cancel_once(task)
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def abort(self, request_id: str) -> None:
        trace = self._traces.get(request_id)
        if trace is not None and trace.task is not None and not trace.task.done():
            trace.aborted = True
            _cancel_once(trace.task)

    def num_in_flight(self) -> int:
        return self._in_flight

    async def check_health(self) -> None:
        if not any(r.healthy for r in self._replicas):
            raise UpstreamUnavailable(self._all_down())

    def replica_stats(self) -> list[dict]:
        """Per-upstream counters (for /health or /metrics)."""
        return [r.stats() for r in self._replicas]

    def shutdown(self) -> None:
        for trace in list(self._traces.values()):
            if trace.task is not None:
                _cancel_once(trace.task)
        if self._health_task is not None:
            self._health_task.cancel()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._closing = loop.create_task(self._client.aclose())

    # ------------------------------------------------------------------ one request

    async def _run(self, trace: _Trace) -> None:
        self._in_flight += 1
        try:
            retrying = AsyncRetrying(
                retry=retry_if_exception_type(_Retryable),
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
            async for attempt in retrying:
                with attempt:
                    await self._attempt(trace)
        except asyncio.CancelledError:
            if trace.aborted and not trace.done:
                trace.push(
                    GenerationDelta([], "", True, "abort", prompt_tokens=len(trace.prompt_ids))
                )
                return
            raise
        except EngineError as exc:
            trace.queue.put_nowait(exc)
        except Exception as exc:  # a bug here must not hang the consumer
            log.exception("request %s failed", trace.request_id)
            trace.queue.put_nowait(EngineError(f"remote engine error: {exc!r}"))
        finally:
            self._in_flight -= 1

    def _wait(self, trace: _Trace, rs: RetryCallState) -> float:
        exc = rs.outcome.exception() if rs.outcome else None
        if trace.failures_since_progress <= 1 and self._candidates(trace.avoid, strict=True):
            # First failure since the last token and a fresh replica can take over: go now.
            return 0.0
        if isinstance(exc, _Retryable) and exc.retry_after is not None:
            if not self._candidates(trace.avoid, strict=True):
                return min(exc.retry_after, self._cfg.upstream_retry_after_max_s)
        return self._backoff(rs)

    def _stop(self, trace: _Trace) -> bool:
        return (
            trace.failures_since_progress >= self._attempts()
            or time.monotonic() - trace.retrying_since > self._cfg.upstream_retry_deadline_s
        )

    def _attempts(self) -> int:
        return max(self._cfg.upstream_attempts, len(self._replicas) + 1)

    def _give_up(self, trace: _Trace, rs: RetryCallState) -> None:
        last = rs.outcome.exception() if rs.outcome else None
        raise UpstreamUnavailable(
            f"no upstream replica could serve request {trace.request_id}: "
            f"{trace.failures_since_progress} failed attempt(s) in a row, last: {last}"
        )

    def _all_down(self) -> str:
        return f"all {len(self._replicas)} upstream replicas are down: " + ", ".join(
            r.url for r in self._replicas
        )

    def _candidates(self, avoid: set, *, strict: bool = False) -> list[Replica]:
        now = time.monotonic()
        live = [r for r in self._replicas if r.healthy and r.verified]
        fresh = [r for r in live if r not in avoid]
        ready = [r for r in fresh if r.not_before <= now]
        if strict:
            return ready
        # Prefer a replica this trace has not failed on and not in a 429 back-off; then any
        # healthy one; then, when every replica is ejected, any verified one this trace has not
        # tried yet (it may be back before its next health probe).
        return ready or fresh or live or [r for r in self._replicas if r.verified and r not in avoid]

    def _pick(self, trace: _Trace) -> Replica:
        pool = self._candidates(trace.avoid)
        if not pool:
            raise UpstreamUnavailable(self._all_down())
        return min(pool, key=lambda r: (r.outstanding, r.sent))

    async def _attempt(self, trace: _Trace) -> None:
        p = trace.params
        remaining = p.max_tokens - len(trace.received)
        prompt_tokens = len(trace.prompt_ids)
        if remaining <= 0 or (
            trace.received and not p.ignore_eos and trace.received[-1] == self.tokenizer.eos_token_id
        ):
            # Broke after the last token but before the finish chunk: nothing left to generate.
            trace.push(
                GenerationDelta([], "", True, "length" if remaining <= 0 else "stop", prompt_tokens)
            )
            return
        pending_text = ""
        if trace.received:
            # Text the broken stream held back (incomplete UTF-8, a possible stop string) would be
            # lost: the new replica only decodes what it generates.
            full = self.tokenizer.decode(trace.received)
            if full.startswith(trace.delivered_text):
                pending_text = full[len(trace.delivered_text):]
        replica = self._pick(trace)
        body: dict = {
            "model": replica.served_id,
            "prompt": trace.prompt_ids + trace.received,
            "max_tokens": remaining,
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
        got = 0
        final: GenerationDelta | None = None
        replica.outstanding += 1
        replica.sent += 1
        try:
            request = self._client.build_request("POST", f"{replica.url}/v1/completions", json=body)
            async with _closing_shielded(await self._client.send(request, stream=True)) as resp:
                if resp.status_code != 200:
                    await self._fail_status(resp)
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        _raise_stream_error(chunk["error"])
                    for choice in chunk.get("choices") or ():
                        if "token_ids" not in choice:
                            raise UpstreamMismatch(
                                f"upstream {replica.url} does not return token ids "
                                "(needs vLLM's `return_token_ids`)"
                            )
                        ids = list(choice.get("token_ids") or ())
                        text = choice.get("text") or ""
                        reason = choice.get("finish_reason")
                        if pending_text and (ids or reason):
                            text, pending_text = pending_text + text, ""
                        if reason is not None:
                            final = GenerationDelta(
                                ids, text, True, _finish_reason(reason), prompt_tokens
                            )
                        elif ids or text:
                            got += len(ids)
                            trace.push(GenerationDelta(ids, text, prompt_tokens=prompt_tokens))
                            trace.failures_since_progress = 0
                    usage = chunk.get("usage")
                    if usage and usage.get("prompt_tokens") not in (None, len(body["prompt"])):
                        log.warning(
                            "upstream %s counted %s prompt tokens, sent %d",
                            replica.url, usage.get("prompt_tokens"), len(body["prompt"]),
                        )
        except (httpx.TransportError, httpx.StreamError, json.JSONDecodeError, _Retryable) as exc:
            if final is None:  # else everything arrived and only the trailer was lost
                if not isinstance(exc, _Retryable):
                    exc = _Retryable(
                        f"{type(exc).__name__}: {exc}", eject=isinstance(exc, httpx.ConnectError)
                    )
                if got:
                    exc.args = (f"{exc.args[0]} after {got} tokens",)
                self._failed(trace, replica, exc, got)
                raise exc
        except (UpstreamRejected, UpstreamMismatch):
            replica.record_success()  # it answered; the request is at fault
            raise
        finally:
            replica.outstanding -= 1
        if final is None:
            exc = _Retryable(f"upstream {replica.url}: stream ended before the completion finished")
            self._failed(trace, replica, exc, got)
            raise exc
        replica.record_success()
        replica.completed += 1
        trace.push(final)

    def _failed(self, trace: _Trace, replica: Replica, exc: _Retryable, got: int) -> None:
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

    async def _fail_status(self, resp: httpx.Response) -> None:
        body = (await resp.aread()).decode(errors="replace")[:500]
        status = resp.status_code
        if status == 429:
            raise _Retryable(f"upstream {resp.url.host}:{resp.url.port} busy (429)", retry_after=_retry_after(resp))
        if status >= 500 or status == 408:
            raise _Retryable(f"upstream answered {status}: {body}")
        message = body
        with contextlib.suppress(ValueError, KeyError, TypeError):
            message = json.loads(body)["error"]["message"]
        raise UpstreamRejected(f"upstream rejected the request ({status}): {message}")


def _cancel_once(task: asyncio.Task) -> None:
    """Cancel ``task`` unless a cancellation is already under way (see the module docstring)."""
    if not task.cancelling():
        task.cancel()


@contextlib.asynccontextmanager
async def _closing_shielded(resp: httpx.Response) -> AsyncIterator[httpx.Response]:
    """Yield ``resp``; close it on the way out even if this task is being cancelled.

    Closing an unfinished streamed response drops its connection, which is how the replica
    learns that nobody wants the rest. A bare ``await resp.aclose()`` interrupted by a
    cancellation would skip that.
    """
    try:
        yield resp
    finally:
        await asyncio.shield(asyncio.ensure_future(resp.aclose()))


def _raise_stream_error(error: dict) -> None:
    """An error event inside a 200 stream (vLLM's way to report a failure mid-generation)."""
    code = error.get("code")
    try:
        code = int(code)
    except (TypeError, ValueError):
        code = 500
    message = error.get("message", "upstream error")
    if 400 <= code < 500 and code not in (408, 429):
        raise UpstreamRejected(f"upstream rejected the request ({code}): {message}")
    raise _Retryable(f"upstream error mid-stream ({code}): {message}")


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _finish_reason(reason: str | None) -> str:
    return reason if reason in ("stop", "length", "abort") else "stop"
