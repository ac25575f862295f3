"""A run resumed from the checkpoints its events reported continues where it stopped: the same
plan, no finished node redone, the same result as an uninterrupted run, budgets and usage
counting the work done before the interruption."""

from __future__ import annotations

import dataclasses
from contextlib import aclosing

import pytest

from mrsa.rsa import NodeFinished, RsaParams, RsaRun, RunCompleted
from mrsa.rsa.events import NodeRecord
from tests.fakes import FakeEngine, collect

MESSAGES = [{"role": "user", "content": "What is 6*7?"}]
BASE = dict(population=4, k=2, rounds=3, tail_tokens=10, trace_max_tokens=60, seed=3)


def _params(**kw: object) -> RsaParams:
    return RsaParams(**{**BASE, **kw})


async def _interrupted(engine: FakeEngine, params: RsaParams, after: int) -> list[NodeRecord]:
    """Run until ``after`` nodes finished, then drop the run (what a crash leaves behind)."""
    records: list[NodeRecord] = []
    run = RsaRun(engine, MESSAGES, params, run_id="run")
    async with aclosing(run.events()) as events:
        async for event in events:
            if isinstance(event, NodeFinished):
                assert event.record is not None
                records.append(event.record)
                if len(records) == after:
                    break
    assert engine.num_in_flight() == 0
    return records


@pytest.mark.parametrize("schedule", ["dataflow", "rounds"])
@pytest.mark.parametrize("after", [1, 4, 7, 12])
async def test_resumed_run_equals_the_uninterrupted_run(schedule: str, after: int) -> None:
    params = _params(schedule=schedule, selection="aggregate")
    engine = FakeEngine(answer=lambda r: str((r.params.seed or 0) % 3), delay=lambda r: 0.001 * (r.order % 3))
    _, whole = await collect(RsaRun(engine, MESSAGES, params, run_id="run"))

    records = await _interrupted(engine, params, after)
    engine.requests.clear()
    _, resumed = await collect(RsaRun(engine, MESSAGES, params, run_id="run", resume=records))

    redone = {r.request_id for r in engine.requests}
    assert not redone & {f"run-r{c.round}-i{c.index}" for c in records}  # nothing finished is redone
    assert len(engine.requests) == whole.calls - len(records)
    assert resumed.content == whole.content and resumed.answers == whole.answers
    # Prefix-cache hits depend on what the engine ran before, not on the run: left out.
    assert dataclasses.replace(resumed.usage, cached_tokens=0) == dataclasses.replace(whole.usage, cached_tokens=0)
    assert [_uncached(r) for r in resumed.trace] == [_uncached(r) for r in whole.trace]


def _uncached(record) -> dict:
    return {k: v for k, v in dataclasses.asdict(record).items() if k != "cached_tokens"}


async def test_restored_tokens_count_against_the_budget() -> None:
    params = _params(budget_tokens=150, selection="majority", population=3, rounds=4)
    engine = FakeEngine(length=8)
    records = await _interrupted(engine, params, 3)
    spent = sum(r.completion_tokens for r in records)
    engine.requests.clear()
    _, result = await collect(RsaRun(engine, MESSAGES, params, run_id="run", resume=records))
    assert spent + engine.completion_tokens == result.usage.completion_tokens <= 150
    assert result.stop_reason == "budget"


async def test_a_restored_unanimous_round_stops_on_consensus() -> None:
    params = _params(early_stop="consensus", selection="majority")
    engine = FakeEngine(answer="42")
    records = await _interrupted(engine, params, 4)  # round 0, unanimous
    assert {(r.round, r.answer) for r in records} == {(0, "42")}
    engine.requests.clear()
    events, result = await collect(RsaRun(engine, MESSAGES, params, run_id="run", resume=records))
    assert engine.requests == [] and result.stop_reason == "consensus"
    assert result.answer == "42" and result.usage.completion_tokens == sum(r.completion_tokens for r in records)
    assert not any(isinstance(e, NodeFinished) for e in events)  # restored nodes are not re-reported
    assert isinstance(events[-1], RunCompleted)


async def test_elapsed_time_counts_towards_the_deadline() -> None:
    params = _params(deadline_s=5.0, selection="majority")
    engine = FakeEngine()
    records = await _interrupted(engine, params, 4)
    engine.requests.clear()
    _, result = await collect(RsaRun(engine, MESSAGES, params, run_id="run", resume=records, elapsed_s=6.0))
    assert engine.requests == [] and result.stop_reason == "deadline"
    assert result.rounds_completed == 1


async def test_checkpoints_of_another_run_are_refused() -> None:
    engine = FakeEngine()
    records = await _interrupted(engine, _params(), 2)
    with pytest.raises(ValueError, match="another run"):
        RsaRun(engine, MESSAGES, _params(seed=4), run_id="run", resume=records)
    with pytest.raises(ValueError, match="two checkpoints"):
        RsaRun(engine, MESSAGES, _params(), run_id="run", resume=records + records[:1])
    with pytest.raises(ValueError, match="outside the plan"):
        RsaRun(engine, MESSAGES, _params(), run_id="run", resume=[dataclasses.replace(records[0], round=9)])
