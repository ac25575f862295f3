"""The projection measures an aggregator from stored traces by kind of parent pair, and its
simulation follows those rates: a selector that always keeps the right candidate spreads a
minority's right answer, one that never does loses it, and agreeing pairs cost nothing when
carried forward."""

from __future__ import annotations

import json

import pytest

from research import projection
from research.projection import Aggregator, FirstRound, Sample, measure, outcome, pair_kind, project


def node(round_: int, index: int, answer: str | None, parents: list[int] = (), tokens: int = 10) -> dict:
    return {"round": round_, "index": index, "kind": "trace", "parents": list(parents), "answer": answer,
            "completion_tokens": tokens}


RIGHT, WRONG_A, WRONG_B, NONE = Sample("42", True), Sample("41", False), Sample("40", False), Sample(None, False)


def test_pairs_and_outcomes_are_classified_by_correctness_then_answer() -> None:
    assert pair_kind(RIGHT, Sample("42.0", True)) == "agree-right"
    assert pair_kind(WRONG_A, RIGHT) == pair_kind(RIGHT, NONE) == "mixed"
    assert pair_kind(WRONG_A, WRONG_A) == "agree-wrong"
    assert pair_kind(WRONG_A, WRONG_B) == pair_kind(NONE, NONE) == "both-wrong"
    assert outcome([RIGHT, WRONG_A], RIGHT) == "right"
    assert outcome([RIGHT, WRONG_A], WRONG_A) == "parent"
    assert outcome([RIGHT, WRONG_A], WRONG_B) == outcome([NONE, NONE], NONE) == "new"


def test_measure_counts_second_round_aggregates_against_their_parents() -> None:
    traces = {"1": [node(0, 0, "42"), node(0, 1, "$41"), node(0, 2, "42.0"), node(0, 3, None),
                    node(1, 0, "41", [0, 1], tokens=30),  # mixed, kept the wrong parent
                    node(1, 1, "42", [1, 3], tokens=50),  # both wrong, became right
                    node(1, 2, "7", [0, 2], tokens=10),  # both right, became a new wrong answer
                    {**node(2, 0, "42"), "kind": "final"}]}
    agg = measure(traces, {"1": "42"})
    assert agg.counts["mixed"] == {"parent": 1} and agg.counts["both-wrong"] == {"right": 1}
    assert agg.counts["agree-right"] == {"new": 1} and not agg.counts["agree-wrong"]
    assert agg.tokens == 30
    assert agg.rates("agree-wrong") == {"right": 0.0, "parent": 1.0, "new": 0.0}  # unseen: a copy
    assert agg.with_selector(0.8).rates("mixed") == pytest.approx({"right": 0.8, "parent": 0.2, "new": 0.0})


def minority_right() -> list[FirstRound]:
    """The right answer once, a wrong one twice: majority@4 is wrong."""
    return [FirstRound([RIGHT, WRONG_A, WRONG_A, WRONG_B], [5, 5, 5, 5])]


def test_a_perfect_selector_beats_the_vote_and_a_blind_one_never_does() -> None:
    copies = Aggregator({}, 100.0)  # never-seen kinds: copies of a parent
    assert projection.vote(minority_right()[0].samples) is False
    perfect, _ = project(minority_right(), copies.with_selector(1.0), 4, 4, reps=200, seed=1)
    blind, _ = project(minority_right(), copies.with_selector(0.0), 4, 4, vote_all=True, reps=200, seed=1)
    assert perfect > 0.8 and blind == 0.0


def test_agreeing_pairs_cost_nothing_when_carried_forward() -> None:
    agreed = [FirstRound([WRONG_A] * 4, [7, 7, 7, 7])]
    agg = Aggregator({}, 100.0)
    assert project(agreed, agg, 4, 3, skip_agreeing=True, reps=3) == (0.0, 28.0)
    assert project(agreed, agg, 4, 3, reps=3) == (0.0, 28.0 + 2 * 4 * 100.0)
    with pytest.raises(ValueError):
        project(agreed, agg, 5, 2)


def test_carrying_agreement_forward_is_replayed_exactly() -> None:
    traces = {"1": [node(0, 0, "42"), node(0, 1, "41"), node(0, 2, "41"),
                    node(1, 0, "40", [1, 2], tokens=30),  # agreeing parents: carried forward as 41
                    node(1, 1, "42", [0, 1], tokens=50), node(1, 2, "42", [0, 2], tokens=50)],
              "2": [node(0, 0, "7"), node(0, 1, "7"), node(1, 0, "9", [0, 1], tokens=40), node(1, 1, "9", [1, 0])]}
    assert projection.carried_forward(traces, {"1": "42", "2": "7"}) == {
        "right": 1, "tokens": (160 + 70) / 2, "carried_right": 2, "carried_tokens": (130 + 20) / 2}
    with pytest.raises(ValueError):
        projection.carried_forward({"1": [node(0, 0, "1"), node(2, 0, "1", [0])]}, {"1": "1"})


