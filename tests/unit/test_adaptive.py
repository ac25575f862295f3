"""Adaptive voting and adaptive RSA against the fake engine: waves, the stop rules, the abort of
what is in flight, index-order decisions, budgets, the prefix property and resume."""

from __future__ import annotations

import dataclasses
from contextlib import aclosing

import pytest

from mrsa.rsa import NodeFinished, RoundCompleted, RsaParams, RsaRun
from mrsa.rsa.adaptive import leader_posterior, settled
from mrsa.rsa.events import NodeRecord
from mrsa.rsa.params import RsaLimits, RsaParamError
from mrsa.rsa.plan import Plan
from tests.fakes import FakeEngine, FakeRequest, collect

MESSAGES = [{"role": "user", "content": "What is 6*7?"}]
BASE = dict(population=4, k=2, rounds=1, tail_tokens=10, trace_max_tokens=60, seed=5)


def params(**kw: object) -> RsaParams:
    return RsaParams(**{**BASE, **kw})


def position(req: FakeRequest) -> tuple[int, int]:
    """(round, index) of a trace request ``run-rX-iY``."""
    r, i = req.request_id.rsplit("-r", 1)[1].split("-i")
    return int(r), int(i)


def by_node(answer) -> object:
    """An answer knob of (round, index); the final call answers "final"."""
    return lambda req: "final" if req.request_id.endswith("-final") else answer(*position(req))


async def run(engine: FakeEngine, **kw: object):
    return await collect(RsaRun(engine, MESSAGES, params(**kw), run_id="run"))


# ------------------------------------------------------------------------ the stop rules


def test_the_posterior_is_the_beta_tail_of_the_leaders_lead() -> None:
    assert leader_posterior(0, 0) == 0.5
    assert leader_posterior(3, 0) == 15 / 16 and leader_posterior(4, 0) == 31 / 32
    assert leader_posterior(5, 1) < 0.95 < leader_posterior(6, 1)
    assert leader_posterior(2, 2) == 0.5


def test_the_rules_count_answers_and_ignore_or_weigh_missing_ones() -> None:
    assert not settled(["7", "7", "7"], "posterior", 0.95)
    assert settled(["7", "7", "7", "7"], "posterior", 0.95)
    assert not settled(["7", "7", "7", "7", None, "8"], "posterior", 0.95)  # 4 vs 1: 0.89
    assert settled(["7", "7", "7", "8"], "supermajority", 0.75)
    assert not settled(["7", "7", "7", None], "supermajority", 0.8)  # no answer counts against
    assert not settled([None, None], "supermajority", 0.5)


def test_max_population_is_checked_against_population_and_the_limit() -> None:
    with pytest.raises(ValueError, match="max_population"):
        params(max_population=2)
    with pytest.raises(RsaParamError) as err:
        params(method="adaptive_vote", max_population=32).check_limits(RsaLimits(max_population=16))
    assert err.value.param == "max_population"


# ------------------------------------------------------------------------ adaptive vote


async def test_a_unanimous_first_wave_settles_without_growing() -> None:
    engine = FakeEngine(answer="42")
    _, result = await run(engine, method="adaptive_vote", wave=4, max_population=16)
    assert result.method == "adaptive_vote" and result.stop_reason == "settled"
    assert result.samples == 4 and result.calls == len(engine.requests) == 4  # no final call
    assert result.final_mode == "majority" and result.answer == "42"


