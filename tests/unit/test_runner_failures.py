"""Run failure policy: failed traces are replaced by survivors of their round; a round left with
fewer than K survivors (or a failed final call) fails the run with RunFailed carrying usage."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field

import pytest

from mrsa.engine.base import EngineError, GenerationDelta, SamplingParams
from mrsa.rsa import NodeFinished, NodeStarted, RsaParams, RsaRun
from mrsa.rsa.events import RunFailed
from mrsa.rsa.plan import Plan
from tests.fakes import FakeEngine, collect
from tests.waits import until

MESSAGES = [{"role": "user", "content": "What is 6*7?"}]
N, K, T = 4, 2, 3


class Gone(EngineError):
    status = 503
    code = "upstream_unavailable"


@dataclass
class BreakingEngine(FakeEngine):
    """A fake whose requests named in ``break_after`` fail after that many deltas (tokens
    already delivered stay delivered, as when a replica dies mid-stream)."""

    break_after: dict[str, int] = field(default_factory=dict)

    async def generate(
        self, prompt_ids: Sequence[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[GenerationDelta]:
        limit = self.break_after.get(request_id)
        count = 0
        async with aclosing(FakeEngine.generate(self, prompt_ids, params, request_id)) as inner:
            async for delta in inner:
                yield delta
                count += 1
                if limit is not None and count >= limit and not delta.finished:
                    raise Gone(f"replica lost under {request_id}")


def params(**kw) -> RsaParams:
    base = dict(population=N, k=K, rounds=T, tail_tokens=6, trace_max_tokens=40, seed=3, selection="aggregate")
    return RsaParams(**{**base, **kw})


def failing(*ids: str):
    return lambda r: Gone(f"no replica for {r.request_id}") if r.request_id in ids else None


def child_of(seed: int, r: int, parent: int) -> int:
    plan = Plan(N, K, T, seed)
    return next(i for i in range(N) if parent in plan.parents(r, i))


async def test_a_failed_trace_is_replaced_by_a_survivor_and_reported() -> None:
    engine = FakeEngine(delay=0.001, tokens_per_delta=2, error=failing("f-r1-i2"))
    events, result = await collect(RsaRun(engine, MESSAGES, params(), run_id="f"))
    assert [(f.round, f.index) for f in result.failed] == [(1, 2)] and result.degraded
    assert "no replica for f-r1-i2" in result.failed[0].error
    finished = [e for e in events if isinstance(e, NodeFinished) and (e.round, e.index) == (1, 2)]
    assert finished[0].status == "failed" and finished[0].error
    # No round-2 trace aggregates the failed one; each still has K distinct parents.
    for e in events:
        if isinstance(e, NodeStarted) and e.round == 2:
            assert 2 not in e.parents and len(set(e.parents)) == K
    # The child planned on the failed node took a substitute in its place.
    child = child_of(3, 2, 2)
    started = next(e for e in events if isinstance(e, NodeStarted) and (e.round, e.index) == (2, child))
    planned = list(Plan(N, K, T, 3).parents(2, child))
    assert [p for p, q in zip(started.parents, planned) if p != q] != []
    assert [p for p, q in zip(started.parents, planned) if p == q] == [q for q in planned if q != 2]
    # Usage sums every call, the failed one included (it cost nothing: refused at submission).
    record = next(r for r in result.trace if (r.round, r.index, r.kind) == (1, 2, "trace"))
    assert record.status == "failed" and record.finish_reason == "error" and record.completion_tokens == 0
    assert result.calls == N * T + 1 == len(result.trace)
    assert result.usage.completion_tokens == engine.completion_tokens
    assert result.usage.prompt_tokens == sum(r.prompt_tokens for r in result.trace)
    assert result.rounds_completed == T and result.stop_reason == "rounds"
    assert engine.num_in_flight() == 0


async def test_tokens_delivered_before_a_failure_count_in_usage() -> None:
    engine = BreakingEngine(tokens_per_delta=2, length=20, break_after={"b-r0-i1": 3})
    _, result = await collect(RsaRun(engine, MESSAGES, params(), run_id="b"))
    record = next(r for r in result.trace if (r.round, r.index) == (0, 1))
    assert record.status == "failed" and record.completion_tokens == 6 and record.prompt_tokens > 0
    assert result.usage.completion_tokens == engine.completion_tokens
    assert result.usage.reasoning_tokens == sum(r.completion_tokens for r in result.trace if r.kind == "trace")
    assert result.degraded and result.rounds_completed == T


@pytest.mark.parametrize("schedule", ["dataflow", "rounds"])
async def test_substitution_is_deterministic_and_schedule_independent(schedule: str) -> None:
    async def once(sched: str):
        engine = FakeEngine(
            delay=lambda r: 0.002 if r.request_id.endswith("i0") else 0.0,
            length=lambda r: r.rng().randint(3, 12),
            error=failing("d-r1-i1", "d-r0-i3"),
        )
        _, result = await collect(RsaRun(engine, MESSAGES, params(schedule=sched), run_id="d"))
        return [(r.round, r.index, r.parents, r.text, r.status) for r in result.trace]

    assert await once(schedule) == await once(schedule) == await once("dataflow")


async def test_a_substitute_that_fails_in_turn_is_replaced_by_the_next() -> None:
    # Round 0 loses two of four traces: every round-1 child must use the two survivors.
    engine = FakeEngine(delay=0.001, error=failing("s-r0-i0", "s-r0-i1"))
    events, result = await collect(RsaRun(engine, MESSAGES, params(), run_id="s"))
    for e in events:
        if isinstance(e, NodeStarted) and e.round == 1:
            assert sorted(e.parents) == [2, 3]
    assert len(result.failed) == 2 and result.rounds_completed == T


async def test_too_few_survivors_fail_the_run_with_usage() -> None:
    engine = FakeEngine(delay=0.002, tokens_per_delta=1, error=failing("x-r1-i0", "x-r1-i1", "x-r1-i3"))
    seen = []
    with pytest.raises(RunFailed) as info:
        async for event in RsaRun(engine, MESSAGES, params(), run_id="x").events():
            seen.append(event)
    exc = info.value
    assert exc.status == 503 and exc.code == "upstream_unavailable"
    assert "3 of 4 traces of round 1 failed" in str(exc) and "k=2" in str(exc)
    assert exc.usage.completion_tokens == engine.completion_tokens > 0
    assert exc.usage.reasoning_tokens == exc.usage.completion_tokens
    assert {(f.round, f.index) for f in exc.failed} == {(1, 0), (1, 1), (1, 3)}
    assert engine.num_in_flight() == 0
    # Whatever was still running when the round was lost was aborted, and its tokens counted.
    assert all(r.finish_reason in ("stop", "length", "abort") for r in engine.requests if r.finished_at)


@pytest.mark.parametrize("lost, survives", [(["k-r1-i0"], True), (["k-r1-i0", "k-r1-i1"], False)])
async def test_k1_fails_only_when_a_whole_round_is_gone(lost: list[str], survives: bool) -> None:
    engine = FakeEngine(error=failing(*lost))
    run = RsaRun(engine, MESSAGES, params(population=2, k=1, rounds=2), run_id="k")
    if survives:
        _, result = await collect(run)
        assert result.degraded and result.rounds_completed == 2
    else:
        with pytest.raises(RunFailed) as info:
            await collect(run)
        assert info.value.usage.completion_tokens == engine.completion_tokens > 0


async def test_a_failed_final_aggregation_fails_the_run_with_usage() -> None:
    engine = BreakingEngine(tokens_per_delta=2, break_after={"z-final": 2})
    with pytest.raises(RunFailed) as info:
        await collect(RsaRun(engine, MESSAGES, params(), run_id="z"))
    exc = info.value
    assert exc.status == 503 and "final aggregate call failed" in str(exc)
    assert isinstance(exc.cause, Gone) and exc.__cause__ is exc.cause
    assert exc.usage.completion_tokens == engine.completion_tokens
    assert exc.usage.completion_tokens - exc.usage.reasoning_tokens == 4  # the final's 2 deltas
    assert exc.failed == [] and exc.calls == N * T + 1
    assert engine.num_in_flight() == 0


async def test_a_non_engine_error_still_ends_the_run() -> None:
    engine = FakeEngine(error=lambda r: ValueError("bug") if r.request_id == "v-r0-i1" else None)
    with pytest.raises(ValueError, match="bug"):
        await collect(RsaRun(engine, MESSAGES, params(), run_id="v"))
    assert engine.num_in_flight() == 0


async def test_a_child_waits_for_its_substitute_and_moves_on_when_it_fails() -> None:
    seed = 3
    plan = Plan(N, K, T, seed)
    child = next(i for i in range(N) if 0 in plan.parents(1, i))
    order = list(range(N))
    random.Random(f"{seed}:substitute:1:{child}").shuffle(order)
    first = next(c for c in order if c not in plan.parents(1, child))
    # r0-i0 is refused at once; the child's first substitute streams slowly, then dies.
    engine = BreakingEngine(
        tokens_per_delta=1,
        delay=lambda r: 0.004 if r.request_id == f"w-r0-i{first}" else 0.0,
        break_after={f"w-r0-i{first}": 4},
        error=failing("w-r0-i0"),
    )
    events, result = await collect(RsaRun(engine, MESSAGES, params(seed=seed), run_id="w"))
    started = next(e for e in events if isinstance(e, NodeStarted) and (e.round, e.index) == (1, child))
    survivors = sorted(set(range(N)) - {0, first})
    assert sorted(started.parents) == survivors
    assert engine.by_id(f"w-r1-i{child}").started_at >= engine.by_id(f"w-r0-i{first}").finished_at
    assert {(f.round, f.index) for f in result.failed} == {(0, 0), (0, first)}


# ----------------------------------------------------------------------------- RunFailed, result()


async def test_run_failed_is_its_own_error_not_an_engine_error() -> None:
    # A caller's `except EngineError` (an engine that cannot serve) never swallows a run that
    # failed: that one is told apart whatever the order of the except clauses.
    assert not issubclass(RunFailed, EngineError)
    engine = FakeEngine(error=failing("n-r1-i0", "n-r1-i1", "n-r1-i3"))
    with pytest.raises(RunFailed) as info:
        try:
            await RsaRun(engine, MESSAGES, params(), run_id="n").result()
        except EngineError:
            pytest.fail("a failed run was caught as an EngineError")
    exc = info.value
    assert isinstance(exc.cause, Gone) and str(exc.cause) in str(exc)
    assert (exc.status, exc.code) == (exc.cause.status, exc.cause.code) == (503, "upstream_unavailable")
    assert exc.seed == 3 and exc.calls == len(engine.requests)
    assert {(f.round, f.index) for f in exc.failed} == {(1, 0), (1, 1), (1, 3)}
    assert exc.usage.completion_tokens == engine.completion_tokens > 0


async def test_result_is_what_the_events_end_with() -> None:
    def engine() -> FakeEngine:
        return FakeEngine(tokens_per_delta=2, length=lambda r: r.rng().randint(3, 12), error=failing("r-r1-i2"))

    streamed, awaited = engine(), engine()
    events, expected = await collect(RsaRun(streamed, MESSAGES, params(), run_id="r"))
    result = await RsaRun(awaited, MESSAGES, params(), run_id="r").result()
    assert result == expected and result.degraded and result.answer == "42"
    assert [r.request_id for r in awaited.requests] == [r.request_id for r in streamed.requests]
    assert awaited.num_in_flight() == 0


async def test_result_raises_run_failed_with_its_cause() -> None:
    engine = BreakingEngine(tokens_per_delta=2, break_after={"c-final": 1})
    with pytest.raises(RunFailed, match="the final aggregate call failed") as info:
        await RsaRun(engine, MESSAGES, params(), run_id="c").result()
    assert isinstance(info.value.cause, Gone) and "replica lost under c-final" in str(info.value.cause)
    assert info.value.usage.completion_tokens == engine.completion_tokens
    assert engine.num_in_flight() == 0


async def test_cancelling_an_awaited_result_aborts_every_request() -> None:
    engine = FakeEngine(delay=0.01, tokens_per_delta=1)
    task = asyncio.create_task(RsaRun(engine, MESSAGES, params(), run_id="q").result())
    await until(lambda: engine.num_in_flight() == N, "the round-0 traces are in flight")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.num_in_flight() == 0
    assert sorted(engine.abort_calls) == [f"q-r0-i{i}" for i in range(N)]
    assert all(r.aborted for r in engine.requests)
