"""``mrsa calibrate``: the sample pool, the points read off it, the frontier, the effort rule and
the preset file, over the fake engine (no model)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from mrsa.evals.backends import EngineBackend
from mrsa.evals.calibrate import calibration_document, vote_points
from mrsa.evals.datasets import Problem, arithmetic
from mrsa.evals.efforts import budgets, choose, preset_document, write_presets
from mrsa.evals.frontier import AdaptiveVote, Point, adaptive_vote_point, compare, frontier, run_points, vote_point
from mrsa.evals.pool import Pool, PoolEntry, Sample, run_seed
from mrsa.evals.runner import evaluate, parse_config
from mrsa.rsa import RsaParams
from tests.fakes import FakeEngine, FakeRequest

BASE = RsaParams(tail_tokens=16, trace_max_tokens=64)


def _entry(pid: str, gold: str, answers: list[str | None], tokens: list[int] | None = None) -> PoolEntry:
    tokens = tokens or [10 * (i + 1) for i in range(len(answers))]
    return PoolEntry(pid, gold, 0, [Sample(a, t) for a, t in zip(answers, tokens, strict=True)])


def _point(name: str, correct: list[bool], tokens: float) -> Point:
    return Point(name, {"method": "rsa", "population": 1}, {str(i): c for i, c in enumerate(correct)},
                 {str(i): int(tokens) for i in range(len(correct))})


# ----------------------------------------------------------------------------- points off the pool


def test_vote_points_are_majorities_of_prefixes_and_single_is_the_first_sample() -> None:
    entries = [_entry("a", "5", ["4", "5", "5", "4"]), _entry("b", "7", ["7", "1", "1", "2"])]
    single, two, three = (vote_point(entries, k) for k in (1, 2, 3))
    assert single.name == "single" and single.correct == {"a": False, "b": True}
    assert single.tokens == {"a": 10, "b": 10}
    assert two.correct == {"a": False, "b": True}  # a 1-1 tie goes to the first answer given
    assert three.correct == {"a": True, "b": False} and three.tokens == {"a": 60, "b": 60}
    assert vote_point(entries, 5).problems == 0  # no pool holds five samples: not measured
    cut = [PoolEntry("c", "4", 0, [Sample("5", 64, ended=False), Sample("4", 30)])]
    assert vote_point(cut, 2).correct == {"c": True}  # a tie goes to the trace that ended by itself


def test_adaptive_vote_counts_in_index_order_and_stops_at_the_first_settled_prefix() -> None:
    method = AdaptiveVote(population=2, wave=2, max_population=8, stop_rule="supermajority", stop_threshold=0.75)
    assert method.counted(["5", "5", "4"]) == 2  # 2 of 2 agree at the first wave
    assert method.counted(["5", "4", "5", "5", "6", "7", "8", "9"]) == 4  # 3 of 4
    assert method.counted(["5", "4", "6", "7", "8", "9", "1", "2"]) == 8  # never settled: max_population
    assert method.counted(["5", "4", "6"]) is None  # the pool is too short to say
    assert [method.launched(n) for n in (2, 3, 4, 5, 8)] == [2, 4, 4, 6, 8]  # whole waves, capped
    entries = [_entry("a", "5", ["5", "4", "5", "5", "6"]), _entry("b", "4", ["4", "5", "6"])]
    point = adaptive_vote_point(entries, method)
    # a stops at 4 of its 5 samples (tokens of the 4 launched); b would need a fourth: left out
    assert point.correct == {"a": True} and point.tokens == {"a": 10 + 20 + 30 + 40}


async def test_the_pool_replays_the_adaptive_vote_the_method_runs() -> None:
    """What calibration reads off the pool is what an adaptive_vote request answers."""
    problems = arithmetic(6, 1, seed=3)
    golds = {p.question: p.answer for p in problems}

    def answer(request: FakeRequest) -> str:
        gold = next(a for q, a in golds.items() if q in request.prompt)
        return gold if request.rng().random() < 0.55 else str(int(gold) + request.rng().randrange(1, 3))

    engine = FakeEngine(answer=answer, delay=0.001)
    pool = Pool()
    assert await pool.grow(EngineBackend(engine), problems, BASE, seed=4, levels=[8], deadline=time.monotonic() + 60)
    method = AdaptiveVote(2, 2, 8, "posterior", 0.8)
    replayed = adaptive_vote_point(list(pool.entries.values()), method)
    config = parse_config("adaptive_vote:n=2,wave=2,maxn=8,rule=posterior,thr=0.8", {"tail_tokens": 16, "trace_max_tokens": 64})
    ran = await evaluate(EngineBackend(FakeEngine(answer=answer, delay=0.001)), [config], problems, seed=4)
    runs = {r["problem"]: r for r in ran["configs"][0]["runs"]}
    assert replayed.problems == len(problems)
    for e in pool.entries.values():
        counted = method.counted([s.answer for s in e.samples])
        run = runs[e.problem]
        assert run["final_correct"] == replayed.correct[e.problem]
        # the run spends at least the counted samples and at most the waves it launched
        assert sum(s.tokens for s in e.samples[:counted]) <= run["completion_tokens"] <= replayed.tokens[e.problem]
    assert e.seed == run_seed(4, len(problems) - 1)


# ----------------------------------------------------------------------------- the pool


async def test_the_pool_grows_open_problems_most_contested_first_and_reads_back(tmp_path: Path) -> None:
    problems = [Problem(str(i), f"q{i}", "1") for i in range(3)]
    pool = Pool(tmp_path / "pool.json")
    assert pool.wanted(problems, [4, 8]) == [(0, 4), (1, 4), (2, 4)]
    pool.entries = {"0": _entry("0", "1", ["1", "2", "1", "2"]), "1": _entry("1", "1", ["1"] * 4),
                    "2": _entry("2", "1", ["1", "1", "1", "2"])}
    assert pool.wanted(problems, [4, 8]) == [(0, 8), (2, 8)]  # unanimous "1" stays at 4; a 2-2 tie first
    pool.save()
    again = Pool(tmp_path / "pool.json")
    assert again.entries == pool.entries
    engine = FakeEngine(delay=0.001)
    done = await again.grow(EngineBackend(engine), problems, BASE, seed=0, levels=[4, 8], deadline=time.monotonic())
    assert not done and engine.requests == []  # past the deadline nothing starts


# ----------------------------------------------------------------------------- frontier and efforts


def test_the_frontier_keeps_only_undominated_points() -> None:
    a = _point("a", [True, False, False, False], 100)
    b = _point("b", [True, True, False, False], 200)
    c = _point("c", [True, False, False, False], 300)  # b is better and cheaper
    d = _point("d", [True, True, True, False], 400)
    assert [p.name for p in frontier([c, d, b, a])] == ["a", "b", "d"]


def test_effort_levels_follow_the_stated_rule() -> None:
    n = 40
    single = _point("single", [True] * 20 + [False] * 20, 100)
    ref = _point("vote@8", [True] * 30 + [False] * 10, 800)
    cheap = _point("cheap", [True] * 24 + [False] * 16, 190)  # within low's 2 x 100
    half = _point("half", [True] * 29 + [False] * 11, 400)  # within medium's 800 / 2
    big = _point("big", [True] * 34 + [False] * 6, 1600)  # beyond high
    same = _point("same", [True] * 33 + [False] * 7, 700)  # one problem below big: not resolved
    points = [single, ref, cheap, half, big, same]
    assert budgets(single, ref) == {"low": 200, "medium": 400, "high": 800}
    chosen = choose(points, single, ref)
    assert {k: p.name for k, p in chosen.items()} == {"low": "cheap", "medium": "half", "high": "same",
                                                      "xhigh": "big", "auto": "same"}
    assert compare(chosen["auto"], big).high >= 0 > compare(half, big).high  # half is resolved below big
    assert all(p.problems == n for p in points)


def test_the_preset_file_is_the_service_format(tmp_path: Path) -> None:
    from mrsa.service.presets import load_presets
    from mrsa.service.settings import Settings

    entries = [_entry(str(i), "5", ["5", "4", "5", "5", "6", "5", "4", "5"]) for i in range(6)]
    points = vote_points(entries, [8])
    calibration = calibration_document(points, [e.problem for e in entries], "vote@8",
                                       {"model": "fake-model", "dataset": "d.jsonl", "seed": 0}, 0)
    assert set(calibration["efforts"]) == {"low", "medium", "high", "xhigh", "auto"}
    chosen = {level: Point(c["name"], c["fields"]) for level, c in calibration["efforts"].items()}
    trace = {"trace_max_tokens": 64, "temperature": 0.6}
    path = write_presets(tmp_path / "p.json", preset_document("fake-model", chosen, trace, {"problems": 6}))
    presets = load_presets(path)
    assert presets.model == "fake-model" and presets.measured == {"problems": 6}
    for level, fields in presets.efforts.items():
        assert fields["trace_max_tokens"] == 64 and fields["method"] in ("rsa", "adaptive_vote")
        Settings().rsa_params(fields)  # every level is a valid rsa object for the server
    # the file names what it measured: each level's method and its figures
    assert json.loads(path.read_text())["efforts"]["low"] == {**trace, **calibration["efforts"]["low"]["fields"]}


def test_points_measured_on_some_problems_are_shown_not_chosen() -> None:
    entries = [_entry("0", "5", ["5"] * 8), _entry("1", "5", ["4", "5", "4", "5", "4", "5", "4", "5"])]
    partial = Point("rsa partial", {"method": "rsa"}, {"0": True}, {"0": 1}, "run")
    calibration = calibration_document([*vote_points(entries, [8]), partial], ["0", "1"], "vote@8",
                                       {"model": "m", "dataset": "d", "seed": 0}, 0)
    assert [p["name"] for p in calibration["partial"]] == ["rsa partial"]
    assert all(c["name"] != "rsa partial" for c in calibration["efforts"].values())
    with pytest.raises(ValueError, match="vote@16"):
        calibration_document(vote_points(entries, [8]), ["0", "1"], "vote@16", {}, 0)


def test_run_points_read_an_eval_document() -> None:
    document = {"configs": [{"name": "rsa N=4 K=2 T=2", "params": RsaParams(population=4).model_dump(),
                             "runs": [{"problem": "1", "final_correct": True, "completion_tokens": 900, "error": None},
                                      {"problem": "2", "final_correct": False, "completion_tokens": 0, "error": "boom"}]}]}
    (point,) = run_points(document)
    assert point.correct == {"1": True} and point.tokens == {"1": 900} and point.source == "run"
    assert point.fields["population"] == 4 and "wave" not in point.fields  # rsa: no adaptive fields


def test_configs_name_the_adaptive_methods() -> None:
    vote = parse_config("adaptive_vote:n=2,wave=1,maxn=8,thr=0.7", {})
    assert vote.name == "adaptive_vote 2+1..8 posterior>=0.7"
    assert (vote.params.method, vote.params.k, vote.params.rounds, vote.params.stop_threshold) == ("adaptive_vote", 1, 1, 0.7)
    rsa = parse_config("adaptive_rsa:n=4,t=2,rule=supermajority,thr=0.75", {})
    assert rsa.name == "adaptive_rsa N=4 K=2 T=2 supermajority>=0.75" and rsa.params.selection == "majority"


# ----------------------------------------------------------------------------- replay by seed


async def test_a_kept_later_round_trace_is_replayed_only_for_the_same_node_and_prompt_length() -> None:
    from mrsa.engine.base import Completion, SamplingParams
    from mrsa.evals.memo import MemoEngine

    inner = FakeEngine()
    prompt = inner.tokenizer.encode("compare these two attempts")
    shorter = inner.tokenizer.encode("compare these attempts")
    kept = Completion([1, 2, 3], "kept text", "stop", len(prompt))
    memo = MemoEngine(inner, seeded={(7, 64, len(prompt), 0.6): kept})

    async def ask(prompt: list[int], seed: int) -> str:
        text = ""
        async for delta in memo.generate(prompt, SamplingParams(max_tokens=64, temperature=0.6, seed=seed), f"r{seed}"):
            text += delta.text
        return text

    assert await ask(prompt, 7) == "kept text" and inner.requests == []
    assert await ask(shorter, 7) != "kept text"  # another prompt length: another prompt
    assert await ask(prompt, 8) != "kept text"  # another seed: another node
    assert len(inner.requests) == 2 and memo.hits == 1


# ----------------------------------------------------------------------------- served presets


async def test_a_served_effort_runs_the_preset_calibration_wrote(tmp_path: Path) -> None:
    """``effort:medium`` through a server given the preset file answers as the measured method."""
    import httpx

    from mrsa.evals.backends import HttpBackend
    from mrsa.service.app import create_app
    from mrsa.service.settings import Settings

    problems = arithmetic(4, 1, seed=8)
    golds = {p.question: p.answer for p in problems}

    def engine() -> FakeEngine:
        def answer(request: FakeRequest) -> str:
            gold = next(a for q, a in golds.items() if q in request.prompt)
            return gold if request.rng().random() < 0.6 else str(int(gold) + 1)

        return FakeEngine(answer=answer, delay=0.001)

    spec = "adaptive_vote:n=2,wave=1,maxn=6,thr=0.7"
    measured = parse_config(spec, {"trace_max_tokens": 64})
    chosen = {"medium": Point(measured.name, AdaptiveVote(2, 1, 6, "posterior", 0.7).fields)}
    path = write_presets(tmp_path / "presets.json",
                         preset_document("fake-model", chosen, {"trace_max_tokens": 64, "temperature": 0.6}, {}))
    direct = await evaluate(EngineBackend(engine()), [measured], problems, seed=3)
    app = create_app(Settings(presets=path), engine_factory=lambda _: engine())
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            served = await evaluate(HttpBackend("http://test", client=http), [parse_config("effort:medium")], problems, seed=3)
    keep = ("problem", "answers", "final_answer", "final_correct", "completion_tokens", "stop_reason")
    runs = lambda doc: [{k: r[k] for k in keep} for r in doc["configs"][0]["runs"]]  # noqa: E731
    assert runs(served) == runs(direct)
    assert {r["stop_reason"] for r in runs(direct)} <= {"settled", "max_population"}


async def test_replay_only_answers_from_the_memo_and_a_missing_sample_fails_only_its_problem(tmp_path: Path) -> None:
    from mrsa.evals.memo import MemoEngine, ReplayOnlyEngine

    problems = arithmetic(3, 1, seed=2)
    path = tmp_path / "memo.jsonl"
    live = FakeEngine(delay=0.001)
    first = Pool()
    await first.grow(EngineBackend(MemoEngine(live, path)), problems, BASE, seed=0, levels=[2, 4],
                     deadline=time.monotonic() + 60)
    assert all(len(e.samples) == 2 for e in first.entries.values())  # all agree on "42": no growth
    replay = ReplayOnlyEngine(live.tokenizer, live.model_name)
    again = Pool()
    assert await again.grow(EngineBackend(MemoEngine(replay, path)), problems, BASE, seed=0, levels=[2, 4],
                            deadline=time.monotonic() + 60)
    assert again.entries == first.entries and replay.requests == 0
    more = Pool()
    assert not await more.grow(EngineBackend(MemoEngine(replay, path)), problems, BASE, seed=0, levels=[3],
                               deadline=time.monotonic() + 60)
    assert set(more.failed) == {p.id for p in problems} and more.entries == {}  # the third samples were never made


def test_the_documented_calibrate_command_parses() -> None:
    """The mrsa calibrate command of docs/evaluation.md: its flags exist and every --run is a configuration."""
    import re
    import shlex

    from mrsa.cli import build_parser

    readme = (Path(__file__).resolve().parents[2] / "docs" / "evaluation.md").read_text()
    (command,) = re.findall(r"\.venv/bin/mrsa (calibrate .*?)\n(?!\s)", readme.replace("\\\n", " "), re.S)
    args = build_parser().parse_args(shlex.split(command))
    assert args.func.__name__ == "_calibrate" and args.replay_only and args.size == 150
    configs = [parse_config(spec, {}) for spec in args.runs]
    assert len({c.name for c in configs}) == len(configs)


def test_mrsa_eval_replay_only_answers_from_the_memo_without_a_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mrsa.engine as engine_pkg
    from mrsa.cli import main

    live = FakeEngine(answer=lambda r: "42" if r.rng().random() < 0.6 else "41", delay=0.001)
    monkeypatch.setattr(engine_pkg, "create_engine", lambda config, cache_dir=None: live)
    memo = tmp_path / "memo.jsonl"
    flags = ["eval", "--size", "4", "--config", "majority:n=4", "--config", "adaptive_vote:n=2,wave=1,maxn=4,thr=0.7",
             "--tail-tokens", "16", "--trace-max-tokens", "64", "--memo", str(memo)]
    assert main([*flags, "--out", str(tmp_path / "live")]) == 0

    def no_model(config, cache_dir=None):
        raise AssertionError("replay-only must not load the model")

    monkeypatch.setattr(engine_pkg, "create_engine", no_model)
    monkeypatch.setattr(engine_pkg, "load_tokenizer", lambda config: (live.tokenizer, live.model_name))
    assert main([*flags, "--replay-only", "--out", str(tmp_path / "replayed")]) == 0
    runs = lambda name: [[{k: v for k, v in r.items() if k != "wall_s"} for r in c["runs"]]  # noqa: E731
                         for c in json.loads((tmp_path / name / "results.json").read_text())["configs"]]
    assert runs("replayed") == runs("live")
