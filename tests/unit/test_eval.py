"""``mrsa eval``: datasets, grading, scoring, configurations, and the runner over the fake
engine, in-process and through the HTTP service (both must see the same populations)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from mrsa.evals.backends import EngineBackend, HttpBackend
from mrsa.evals.datasets import Problem, arithmetic, load_jsonl
from mrsa.evals.grading import is_correct
from mrsa.evals.runner import evaluate, parse_config
from mrsa.evals.scoring import RoundScore, score_rounds, summarize
from mrsa.engine.base import EngineError
from mrsa.rsa import RsaParams, RsaRun
from mrsa.service.app import create_app
from mrsa.service.settings import Settings
from tests.fakes import FakeEngine, FakeRequest, collect

# ----------------------------------------------------------------------------- datasets


def _solve(question: str) -> int:
    """An independent reading of a generated problem, to check the generator's answers."""
    value = int(re.search(r"has (\d+) ", question).group(1))
    for sentence in question.split(". ")[1:]:
        n = re.search(r"(\d+)", sentence)
        if "more" in sentence:
            value += int(n.group(1))
        elif "gives away" in sentence or "loses" in sentence:
            value -= int(n.group(1))
        elif "times as many" in sentence:
            value *= int(n.group(1))
        elif "equal piles" in sentence:
            value //= int(n.group(1))
    return value


@pytest.mark.parametrize("difficulty", [1, 2, 4])
def test_arithmetic_problems_are_seeded_and_their_answers_right(difficulty: int) -> None:
    problems = arithmetic(20, difficulty, seed=3)
    assert problems == arithmetic(20, difficulty, seed=3)
    assert problems != arithmetic(20, difficulty, seed=4)
    for p in problems:
        assert p.question.count("Then") + p.question.count("A friend") == difficulty
        assert int(p.answer) == _solve(p.question) >= 0
        assert p.messages()[0]["content"].endswith("\\boxed{}.")
    text = " ".join(p.question for p in problems)
    assert ("times as many" in text) == (difficulty >= 2)  # difficulty 1 only adds and subtracts
    assert ("equal piles" in text) == (difficulty >= 3)


def test_difficulty_zero_is_bare_one_digit_arithmetic() -> None:
    problems = arithmetic(40, 0, seed=2)
    for p in problems:
        a, op, b = re.fullmatch(r"What is (\d) ([+-]) (\d)\?", p.question).groups()
        assert int(p.answer) == (int(a) + int(b) if op == "+" else int(a) - int(b)) >= 0
    assert {"+", "-"} <= {p.question.split()[3] for p in problems}


def test_arithmetic_shots_open_each_question_with_worked_examples() -> None:
    plain = arithmetic(5, 2, seed=1)
    shot = arithmetic(5, 2, seed=1, shots=2)
    assert [p.answer for p in shot] == [p.answer for p in plain]  # same problems
    for p, q in zip(plain, shot):
        examples, _, question = q.question.rpartition("Question: ")
        assert question == p.question and examples.count("Question: ") == 2
        for block in examples.strip().split("\n\n"):
            ask, answer = block.split("\nAnswer: ")
            assert answer.endswith(f"\\boxed{{{_solve(ask.removeprefix('Question: '))}}}.")


def test_arithmetic_rejects_empty_sizes() -> None:
    for bad in ({"size": 0}, {"size": 1, "difficulty": -1}, {"size": 1, "shots": -1}):
        with pytest.raises(ValueError):
            arithmetic(**bad)


def test_jsonl_unboxes_answers_and_names_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "aime.jsonl"
    path.write_text(
        json.dumps({"id": "p1", "problem": "Find x. Put it in \\boxed{}.", "answer": "\\boxed{204}"}) + "\n\n"
        + json.dumps({"question": "What is 2+2?", "answer": 4}) + "\n"
    )
    problems = load_jsonl(path)
    assert problems == [Problem("p1", "Find x. Put it in \\boxed{}.", "204"), Problem("3", "What is 2+2?", "4")]
    assert problems[0].messages()[0]["content"] == "Find x. Put it in \\boxed{}."  # not asked twice
    assert load_jsonl(path, limit=1) == problems[:1]
    path.write_text(json.dumps({"question": "no answer"}) + "\n")
    with pytest.raises(ValueError, match=":1:"):
        load_jsonl(path)


# ----------------------------------------------------------------------------- grading