def test_the_command_replays_the_measured_configuration_and_writes_rows(tmp_path, capsys) -> None:
    first = [node(0, i, a, tokens=20) for i, a in enumerate(["42", "41", "42", "40"])]
    traces = {"majority@4": {"1": first, "2": [node(0, i, "3", tokens=20) for i in range(4)]},
              "rsa": {"1": first + [node(1, 0, "42", [0, 1]), node(1, 1, "41", [1, 3]), node(1, 2, "42", [0, 2]),
                                    node(1, 3, "42", [2, 1])],
                      "2": [node(0, i, "3", tokens=20) for i in range(4)] + [node(1, i, "3", [0, 1]) for i in range(4)]}}
    (tmp_path / "traces.json").write_text(json.dumps(traces))
    (tmp_path / "data.jsonl").write_text('{"id": "1", "question": "6*7?", "answer": "42"}\n'
                                         '{"id": "2", "question": "1+2?", "answer": "3"}\n')
    out = tmp_path / "projection.json"
    assert projection.main(["--traces", str(tmp_path / "traces.json"), "--dataset", str(tmp_path / "data.jsonl"),
                            "--rsa-config", "rsa", "--majority-config", "majority@4", "--population", "4",
                            "--rounds", "2", "--selector", "1.0", "--reps", "20", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "the traces' own second-round vote: 2 right" in printed
    # (80 + 30 + 80 + 0) / 2: problem 1's agreeing pair [0, 2] and all of problem 2's pairs cost nothing
    assert "agreeing pairs carried forward (exact): 2 right, 95 tok" in printed
    result = json.loads(out.read_text())
    assert result["majority"] == [[1, 2, 20.0], [2, 2, 40.0], [3, 2, 60.0], [4, 2, 80.0]]
    assert result["aggregator"]["counts"]["mixed"] == {"right": 2}
    assert len(result["rows"]) == 2 * 2 * 2  # measured and s = 1.0, skip or not, last or every round's vote
    assert {r["selector"] for r in result["rows"]} == {1.0}  # the measured mixed rate is 2 of 2


def test_the_vote_first_rule_judges_only_close_calls_between_the_two_leaders() -> None:
    close = [FirstRound([WRONG_A, RIGHT, WRONG_A, RIGHT], [5, 5, 5, 5])]  # 2-2, the wrong answer seen first
    assert projection.tiebreak(close, 4, 0, 1, 1.0, 100.0) == (1.0, 20.0 + 100.0)
    assert projection.tiebreak(close, 4, 0, 1, 0.0, 100.0) == (0.0, 120.0)
    # two judges at a coin: both right a quarter of the time; a split keeps the vote (wrong)
    assert projection.tiebreak(close, 4, 0, 2, 0.5, 100.0) == (pytest.approx(0.25), 220.0)
    clear = [FirstRound([WRONG_A, WRONG_A, WRONG_A, RIGHT], [5, 5, 5, 5])]  # a lead of 2 > margin 1
    assert projection.tiebreak(clear, 4, 1, 3, 1.0, 100.0) == (0.0, 20.0)
    neither = [FirstRound([WRONG_A, WRONG_B, RIGHT], [5, 5, 5])]  # the leaders 41 and 40 are both wrong
    assert projection.tiebreak(neither, 3, 0, 1, 1.0, 100.0) == (0.0, 115.0)
    assert projection.tiebreak([FirstRound([NONE, NONE], [5, 5])], 2, 0, 1, 1.0, 100.0) == (0.0, 10.0)


def test_the_command_reports_the_best_vote_first_rule_within_majoritys_tokens(tmp_path, capsys) -> None:
    first = [node(0, i, a, tokens=20) for i, a in enumerate(["41", "42", "41", "42"])]
    traces = {"majority@4": {"1": first},
              "rsa": {"1": first + [node(1, i, "42", [0, 1], tokens=20) for i in range(4)]}}
    (tmp_path / "traces.json").write_text(json.dumps(traces))
    (tmp_path / "data.jsonl").write_text('{"id": "1", "question": "6*7?", "answer": "42"}\n')
    out = tmp_path / "projection.json"
    assert projection.main(["--traces", str(tmp_path / "traces.json"), "--dataset", str(tmp_path / "data.jsonl"),
                            "--rsa-config", "rsa", "--majority-config", "majority@4", "--population", "4",
                            "--rounds", "2", "--reps", "2", "--tiebreak", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["tiebreak"]
    # majority@4 (80 tok) is wrong: 2-2 and 41 seen first; a vote of 3 (2-1 for 41) plus one judge
    # (20 tok) that always picks 42 fits the 80 tokens and is right
    assert [r["selector"] for r in rows] == [1.0]  # the measured rate is 1.0 too
    assert rows[0]["right"] == 1.0 and rows[0]["tokens"] <= 80.0
    assert "vote-first s=1.00" in capsys.readouterr().out


def test_the_research_scripts_run_from_a_checkout_and_are_not_shipped() -> None:
    """``python -m research.<script>`` from the checkout's root; the installed package has no copy."""
    import importlib.util
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    for script in ("projection", "aggregation_probe"):
        proc = subprocess.run([sys.executable, "-m", f"research.{script}", "--help"], cwd=root,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and f"python -m research.{script}" in proc.stdout, proc.stderr
        assert importlib.util.find_spec(f"mrsa.evals.{script}") is None
