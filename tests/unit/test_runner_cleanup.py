"""Whatever ends a run (consumer closes, task cancelled, engine error), nothing stays in flight."""

from __future__ import annotations

import asyncio

import pytest

from mrsa.engine.base import EngineError
from mrsa.rsa import FinalDelta, NodeFinished, NodeStarted, RsaParams, RsaRun
from mrsa.rsa.events import RunFailed
from tests.fakes import CountingEngine, FakeEngine, collect
from tests.waits import until

MESSAGES = [{"role": "user", "content": "What is 6*7?"}]
PARAMS = RsaParams(population=4, k=2, rounds=3, tail_tokens=8, trace_max_tokens=60, seed=1, selection="aggregate")


@pytest.mark.asyncio
async def test_aclose_mid_run_aborts_every_request() -> None:
    engine = CountingEngine(delay=0.01, tokens_per_delta=1)
    events = RsaRun(engine, MESSAGES, PARAMS, run_id="a").events()
    started = 0
    async for event in events:
        started += isinstance(event, NodeStarted)
        if started == 4:
            break
    await until(lambda: len(engine.delivered) == 4, "every round-0 trace delivered a token")
    assert engine.num_in_flight() == 4
    await events.aclose()
    assert engine.num_in_flight() == 0
    assert sorted(engine.abort_calls) == [f"a-r0-i{i}" for i in range(4)]
    assert all(r.aborted and r.completion_tokens > 0 for r in engine.requests)


@pytest.mark.asyncio
async def test_aclose_during_the_final_answer_aborts_it() -> None:
    engine = FakeEngine(delay=lambda r: 0.01 if r.request_id.endswith("final") else 0.0, tokens_per_delta=1)
    events = RsaRun(engine, MESSAGES, PARAMS, run_id="f").events()
    async for event in events:
        if isinstance(event, FinalDelta):
            break
    await events.aclose()
    assert engine.num_in_flight() == 0
    assert engine.by_id("f-final").aborted and "f-final" in engine.abort_calls


@pytest.mark.asyncio
async def test_cancelling_the_consumer_aborts_every_request() -> None:
    engine = FakeEngine(delay=0.01, tokens_per_delta=1)
    seen: list[object] = []

    async def consume() -> None:
        async for event in RsaRun(engine, MESSAGES, PARAMS, run_id="c").events():
            seen.append(event)

    task = asyncio.create_task(consume())
    await until(lambda: engine.num_in_flight() == 4, "the four round-0 traces are in flight")
    assert engine.num_in_flight() == 4
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.num_in_flight() == 0
    assert len(engine.abort_calls) == 4 and all(r.aborted for r in engine.requests)
    assert not any(isinstance(e, NodeFinished) for e in seen)


@pytest.mark.asyncio
async def test_engine_errors_fail_the_run_after_cleanup() -> None:
    def fail(req):
        # Three of round 1's four traces fail: one survivor < k=2, so the run fails (a single
        # failed trace would be replaced by a survivor: tests/unit/test_runner_failures.py).
        return EngineError("boom") if req.request_id in ("e-r1-i1", "e-r1-i2", "e-r1-i3") else None

    engine = FakeEngine(delay=0.005, tokens_per_delta=1, error=fail)
    with pytest.raises(RunFailed, match="boom") as info:
        await collect(RsaRun(engine, MESSAGES, PARAMS, run_id="e"))
    assert type(info.value.cause) is EngineError and str(info.value.cause) == "boom"
    assert engine.num_in_flight() == 0
    assert engine.max_in_flight >= 2  # siblings were running when the error surfaced


@pytest.mark.asyncio
async def test_context_too_long_is_refused_before_any_request() -> None:
    from mrsa.rsa import ContextTooLongError

    engine = FakeEngine(max_model_len=200)
    params = RsaParams(population=4, k=4, rounds=2, tail_tokens=100, trace_max_tokens=100)
    with pytest.raises(ContextTooLongError) as info:
        RsaRun(engine, MESSAGES, params, run_id="x")
    assert info.value.max_model_len == 200 and engine.requests == []