@pytest.mark.parametrize(
    ("predicted", "gold", "expected"),
    [
        ("0.5", "1/2", True),
        ("\\frac{1}{2}", "0.5", True),
        ("x = 7", "7", True),
        ("1,000", "1000", True),
        ("8", "7", False),
        (None, "7", False),
        ("  ", "7", False),
        ("Paris", "paris", True),
        ("\\text{Paris}", "London", False),
    ],
)
def test_grading_uses_math_equivalence(predicted: str | None, gold: str, expected: bool) -> None:
    assert is_correct(predicted, gold) is expected


# ----------------------------------------------------------------------------- scoring


def test_round_scores_follow_the_paper_metrics() -> None:
    scores = score_rounds([["7", "8", "7", None], ["8", "8", "9", "8"]], [40, 60], "7")
    assert scores[0] == RoundScore(round=1, pass1=0.5, majority=True, pass_n=True, tokens=40)
    assert scores[1] == RoundScore(round=2, pass1=0.0, majority=False, pass_n=False, tokens=100)


def test_summary_carries_early_stops_forward_and_counts_errors_as_wrong() -> None:
    full = score_rounds([["7", "7"], ["7", "7"]], [10, 10], "7")
    early = score_rounds([["7", "7"]], [10], "7")  # e.g. stopped on consensus after round 1
    summary = summarize([full, early], finals=[True, True], tokens=[20, 10], errors=1)
    assert [m.pass1 for m in summary.rounds] == [pytest.approx(2 / 3), pytest.approx(2 / 3)]
    assert [m.runs for m in summary.rounds] == [2, 1]
    assert summary.rounds[1].tokens == 15  # the early run spent nothing more
    assert summary.final_accuracy == pytest.approx(2 / 3) and summary.errors == 1


# ----------------------------------------------------------------------------- configurations


def test_configs_express_single_majority_and_rsa() -> None:
    defaults = {"tail_tokens": 32, "trace_max_tokens": 100}
    single = parse_config("single", defaults)
    assert (single.name, single.params.population, single.params.rounds) == ("single", 1, 1)
    vote = parse_config("majority:n=6", defaults)
    assert (vote.name, vote.params.population, vote.params.k, vote.params.selection) == ("majority@6", 6, 1, "majority")
    rsa = parse_config("rsa:n=4,k=3,t=5,tau=16,sel=aggregate,name=mine", defaults)
    p = rsa.params
    assert (rsa.name, p.population, p.k, p.rounds, p.tail_tokens, p.trace_max_tokens, p.selection) == (
        "mine", 4, 3, 5, 16, 100, "aggregate")
    assert (p.final_vote, parse_config("rsa:vote=all", defaults).params.final_vote) == ("last", "all")
    for bad in ("rsa:q=1", "beam:n=2", "rsa:n", "rsa:vote=some"):
        with pytest.raises(ValueError):
            parse_config(bad, defaults)


# ----------------------------------------------------------------------------- runner


def _coin_engine(problems: list[Problem]) -> FakeEngine:
    """Each trace is right with probability 1/2 (a function of its prompt and seed)."""
    golds = {p.question: p.answer for p in problems}

    def answer(request: FakeRequest) -> str:
        gold = next(a for q, a in golds.items() if q in request.prompt)
        return gold if request.rng().random() < 0.5 else str(int(gold) + 1)

    return FakeEngine(answer=answer, delay=0.001)


CONFIGS = ["single", "majority:n=4", "rsa:n=4,k=2,t=3"]
DEFAULTS = {"tail_tokens": 16, "trace_max_tokens": 64}


async def test_runner_scores_the_populations_the_run_produced() -> None:
    problems = arithmetic(5, 1, seed=1)
    engine = _coin_engine(problems)
    configs = [parse_config(s, DEFAULTS) for s in CONFIGS]
    results = await evaluate(EngineBackend(engine), configs, problems, seed=2, concurrency=3)
    rsa = results["configs"][2]
    assert [c["name"] for c in results["configs"]] == ["single", "majority@4", "rsa N=4 K=2 T=3"]
    assert [r["round"] for r in rsa["rounds"]] == [1, 2, 3]
    # Replay one problem's run directly: the runner saw exactly its answers and tokens.
    record = rsa["runs"][0]
    params = configs[2].params.model_copy(update={"seed": record["seed"]})
    _, result = await collect(RsaRun(_coin_engine(problems), problems[0].messages(), params, run_id="replay"))
    assert record["answers"] == result.answers
    assert record["completion_tokens"] == result.usage.completion_tokens == sum(record["round_tokens"])
    expected = score_rounds(result.answers, record["round_tokens"], problems[0].answer)
    assert [s["pass1"] for s in record["scores"]] == [s.pass1 for s in expected]
    # Means over problems are the means of the per-run scores.
    for r, mean in enumerate(rsa["rounds"]):
        assert mean["pass1"] == pytest.approx(sum(run["scores"][r]["pass1"] for run in rsa["runs"]) / 5)
    # Single sampling is N=1: pass@1 == majority == pass@N.
    single = results["configs"][0]["rounds"][0]
    assert single["pass1"] == single["majority"] == single["pass_n"]
    assert results["configs"][1]["rounds"][0]["tokens"] == pytest.approx(4 * single["tokens"], rel=0.5)


