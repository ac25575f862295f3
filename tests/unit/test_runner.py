"""RsaRun against the fake engine: calls, selection, prompts, usage, determinism, events."""

from __future__ import annotations

import pytest

from mrsa.rsa import (
    FinalDelta,
    FinalStarted,
    NodeFinished,
    NodeStarted,
    RoundCompleted,
    RsaParams,
    RsaRun,
    RunCompleted,
)
from mrsa.rsa.plan import Plan
from tests.fakes import FakeEngine, FakeRequest, collect

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 6*7?"},
]
SMALL = dict(population=4, k=2, rounds=3, tail_tokens=10, trace_max_tokens=60)


def params(**kw: object) -> RsaParams:
    return RsaParams(**{**SMALL, "seed": 1, **kw})


async def run(engine: FakeEngine, **kw: object):
    return await collect(RsaRun(engine, MESSAGES, params(**kw), run_id="run"))


def by_index(answers: dict[int, str | None]):
    """An answer knob keyed by the node index of the request id (``run-rX-iY``)."""

    def answer(req: FakeRequest) -> str | None:
        if req.request_id.endswith("-final"):
            return "final"
        return answers[int(req.request_id.rsplit("-i", 1)[1])]

    return answer


@pytest.mark.asyncio
async def test_aggregate_makes_n_times_t_calls_plus_one_streamed_final() -> None:
    engine = FakeEngine(tokens_per_delta=3)
    events, result = await run(engine, selection="aggregate")
    assert result.calls == len(engine.requests) == 4 * 3 + 1 == len(result.trace)
    assert result.final_mode == "aggregate" and result.stop_reason == "rounds"
    assert result.rounds_completed == 3 and len(result.answers) == 3
    final = result.trace[-1]
    assert final.kind == "final" and final.round == 3 and len(final.parents) == 2
    deltas = [e.text for e in events if isinstance(e, FinalDelta)]
    assert len(deltas) > 1 and "".join(deltas) == result.content == final.text
    assert result.finish_reason == "stop" and result.answer == "42"
    final_request = engine.by_id("run-final")
    assert final_request.params.temperature == 0.6 and final_request.params.top_p == 0.95
    assert final_request.params.seed == Plan(4, 2, 3, 1).final_seed


@pytest.mark.asyncio
async def test_majority_returns_the_first_winning_member_without_a_call() -> None:
    engine = FakeEngine(answer=by_index({0: "5", 1: "7", 2: "7.0", 3: " 7 "}))
    events, result = await run(engine, selection="majority")
    assert result.calls == len(engine.requests) == 12
    assert result.final_mode == "majority" and result.finish_reason == "stop"
    winner = next(r for r in result.trace if (r.round, r.index) == (2, 1))
    assert result.content == winner.text and result.answer == "7"
    assert [e.text for e in events if isinstance(e, FinalDelta)] == [result.content]
    started = next(e for e in events if isinstance(e, FinalStarted))
    assert started.mode == "majority" and started.parents == [0, 1, 2, 3]


def by_node(answers: dict[tuple[int, int], str]):
    """An answer knob keyed by (round, index) of the request id (``run-rX-iY``)."""

    def answer(req: FakeRequest) -> str:
        r, i = req.request_id.removeprefix("run-r").split("-i")
        return answers[int(r), int(i)]

    return answer


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("final_vote", "answer", "winner"),
    [("last", "7", (2, 0)), ("all", "5", (1, 0))],  # last round: 7 x2; every round: 5 x5, 7 x4
)
async def test_final_vote_counts_the_last_round_or_every_round(final_vote, answer, winner) -> None:
    votes = ["5", "5", "5", "5", "5", "7", "7", "9", "7", "7", "8", "9"]
    engine = FakeEngine(answer=by_node({(r, i): votes[4 * r + i] for r in range(3) for i in range(4)}))
    _, result = await run(engine, selection="majority", final_vote=final_vote)
    assert result.answer == answer and result.calls == 12
    assert result.content == next(r for r in result.trace if (r.round, r.index) == winner).text


@pytest.mark.asyncio
async def test_a_tie_over_every_round_goes_to_the_deepest_round() -> None:
    votes = {(0, 0): "5", (0, 1): "5", (1, 0): "7", (1, 1): "7"}
    engine = FakeEngine(answer=by_node(votes))
    _, result = await run(engine, population=2, k=2, rounds=2, selection="majority", final_vote="all")
    assert result.answer == "7"


