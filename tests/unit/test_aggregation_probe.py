"""The aggregation probe picks exactly the round-2 prompts whose candidates disagree on
correctness, and rebuilds them from the stored tails."""

from __future__ import annotations

from mrsa.evals.datasets import Problem
from research.aggregation_probe import mixed_prompts, population_prompts, summarize


def node(round_: int, index: int, answer: str | None, parents: list[int] = (), **kw) -> dict:
    return {"round": round_, "index": index, "kind": "trace", "parents": list(parents), "seed": 10 * round_ + index,
            "answer": answer, "tail_text": f"tail {round_}.{index}", "text": f"whole {round_}.{index}", "tail_tokens": 3,
            "cut": False,
            "finish_reason": kw.get("finish_reason", "stop")}


def test_only_partly_right_parents_make_a_probe_prompt() -> None:
    problems = {"1": Problem("1", "What is 6 * 7?", "42")}
    traces = {"1": [
        node(0, 0, "42"), node(0, 1, "41"), node(0, 2, "42.0"), node(0, 3, None, finish_reason="length"),
        node(1, 0, "41", [0, 1]),  # one right of two: probed
        node(1, 1, "42", [0, 2]),  # both right: not
        node(1, 2, None, [1, 3]),  # none right: not
        node(1, 3, "42", [3, 2]),  # the right one second, the other unfinished: probed
        {**node(2, 0, "42"), "kind": "final"},
    ]}
    probes = mixed_prompts(traces, problems)
    assert [(p.index, p.right_parents, p.original_answer) for p in probes] == [(0, 1, "41"), (3, 1, "42")]
    last = probes[1]
    assert [t.text for t in last.tails] == ["tail 0.3", "tail 0.2"] and last.seed == 13
    assert [t.finished for t in last.tails] == [False, True] and last.tails[1].answer == "42.0"
    assert last.is_right(" 42 ") and not last.is_right(None) and not probes[0].is_right(probes[0].original_answer)


def test_a_partly_right_first_round_makes_one_whole_population_prompt() -> None:
    problems = {"1": Problem("1", "What is 6 * 7?", "42"), "2": Problem("2", "What is 2 * 2?", "4"),
                "3": Problem("3", "What is 1 + 1?", "2")}
    traces = {
        "1": [node(1, 1, "41", [2, 0]), node(0, 2, "41"), node(0, 0, "42"), node(0, 1, None, finish_reason="length"),
              node(1, 0, "42", [0, 1]), {**node(2, 0, "42"), "kind": "final"}],
        "2": [node(0, 0, "4"), node(0, 1, "4"), node(1, 0, "4", [0, 1])],  # all right: not probed
        "3": [node(0, 0, "3"), node(0, 1, None), node(1, 0, "3", [0, 1])],  # none right: not probed
    }
    (probe,) = population_prompts(traces, problems)
    assert probe.problem.id == "1" and probe.right_parents == 1
    assert [t.text for t in probe.tails] == ["tail 0.0", "tail 0.1", "tail 0.2"]  # index order
    assert probe.texts == ["whole 0.0", "whole 0.1", "whole 0.2"]
    assert (probe.index, probe.seed, probe.original_answer) == (0, 10, "42")  # the first round-2 node


def test_summary_counts_right_answers_against_chance() -> None:
    rows = [{"right": True, "original_right": False, "right_parents": 1, "candidates": 2, "tokens": 5},
            {"right": False, "original_right": True, "right_parents": 1, "candidates": 4, "tokens": 7}]
    assert summarize("m", rows) == {"model": "m", "prompts": 2, "right": 1, "original_right": 1,
                                    "chance": 0.75, "tokens": 12}


def test_candidates_can_be_recut_from_the_whole_traces() -> None:
    from research.aggregation_probe import retailed
    from tests.fakes import FakeTokenizer

    problems = {"1": Problem("1", "What is 6 * 7?", "42")}
    traces = {"1": [node(0, 0, "42"), node(0, 1, "41"), node(1, 0, "41", [1, 0])]}
    (probe,) = mixed_prompts(traces, problems)
    tok = FakeTokenizer()
    whole = retailed(probe, tok, 100)  # longer than the traces: each whole, uncut
    assert [t.text for t in whole] == ["whole 0.1", "whole 0.0"] and not any(t.cut for t in whole)
    assert [t.answer for t in whole] == ["41", "42"] and all(t.finished for t in whole)
    short = retailed(probe, tok, 1)  # the last token only, marked cut
    assert [t.text for t in short] == ["1", "0"] and all(t.cut for t in short)


def test_pairs_of_aggregates_with_one_right_answer_make_third_round_prompts() -> None:
    from research.aggregation_probe import aggregate_pair_prompts

    problems = {"1": Problem("1", "What is 6 * 7?", "42"), "2": Problem("2", "What is 2 * 2?", "4")}
    traces = {
        "1": [node(0, 0, "42"), node(0, 1, "41"),
              node(1, 2, "42", [0, 1]), node(1, 0, "41", [0, 1]), node(1, 1, None, [1, 0], finish_reason="length"),
              {**node(2, 0, "42"), "kind": "final"}],
        "2": [node(0, 0, "4"), node(1, 0, "4", [0, 0]), node(1, 1, "4", [0, 0])],  # no wrong aggregate: none
    }
    probes = aggregate_pair_prompts(traces, problems)
    # pairs (0, 2) and (1, 2) have one right aggregate; (0, 1) has none
    assert [[t.text for t in p.tails] for p in probes] == [["tail 1.0", "tail 1.2"], ["tail 1.1", "tail 1.2"]]
    assert [p.index for p in probes] == [0, 1] and all(p.right_parents == 1 for p in probes)
    assert probes[0].seed == (10 * 1_000_003 + 12) % 2**31 and probes[1].tails[0].finished is False
    assert probes[1].texts == ["whole 1.1", "whole 1.2"]