async def test_http_backend_sees_what_the_engine_backend_sees() -> None:
    """The SSE progress chunks carry the same populations as the in-process events."""
    problems = arithmetic(3, 2, seed=5)
    configs = [parse_config("rsa:n=3,k=2,t=2", DEFAULTS)]
    direct = await evaluate(EngineBackend(_coin_engine(problems)), configs, problems, seed=1)
    engine = _coin_engine(problems)
    app = create_app(Settings(), engine_factory=lambda _: engine)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            backend = HttpBackend("http://test", client=http)
            via_http = await evaluate(backend, configs, problems, seed=1)
    assert via_http["meta"]["model"] == "fake-model"
    strip = lambda runs: [{k: v for k, v in r.items() if k != "wall_s"} for r in runs]  # noqa: E731
    assert strip(via_http["configs"][0]["runs"]) == strip(direct["configs"][0]["runs"])
    assert via_http["configs"][0]["rounds"] == direct["configs"][0]["rounds"]


def _failing_engine(problems: list[Problem], failing: str) -> FakeEngine:
    """The coin engine, with the trace whose request id ends with ``failing`` lost to an engine error."""
    engine = _coin_engine(problems)
    engine.error = lambda r: EngineError("replica died") if r.request_id.endswith(failing) else None
    return engine


async def _events(backend, problem: Problem, params: RsaParams) -> list[dict]:
    return [event async for event in backend.run(problem.messages(), params, "eval-equal")]


@pytest.mark.parametrize("failing", ["-r0-i1", "-r1-i2", "none"])
@pytest.mark.parametrize("keep_traces", [False, True])
async def test_both_backends_yield_the_same_event_dicts(failing: str, keep_traces: bool) -> None:
    """The in-process backend yields exactly the dicts the service streams: every event's own
    wire form (node_finished with parents after round 0 and the error of a failed trace,
    run_completed the service's summary with its usage), in the same kinds and order."""
    problems = arithmetic(1, 2, seed=5)
    params = RsaParams(population=3, k=2, rounds=3, tail_tokens=16, trace_max_tokens=64, seed=7,
                       return_trace=keep_traces)
    direct = await _events(EngineBackend(_failing_engine(problems, failing), keep_traces=keep_traces),
                           problems[0], params)
    engine = _failing_engine(problems, failing)
    app = create_app(Settings(), engine_factory=lambda _: engine)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            via_http = await _events(HttpBackend("http://test", client=http), problems[0], params)
    # Traces finish concurrently: each kind's events in the order they came, then the whole.
    kinds = lambda events: [e["event"] for e in events]  # noqa: E731
    assert kinds(direct)[0] == "run_started" and kinds(direct)[-1] == "run_completed"
    assert sorted(kinds(direct)) == sorted(kinds(via_http))
    for kind in set(kinds(direct)):
        assert [e for e in direct if e["event"] == kind] == [e for e in via_http if e["event"] == kind], kind
    finished = [e for e in direct if e["event"] == "node_finished"]
    assert all(("parents" in e) == (e["round"] > 0) for e in finished)
    completed = direct[-1]
    assert completed["usage"]["total_tokens"] > 0 and ("trace" in completed) == keep_traces
    if failing != "none":
        assert [e["error"] for e in finished if e["status"] == "failed"] == ["replica died"]
        assert completed["degraded"] and completed["failed"][0]["error"] == "replica died"