async def test_a_split_vote_grows_in_waves_to_max_population() -> None:
    engine = FakeEngine(answer=by_node(lambda r, i: str(i % 2)))
    events, result = await run(engine, method="adaptive_vote", wave=4, max_population=12)
    assert result.stop_reason == "max_population" and result.samples == 12 and result.calls == 12
    starts = [(position(r)[1], r.started_at) for r in engine.requests]
    # a wave starts only after every trace of the waves before it ended
    for i, started in starts:
        if i >= 4:
            assert all(engine.by_id(f"run-r0-i{j}").finished_at <= started for j in range((i // 4) * 4))
    (completed,) = [e for e in events if isinstance(e, RoundCompleted)]
    assert len(completed.answers) == 12


async def test_adaptive_samples_are_a_prefix_of_the_votes_samples() -> None:
    """Sample i has the prompt and seed of a plain vote's sample i: measurements stay paired."""
    answer = by_node(lambda r, i: str(i % 3))
    adaptive, vote = FakeEngine(answer=answer), FakeEngine(answer=answer)
    await run(adaptive, method="adaptive_vote", wave=2, max_population=8)
    await run(vote, population=16, selection="majority")
    drawn = {r.request_id: (r.prompt_ids, r.params.seed) for r in vote.requests}
    assert adaptive.requests
    for req in adaptive.requests:
        assert drawn[req.request_id] == (req.prompt_ids, req.params.seed)
        assert req.params.seed == Plan(4, 2, 1, 5).node_seed(0, position(req)[1]) if position(req)[1] < 4 else True


SPLIT = {0: "1", 1: "1", 2: "2", 3: "2", 4: "2", 5: "1", 6: "1", 7: "1"}


@pytest.mark.parametrize("slow", [None, 4])
async def test_the_stop_rule_counts_in_index_order_not_completion_order(slow: int | None) -> None:
    """Index order: at 5 counted the vote is 2 against 3 for "2" (settled at 0.6); in completion
    order (5, 6, 7 before a slow 4) it would have settled on "1"."""
    engine = FakeEngine(answer=by_node(lambda r, i: SPLIT[i]), delay=lambda req: 0.05 if position(req)[1] == slow else 0.001)
    _, result = await run(engine, method="adaptive_vote", wave=4, max_population=12, stop_rule="supermajority",
                          stop_threshold=0.6)
    assert result.stop_reason == "settled" and result.samples == 5 and result.answer == "2"
    assert not any(position(r)[1] >= 8 for r in engine.requests)  # settled before a third wave


async def test_a_settled_vote_aborts_the_traces_in_flight() -> None:
    engine = FakeEngine(answer=by_node(lambda r, i: SPLIT[i]),
                        delay=lambda req: 0.5 if position(req)[1] >= 5 else 0.001)
    _, result = await run(engine, method="adaptive_vote", wave=4, max_population=12, stop_rule="supermajority",
                          stop_threshold=0.6)
    assert result.stop_reason == "settled" and result.samples == 5
    assert {f"run-r0-i{i}" for i in (5, 6, 7)} <= set(engine.abort_calls)
    assert engine.num_in_flight() == 0
    aborted = [t for t in result.trace if t.status == "aborted"]
    assert [t.index for t in aborted] == [5, 6, 7]
    assert result.usage.completion_tokens == sum(r.completion_tokens for r in engine.requests)


async def test_an_adaptive_vote_never_exceeds_its_budget() -> None:
    engine = FakeEngine(answer=by_node(lambda r, i: str(i % 2)))
    _, result = await run(engine, method="adaptive_vote", wave=2, max_population=16, budget_tokens=200,
                          trace_max_tokens=40, tail_tokens=10)
    assert result.stop_reason == "budget" and 4 <= result.samples < 16
    assert engine.completion_tokens <= 200 and result.usage.completion_tokens <= 200


async def test_a_vote_settled_on_its_first_wave_counts_no_more_than_the_wave() -> None:
    """The first wave is the minimum: the rule is not asked before ``population`` are counted."""
    engine = FakeEngine(answer="42")
    _, result = await run(engine, method="adaptive_vote", population=6, wave=2, max_population=10)
    assert result.samples == 6 and result.calls == 6


# ------------------------------------------------------------------------ adaptive RSA

RSA = dict(method="adaptive_rsa", rounds=3, wave=2, max_population=8, selection="aggregate")


async def test_adaptive_rsa_does_not_aggregate_a_round_that_agrees() -> None:
    engine = FakeEngine(answer="42")
    _, result = await run(engine, **RSA)
    assert result.method == "adaptive_rsa" and result.stop_reason == "settled"
    assert result.calls == 4 and result.rounds_completed == 1 and result.final_mode == "majority"


async def test_adaptive_rsa_grows_a_split_round_then_aggregates_it() -> None:
    engine = FakeEngine(answer=by_node(lambda r, i: str(i % 2) if r == 0 else "7"))
    events, result = await run(engine, **RSA)
    round0 = [r for r in engine.requests if position(r)[0] == 0]
    round1 = [r for r in engine.requests if position(r)[0] == 1]
    assert len(round0) == 8 and len(round1) == 4 and not any(position(r)[0] == 2 for r in engine.requests)
    assert min(r.started_at for r in round1) >= max(r.finished_at for r in round0)
    plan = Plan(4, 2, 3, 5, first=8)
    assert all(max(plan.parents(1, i)) < 8 for i in range(4))
    assert [e.round for e in events if isinstance(e, RoundCompleted)] == [0, 1]
    assert result.stop_reason == "settled" and result.answer == "7" and result.rounds_completed == 2
    assert result.samples == 8 and len(result.answers[0]) == 8


async def test_adaptive_rsa_that_never_settles_runs_its_rounds_and_selects() -> None:
    engine = FakeEngine(answer=by_node(lambda r, i: str(i % 2)))
    _, result = await run(engine, **RSA)
    assert result.stop_reason == "rounds" and result.rounds_completed == 3
    assert result.calls == 8 + 4 + 4 + 1 and result.final_mode == "aggregate"


# ------------------------------------------------------------------------ resume


async def _interrupted(engine: FakeEngine, p: RsaParams, after: int) -> list[NodeRecord]:
    records: list[NodeRecord] = []
    async with aclosing(RsaRun(engine, MESSAGES, p, run_id="run").events()) as events:
        async for event in events:
            if isinstance(event, NodeFinished) and event.status == "finished":
                assert event.record is not None
                records.append(event.record)
                if len(records) == after:
                    break
    assert engine.num_in_flight() == 0
    return records


@pytest.mark.parametrize(
    "kw",
    [
        dict(method="adaptive_vote", wave=2, max_population=10, stop_rule="supermajority", stop_threshold=0.6),
        dict(RSA),
    ],
    ids=["adaptive_vote", "adaptive_rsa"],
)
@pytest.mark.parametrize("after", [1, 3, 5, 9])
async def test_a_resumed_adaptive_run_decides_as_the_uninterrupted_one(kw: dict, after: int) -> None:
    answer = by_node(lambda r, i: SPLIT.get(i, "2") if r == 0 else str(i % 2))
    engine = FakeEngine(answer=answer, delay=lambda r: 0.001 * (r.order % 3))
    p = params(**kw)
    _, whole = await collect(RsaRun(engine, MESSAGES, p, run_id="run"))
    records = await _interrupted(engine, p, after)
    engine.requests.clear()
    _, resumed = await collect(RsaRun(engine, MESSAGES, p, run_id="run", resume=records))
    assert not {r.request_id for r in engine.requests} & {f"run-r{c.round}-i{c.index}" for c in records}
    assert (resumed.stop_reason, resumed.samples, resumed.answer, resumed.content) == (
        whole.stop_reason, whole.samples, whole.answer, whole.content)
    assert resumed.answers == whole.answers and resumed.rounds_completed == whole.rounds_completed
    kept = lambda t: {k: v for k, v in dataclasses.asdict(t).items() if k != "cached_tokens"}  # noqa: E731
    finished = lambda res: [kept(t) for t in res.trace if t.status == "finished"]  # noqa: E731
    assert finished(resumed) == finished(whole)
