"""Budgets, deadlines and consensus: the ways a run stops before its last round."""

from __future__ import annotations

import random
from contextlib import aclosing

import pytest

from mrsa.rsa import NodeFinished, RoundCompleted, RsaLimits, RsaParams, RsaRun, RunCompleted
from tests.fakes import CountingEngine, FakeEngine, FakeRequest, collect

MESSAGES = [{"role": "user", "content": "What is 6*7?"}]


def is_final(req: FakeRequest) -> bool:
    return req.request_id.endswith("-final")


# ----------------------------------------------------------------------------- budget


@pytest.mark.asyncio
@pytest.mark.parametrize("schedule", ["dataflow", "rounds"])
async def test_budget_is_never_exceeded_under_random_lengths(schedule: str) -> None:
    stopped_by_budget = 0
    for case in range(60):
        rng = random.Random(case)
        population = rng.randint(1, 5)
        trace_max = rng.randint(8, 60)
        p = dict(
            population=population,
            k=rng.randint(1, population),
            rounds=rng.randint(1, 4),
            tail_tokens=rng.randint(4, 30),
            trace_max_tokens=trace_max,
            final_max_tokens=rng.randint(8, 60),
            selection=rng.choice(["aggregate", "majority", "auto"]),
            schedule=schedule,
            seed=case,
        )
        probe = RsaParams(**p)
        reserve = probe.final_tokens if probe.selection != "majority" else 0
        floor = reserve + min(probe.trace_max_tokens, probe.tail_tokens)
        budget = rng.randint(floor, floor + 6 * trace_max)
        params = RsaParams(**p, budget_tokens=budget)
        params.check_limits(RsaLimits())
        engine = FakeEngine(length=lambda req: req.rng().randint(0, 40), tokens_per_delta=3)
        events, result = await collect(RsaRun(engine, MESSAGES, params, run_id=f"b{case}"))

        assert engine.completion_tokens <= budget, (case, engine.completion_tokens, budget)
        assert result.usage.completion_tokens == engine.completion_tokens
        assert all(r.params.max_tokens <= max(trace_max, params.final_tokens) for r in engine.requests)
        traces = [r for r in result.trace if r.kind == "trace"]
        if len(traces) < params.population * params.rounds:
            assert result.stop_reason == "budget", case
            stopped_by_budget += 1
        else:
            assert result.stop_reason == "rounds" and result.rounds_completed == params.rounds
        if result.final_mode == "aggregate":  # the reserve kept room for the final call
            assert result.trace[-1].kind == "final" and result.trace[-1].max_tokens >= 1
        assert all(r.status == "finished" for r in traces)
        assert engine.num_in_flight() == 0
    assert stopped_by_budget >= 20  # the property was exercised, not vacuous


@pytest.mark.asyncio
async def test_budget_launch_needs_a_tail_worth_of_tokens() -> None:
    # 3 traces of 40 tokens committed; budget 200 - reserve 40 leaves 40: one more trace at most
    # once tokens are spent, each launch needing min(trace_max, tau) = 24.
    engine = FakeEngine(length=100)  # every trace runs to max_tokens
    params = RsaParams(
        population=3, k=2, rounds=4, tail_tokens=24, trace_max_tokens=40,
        budget_tokens=200, selection="aggregate", seed=4,
    )
    _, result = await collect(RsaRun(engine, MESSAGES, params, run_id="b"))
    assert result.stop_reason == "budget"
    traces = [r for r in result.trace if r.kind == "trace"]
    assert [r.max_tokens for r in traces] == [40, 40, 40, 40]
    assert result.trace[-1].kind == "final" and result.trace[-1].max_tokens == 40
    assert result.usage.completion_tokens == 200


# ----------------------------------------------------------------------------- deadline


@pytest.mark.asyncio
async def test_deadline_aborts_in_flight_traces_and_answers_directly() -> None:
    # The run's clock ticks 10 ms per token the engine delivered: the deadline passes once the
    # three traces delivered 30 of their 900 tokens, however fast the machine is, and the run
    # notices when its wait for a trace to end times out.
    engine = CountingEngine(
        length=100, tokens_per_delta=1, delay=lambda req: 0.0 if is_final(req) else 0.01
    )
    params = RsaParams(population=3, k=2, rounds=3, tail_tokens=8, trace_max_tokens=300, deadline_s=0.3, seed=2)
    clock = lambda: 0.01 * sum(engine.delivered.values())  # noqa: E731
    events, result = await collect(RsaRun(engine, MESSAGES, params, run_id="d", clock=clock))
    assert result.stop_reason == "deadline" and result.final_mode == "direct"
    assert result.rounds_completed == 0
    aborted = [r for r in result.trace if r.kind == "trace"]
    assert len(aborted) == 3 and all(r.status == "aborted" and r.completion_tokens > 0 for r in aborted)
    # Stopped by the deadline, not waited for: no trace ran to its end.
    assert all(r.completion_tokens < r.max_tokens == 300 for r in aborted)
    assert sorted(engine.abort_calls) == ["d-r0-i0", "d-r0-i1", "d-r0-i2"]
    assert [e.status for e in events if isinstance(e, NodeFinished)] == ["aborted"] * 3
    assert result.usage.completion_tokens == engine.completion_tokens  # aborted tokens count
    assert result.trace[-1].kind == "final" and result.trace[-1].parents == []
    assert engine.by_id("d-final").prompt == engine.by_id("d-r0-i0").prompt
    assert engine.num_in_flight() == 0 and result.answer == "42"