async def test_a_run_that_fails_in_process_is_a_failed_run_not_a_crash() -> None:
    """As the service's error chunk does over HTTP: the runner records the error and goes on."""
    problems = arithmetic(2, 1, seed=0)
    engine = _coin_engine(problems)
    engine.error = lambda r: EngineError("no replica is reachable")
    results = await evaluate(EngineBackend(engine), [parse_config("rsa:n=2,k=2,t=2", DEFAULTS)], problems)
    config = results["configs"][0]
    assert config["errors"] == 2 and all("no replica is reachable" in r["error"] for r in config["runs"])


async def test_http_errors_become_failed_runs_not_crashes() -> None:
    problems = arithmetic(2, 1, seed=0)
    app = create_app(Settings(), engine_factory=lambda _: _coin_engine(problems))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            backend = HttpBackend("http://test", model="no-such-model", client=http)
            results = await evaluate(backend, [parse_config("single", DEFAULTS)], problems)
    config = results["configs"][0]
    assert config["errors"] == 2 and all("404" in r["error"] for r in config["runs"])
    assert config["final_accuracy"] == 0


def test_mrsa_eval_writes_results_and_plot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mrsa.engine as engine_pkg
    from mrsa.cli import main

    problems = arithmetic(4, 1, seed=0)
    monkeypatch.setattr(engine_pkg, "create_engine", lambda config, cache_dir=None: _coin_engine(problems))
    out = tmp_path / "run"
    rc = main(["eval", "--size", "4", "--config", "single", "--config", "rsa:n=2,k=2,t=2",
               "--tail-tokens", "16", "--trace-max-tokens", "64", "--out", str(out)])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert results["meta"]["dataset"] == "arithmetic d=1 1-shot" and results["meta"]["problems"] == 4
    assert [len(c["rounds"]) for c in results["configs"]] == [1, 2]
    png = (out / "plot.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


async def test_the_results_tables_have_a_row_per_config_and_round() -> None:
    from mrsa.evals.report.table import comparisons_table, results_table

    problems = arithmetic(2, 1, seed=0)
    configs = [parse_config(s, DEFAULTS) for s in ("single", "rsa:n=2,k=1,t=3")]
    results = await evaluate(EngineBackend(_coin_engine(problems)), configs, problems)
    columns = [list(c.cells) for c in results_table(results).columns]
    assert list(zip(columns[0], columns[1])) == [("single", "1"), ("rsa N=2 K=1 T=3", "1"), ("", "2"), ("", "3")]
    assert columns[6][0] == f"{results['configs'][0]['final_accuracy']:.3f}"
    # one pair of configurations, with its paired interval
    (pair,) = zip(*(list(c.cells) for c in comparisons_table(results).columns))
    cmp = results["comparisons"][0]
    assert pair[0] == "single - rsa N=2 K=1 T=3"
    assert pair[3] == f"[{cmp['low']:+.3f}, {cmp['high']:+.3f}]"


# ----------------------------------------------------------------------------- GSM8K grading


@pytest.mark.parametrize(
    ("predicted", "gold", "expected"),
    [
        ("18", "18", True),
        ("\\$18", "18", True),
        ("$18.00", "18", True),
        ("18 \\text{ dollars}", "18", True),
        ("\\$70,000", "70000", True),
        ("1{,}200", "1200", True),
        ("40\\%", "40", True),
        ("x = 18", "18", True),
        ("18.5", "18", False),
        ("17", "18", False),
        ("1,2", "12", False),  # not a thousands separator
        ("18 and 20", "18", False),  # the last number is the answer
        ("-3", "-3", True),
    ],
)
def test_grading_reads_numbers_as_gsm8k_writes_them(predicted: str, gold: str, expected: bool) -> None:
    assert is_correct(predicted, gold) is expected


# ----------------------------------------------------------------------------- paired statistics


def test_mcnemar_is_the_exact_two_sided_binomial() -> None:
    from mrsa.evals.stats import mcnemar_exact

    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0
    # 12 vs 3 discordant: P(X <= 3 | n=15, p=1/2) = 576/32768, doubled.
    assert mcnemar_exact(12, 3) == pytest.approx(2 * 576 / 32768)
    assert mcnemar_exact(3, 12) == mcnemar_exact(12, 3)


def test_paired_difference_and_its_interval() -> None:
    from mrsa.evals.stats import paired

    a = [True] * 30 + [False] * 10
    same = paired("a", a, "b", list(a))
    assert (same.diff, same.low, same.high, same.resolved) == (0.0, 0.0, 0.0, False)
    better = paired("a", a, "b", [False] * 20 + [True] * 10 + [False] * 10)  # A wins 20 problems
    assert better.diff == pytest.approx(0.5) and (better.a_only, better.b_only) == (20, 0)
    assert 0 < better.low <= 0.5 <= better.high and better.resolved
    assert paired("a", a, "b", [False] * 20 + [True] * 10 + [False] * 10, seed=0) == better  # seeded
    close = paired("a", [True, False] * 20, "b", [False, True] * 20)  # 20 each way
    assert close.diff == 0 and close.low < 0 < close.high and not close.resolved
    with pytest.raises(ValueError):
        paired("a", [True], "b", [True, False])


# ----------------------------------------------------------------------------- memo engine


async def test_memo_engine_replays_seeded_requests_and_counts_their_tokens() -> None:
    from mrsa.evals.memo import MemoEngine

    problems = arithmetic(3, 1, seed=4)
    inner = _coin_engine(problems)
    memo = MemoEngine(inner)
    configs = [parse_config(s, DEFAULTS) for s in ("single", "majority:n=4", "rsa:n=4,k=2,t=2")]
    results = await evaluate(EngineBackend(memo), configs, problems, seed=3, concurrency=2)
    single, vote, rsa = results["configs"]
    # single is trace 0 of every first round, majority@4's samples are rsa's first round:
    # generated once each. RSA's second round and nothing else is new.
    assert len(inner.requests) == 3 * 4 + 3 * 4
    assert memo.hits == 3 * (1 + 4)
    for s, v, r in zip(single["runs"], vote["runs"], rsa["runs"], strict=True):
        assert v["answers"][0] == r["answers"][0] and s["answers"][0] == [r["answers"][0][0]]
        assert v["round_tokens"][0] == r["round_tokens"][0]  # replayed samples still cost tokens
    # Without the memo the same configurations give the same results (the fake is deterministic).
    plain = await evaluate(EngineBackend(_coin_engine(problems)), configs, problems, seed=3, concurrency=2)
    strip = lambda runs: [{k: v for k, v in r.items() if k != "wall_s"} for r in runs]  # noqa: E731
    assert [strip(c["runs"]) for c in plain["configs"]] == [strip(c["runs"]) for c in results["configs"]]


async def test_memo_engine_does_not_keep_aborted_requests() -> None:
    from mrsa.evals.memo import MemoEngine
    from mrsa.engine.base import SamplingParams

    inner = FakeEngine(length=40, delay=0.001)
    memo = MemoEngine(inner)
    params = SamplingParams(max_tokens=64, seed=1)
    prompt = inner.tokenizer.encode("what is one plus two")
    stream = memo.generate(prompt, params, "a")
    await anext(stream)
    await stream.aclose()  # the caller went away after one delta
    deltas = [d async for d in memo.generate(prompt, params, "b")]
    assert len(deltas) > 1 and memo.hits == 0 and len(inner.requests) == 2  # generated again
    again = [d async for d in memo.generate(prompt, params, "c")]
    assert memo.hits == 1 and len(inner.requests) == 2
    assert again[0].token_ids == [t for d in deltas for t in d.token_ids]
    unseeded = SamplingParams(max_tokens=64)
    for rid in ("d", "e"):
        _ = [d async for d in memo.generate(prompt, unseeded, rid)]
    assert len(inner.requests) == 4  # an unseeded request is a fresh sample every time


async def test_a_memo_rebuilt_from_kept_traces_replays_the_first_round(tmp_path: Path) -> None:
    from mrsa.evals.memo import MemoEngine, memo_rows_from_traces

    problems = arithmetic(3, 1, seed=5)
    configs = [parse_config(s, DEFAULTS) for s in ("majority:n=4", "rsa:n=4,k=2,t=2")]
    first = _coin_engine(problems)
    kept = await evaluate(EngineBackend(first, keep_traces=True), configs, problems, seed=2)
    traces = {c["name"]: {r["problem"]: r["trace"] for r in c["runs"]} for c in kept["configs"]}
    rows = memo_rows_from_traces(traces, {p.id: p for p in problems}, first.tokenizer, first.model_name,
                                 DEFAULTS.get("temperature", 0.6))
    assert len(rows) == 3 * 4  # the four first-round samples of each problem, once
    path = tmp_path / "memo.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    again = _coin_engine(problems)
    again.tokenizer = first.tokenizer  # the fake's vocabulary grows as it goes: the same ids
    memo = MemoEngine(again, path)
    replayed = await evaluate(EngineBackend(memo), configs, problems, seed=2)
    assert len(again.requests) == 3 * 4 and memo.hits == 2 * 3 * 4  # only rsa's second round ran
    assert all("Attempt 2" in r.prompt for r in again.requests)  # aggregations only
    strip = lambda runs: [{k: v for k, v in r.items() if k not in ("wall_s", "trace")} for r in runs]  # noqa: E731
    assert [strip(c["runs"]) for c in replayed["configs"]] == [strip(c["runs"]) for c in kept["configs"]]


# ----------------------------------------------------------------------------- slices


async def test_resume_keeps_finished_runs_and_pairs_every_config(tmp_path: Path) -> None:
    from mrsa.evals.runner import comparisons

    problems = arithmetic(6, 1, seed=2)
    configs = [parse_config(s, DEFAULTS) for s in ("single", "rsa:n=3,k=2,t=2")]
    whole = await evaluate(EngineBackend(_coin_engine(problems)), configs, problems, seed=1)
    first = await evaluate(EngineBackend(_coin_engine(problems)), configs, problems[:4], seed=1)
    assert first["meta"]["problems_done"] == 4
    engine = _coin_engine(problems)
    resumed = await evaluate(EngineBackend(engine), configs, problems, seed=1, previous=first)
    # Only the two new problems ran (single: 1 call each; rsa: 3 + 3 calls each).
    assert len(engine.requests) == 2 * (1 + 6)
    strip = lambda runs: [{k: v for k, v in r.items() if k != "wall_s"} for r in runs]  # noqa: E731
    assert [strip(c["runs"]) for c in resumed["configs"]] == [strip(c["runs"]) for c in whole["configs"]]
    assert resumed["comparisons"] == whole["comparisons"] == comparisons(whole)
    (cmp,) = whole["comparisons"]
    assert (cmp["a"], cmp["b"], cmp["n"]) == ("single", "rsa N=3 K=2 T=2", 6)
    finals = {c["name"]: [r["final_correct"] for r in c["runs"]] for c in whole["configs"]}
    assert cmp["diff"] == pytest.approx((sum(finals["single"]) - sum(finals["rsa N=3 K=2 T=2"])) / 6)


async def test_memo_file_replays_completions_in_a_later_evaluation(tmp_path: Path) -> None:
    from mrsa.evals.memo import MemoEngine

    problems = arithmetic(2, 1, seed=6)
    configs = [parse_config("rsa:n=3,k=2,t=2", DEFAULTS)]
    path = tmp_path / "memo.jsonl"
    first_engine = _coin_engine(problems)
    first = await evaluate(EngineBackend(MemoEngine(first_engine, path)), configs, problems, seed=1)
    assert len(path.read_text().splitlines()) == len(first_engine.requests) == 2 * 6
    with path.open("a") as f:
        f.write('{"key": "cut by a ki')  # a line a killed evaluation left half-written
    later_engine = _coin_engine(problems)
    later_engine.tokenizer = first_engine.tokenizer  # the same model: the same vocabulary
    later = await evaluate(EngineBackend(MemoEngine(later_engine, path)), configs, problems, seed=1)
    assert later_engine.requests == []  # every call replayed from the file
    strip = lambda runs: [{k: v for k, v in r.items() if k != "wall_s"} for r in runs]  # noqa: E731
    assert strip(later["configs"][0]["runs"]) == strip(first["configs"][0]["runs"])


def test_wilson_interval_brackets_the_accuracy_and_stays_in_range() -> None:
    from mrsa.evals.stats import wilson_interval

    low, high = wilson_interval(30, 100)
    assert (round(low, 3), round(high, 3)) == (0.219, 0.396)  # the textbook values for 30 of 100
    assert wilson_interval(0, 10)[0] == 0.0 and 0 < wilson_interval(0, 10)[1] < 0.35
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(0, 0) == (0.0, 1.0)


def test_two_configs_of_one_name_are_refused(tmp_path: Path) -> None:
    """Results are kept by configuration name: vote=all alone does not change the default name,
    so without name= the two runs would be mixed in one entry."""
    import argparse

    from mrsa.evals.cli import add_arguments, main

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--config", "rsa:n=4,k=4,t=2", "--config", "rsa:n=4,k=4,t=2,vote=all",
                              "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="two configurations are named 'rsa N=4 K=4 T=2'"):
        main(args)
    assert not (tmp_path / "results.json").exists()