@pytest.mark.asyncio
async def test_majority_without_answers_returns_the_first_member() -> None:
    engine = FakeEngine(answer=None)
    _, result = await run(engine, selection="majority")
    assert result.content == next(r for r in result.trace if (r.round, r.index) == (2, 0)).text
    assert result.answer is None


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("answer", "mode", "calls"),
    [("42", "majority", 12), (None, "aggregate", 13)],
)
async def test_auto_votes_only_when_answers_can_be_extracted(answer, mode, calls) -> None:
    engine = FakeEngine(answer=lambda req: "9" if req.request_id.endswith("final") else answer)
    _, result = await run(engine, selection="auto")
    assert result.final_mode == mode and result.calls == calls


@pytest.mark.asyncio
async def test_requests_carry_ids_seeds_and_sampling_of_the_plan() -> None:
    engine = FakeEngine()
    await run(engine, selection="majority", temperature=0.8, top_p=0.9, ignore_eos=True)
    plan = Plan(4, 2, 3, 1)
    for r in range(3):
        for i in range(4):
            req = engine.by_id(f"run-r{r}-i{i}")
            assert req.params.seed == plan.node_seed(r, i)
            assert (req.params.temperature, req.params.top_p) == (0.8, 0.9)
            assert req.params.ignore_eos and req.completion_tokens == req.params.max_tokens == 60


@pytest.mark.asyncio
async def test_aggregation_prompts_hold_the_parents_tails_in_plan_order() -> None:
    engine = FakeEngine(length=30)
    _, result = await run(engine, selection="majority")
    records = {(r.round, r.index): r for r in result.trace}
    plan = Plan(4, 2, 3, 1)
    for r in (1, 2):
        for i in range(4):
            prompt = engine.by_id(f"run-r{r}-i{i}").prompt
            assert prompt.startswith("<|system|>\nBe brief.\n<|user|>\n")
            positions = []
            for n, p in enumerate(plan.parents(r, i), 1):
                parent = records[(r - 1, p)]
                assert parent.cut and parent.tail_tokens == 10
                label = f"its final answer: {parent.answer}" if parent.answer else "unfinished: it stops before a final answer"
                block = f"--- Attempt {n} ({label}) ---\n...{parent.tail_text}\n"
                assert block in prompt
                positions.append(prompt.index(block))
            assert positions == sorted(positions)


@pytest.mark.asyncio
async def test_k_equal_one_refines_a_single_tail() -> None:
    engine = FakeEngine()
    _, result = await run(engine, k=1, selection="aggregate")
    for req in engine.requests:
        if "-r0-" in req.request_id:
            assert "candidate" not in req.prompt
        else:
            assert "Here is an attempt at this problem" in req.prompt and "Attempt 2" not in req.prompt
    assert all(len(r.parents) == 1 for r in result.trace if r.round > 0)


@pytest.mark.asyncio
async def test_think_traces_carry_their_reasoning_forward() -> None:
    engine = FakeEngine(think=True, length=40)
    _, result = await run(engine, selection="majority", trace_max_tokens=200)
    for record in result.trace:
        assert "</think>" in record.text and record.answer == "42"
        assert "boxed" not in record.tail_text and "think>" not in record.tail_text


@pytest.mark.asyncio
async def test_usage_is_the_sum_over_the_trace() -> None:
    engine = FakeEngine(length=lambda req: req.rng().randint(1, 30))
    _, result = await run(engine, selection="aggregate")
    usage = result.usage
    assert usage.prompt_tokens == sum(r.prompt_tokens for r in result.trace)
    assert usage.prompt_tokens == sum(len(req.prompt_ids) for req in engine.requests)
    assert usage.completion_tokens == sum(r.completion_tokens for r in result.trace)
    assert usage.completion_tokens == engine.completion_tokens
    assert usage.reasoning_tokens == usage.completion_tokens - result.trace[-1].completion_tokens
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


@pytest.mark.asyncio
async def test_same_seed_same_run_and_other_seeds_differ() -> None:
    def summary(result):
        return [(r.round, r.index, r.parents, r.seed, r.text) for r in result.trace], result.content

    _, a = await run(FakeEngine(length=lambda r: r.rng().randint(1, 20)), selection="aggregate", seed=5)
    _, b = await run(FakeEngine(length=lambda r: r.rng().randint(1, 20)), selection="aggregate", seed=5)
    _, c = await run(FakeEngine(length=lambda r: r.rng().randint(1, 20)), selection="aggregate", seed=6)
    assert summary(a) == summary(b)
    assert summary(a)[0] != summary(c)[0]