@pytest.mark.asyncio
async def test_deadline_keeps_what_finished_as_the_pool() -> None:
    # The deadline passes (on the run's clock) the moment round 0 is complete: round 1 has
    # just been launched, and round 2 never is.
    slow_round = lambda req: 0.05 if "-r1-" in req.request_id else 0.0  # noqa: E731
    engine = FakeEngine(delay=slow_round, tokens_per_delta=1)
    params = RsaParams(
        population=4, k=2, rounds=3, tail_tokens=8, trace_max_tokens=60,
        deadline_s=0.15, selection="aggregate", seed=3,
    )
    now = [0.0]
    run = RsaRun(engine, MESSAGES, params, run_id="d", clock=lambda: now[0])
    events = []
    async with aclosing(run.events()) as stream:
        async for event in stream:
            events.append(event)
            if isinstance(event, RoundCompleted) and event.round == 0:
                now[0] = 0.15
    assert isinstance(events[-1], RunCompleted)
    result = events[-1].result
    assert result.stop_reason == "deadline" and result.rounds_completed == 1
    statuses = {(r.round, r.status) for r in result.trace if r.kind == "trace"}
    assert statuses == {(0, "finished"), (1, "aborted")}
    assert result.final_mode == "aggregate" and len(result.trace[-1].parents) == 2
    assert result.answers[1] == [None] * 4 and result.answers[0] == ["42"] * 4
    assert engine.num_in_flight() == 0


@pytest.mark.asyncio
async def test_deadline_is_measured_with_the_injected_clock() -> None:
    now = [0.0]

    def clock() -> float:
        now[0] += 1.0  # every reading is a second later
        return now[0]

    engine = FakeEngine(delay=0.001)
    params = RsaParams(population=2, k=1, rounds=5, tail_tokens=8, trace_max_tokens=60, deadline_s=4, seed=1)
    _, result = await collect(RsaRun(engine, MESSAGES, params, run_id="c", clock=clock))
    assert result.stop_reason == "deadline" and result.rounds_completed < 5


# ----------------------------------------------------------------------------- consensus


@pytest.mark.asyncio
async def test_consensus_stops_after_the_first_unanimous_round() -> None:
    engine = FakeEngine(answer=lambda req: "1,000" if req.order % 2 else "1000")
    params = RsaParams(
        population=4, k=2, rounds=4, tail_tokens=8, trace_max_tokens=60,
        early_stop="consensus", selection="majority", schedule="rounds", seed=1,
    )
    _, result = await collect(RsaRun(engine, MESSAGES, params, run_id="c"))
    assert result.stop_reason == "consensus" and result.rounds_completed == 1
    assert result.calls == 4 and len(result.answers) == 1
    assert result.answer in ("1000", "1,000")


@pytest.mark.asyncio
async def test_consensus_aborts_nodes_already_running_in_dataflow() -> None:
    # r0-i0 is slow, so children of the other round-0 nodes are already running when round 0
    # completes unanimously; they are aborted and the pool is round 0.
    slow = {"c-r0-i0": 0.01, "c-r0-i1": 0.0, "c-r0-i2": 0.0, "c-r0-i3": 0.0, "c-final": 0.0}
    engine = FakeEngine(delay=lambda req: slow.get(req.request_id, 0.05), tokens_per_delta=2)
    params = RsaParams(
        population=4, k=1, rounds=3, tail_tokens=8, trace_max_tokens=60,
        early_stop="consensus", selection="aggregate", seed=1,
    )
    _, result = await collect(RsaRun(engine, MESSAGES, params, run_id="c"))
    assert result.stop_reason == "consensus" and result.rounds_completed == 1
    later = [r for r in result.trace if r.kind == "trace" and r.round > 0]
    assert later and all(r.status == "aborted" for r in later)
    assert engine.num_in_flight() == 0
    assert result.trace[-1].kind == "final" and result.final_mode == "aggregate"
    final_prompt = engine.by_id("c-final").prompt
    round0_tails = {r.tail_text for r in result.trace if r.round == 0 and r.kind == "trace"}
    assert any(tail in final_prompt for tail in round0_tails)


@pytest.mark.asyncio
async def test_no_consensus_when_answers_differ() -> None:
    engine = FakeEngine(answer=lambda req: str(req.order % 2))
    params = RsaParams(
        population=4, k=2, rounds=3, tail_tokens=8, trace_max_tokens=60,
        early_stop="consensus", selection="majority", seed=1,
    )
    _, result = await collect(RsaRun(engine, MESSAGES, params, run_id="c"))
    assert result.stop_reason == "rounds" and result.calls == 12