@pytest.mark.asyncio
async def test_a_run_without_seed_draws_one_and_reports_it() -> None:
    _, first = await run(FakeEngine(), seed=None, selection="aggregate")
    assert isinstance(first.seed, int)
    _, again = await run(FakeEngine(), seed=first.seed, selection="aggregate")
    assert [r.text for r in again.trace] == [r.text for r in first.trace]


@pytest.mark.asyncio
async def test_event_stream_contract() -> None:
    events, result = await run(FakeEngine(delay=0.001), selection="aggregate", rounds=2)
    assert isinstance(events[-1], RunCompleted) and sum(isinstance(e, RunCompleted) for e in events) == 1
    started = [i for i, e in enumerate(events) if isinstance(e, NodeStarted)]
    finished = [i for i, e in enumerate(events) if isinstance(e, NodeFinished)]
    assert len(started) == len(finished) == 8
    for i in started:
        key = (events[i].round, events[i].index)
        assert i < next(j for j in finished if (events[j].round, events[j].index) == key)
    final_at = next(i for i, e in enumerate(events) if isinstance(e, FinalStarted))
    assert final_at > max(finished)
    assert all(isinstance(e, FinalDelta) for e in events[final_at + 1 : -1])
    rounds = [e for e in events if isinstance(e, RoundCompleted)]
    assert [e.round for e in rounds] == [0, 1] and len(rounds) == result.rounds_completed
    assert rounds[0].answers == ["42"] * 4 == result.answers[0]


@pytest.mark.asyncio
async def test_every_request_fits_an_exactly_sized_context() -> None:
    # The fake engine rejects prompt + max_tokens > max_model_len: size it to the check's bound.
    from mrsa.rsa import check_context

    engine = FakeEngine(length=60)
    p = params(selection="aggregate", final_max_tokens=80)
    engine.max_model_len = check_context(engine.tokenizer, 10**6, MESSAGES, p).required
    _, result = await collect(RsaRun(engine, MESSAGES, p, run_id="run"))
    assert result.calls == 13
    assert all(len(r.prompt_ids) + r.params.max_tokens <= engine.max_model_len for r in engine.requests)


@pytest.mark.asyncio
async def test_population_of_one() -> None:
    _, result = await run(FakeEngine(), population=1, k=1, rounds=3, selection="aggregate")
    assert result.calls == 4 and result.rounds_completed == 3 and result.answer == "42"


@pytest.mark.asyncio
async def test_a_run_is_iterated_once() -> None:
    rsa_run = RsaRun(FakeEngine(), MESSAGES, params(), run_id="run")
    await collect(rsa_run)
    with pytest.raises(RuntimeError):
        await collect(rsa_run)


async def test_a_complete_trace_without_a_boxed_answer_is_labelled_so_in_the_next_round() -> None:
    """"7 + 5 equals 12." stops by itself: the aggregation prompt must not call it unfinished."""
    engine = FakeEngine(script=lambda req: "7 + 5 equals 12." if "-r0-" in req.request_id else "\\boxed{12}")
    await run(engine, population=2, k=2, rounds=2, selection="majority")
    aggregations = [r for r in engine.requests if "-r1-" in r.request_id]
    assert aggregations and all("complete, but without a boxed final answer" in r.prompt for r in aggregations)
    assert not any("unfinished" in r.prompt.split("Attempt 1", 1)[1] for r in aggregations)


async def test_usage_counts_the_prompt_tokens_the_prefix_cache_served() -> None:
    """Every call after the first shares the conversation's prefix: the engine's cache hits,
    summed over the run, are the usage's cached_tokens."""
    engine = FakeEngine()
    _, result = await run(engine, population=4, k=2, rounds=2, selection="aggregate")
    per_call = [engine.cached_prefix(r) for r in engine.requests]
    assert result.usage.cached_tokens == sum(per_call) == sum(n.cached_tokens for n in result.trace)
    assert per_call[0] == 0 and all(c > 0 for c in per_call[1:4])  # round 0 repeats one prompt
    assert result.usage.cached_tokens < result.usage.prompt_tokens
