"""A trace cut at its token limit gives no answer from its dangling last line, and a tie in the
vote goes to an answer a finished trace gave."""

from __future__ import annotations

import pytest

from mrsa.rsa import RsaParams, RsaRun
from mrsa.rsa.answers import extract_answer, majority_vote
from tests.fakes import FakeEngine, FakeRequest, FakeTokenizer, collect

CUT = "**Write down the final answer**: The final answer is"
MESSAGES = [{"role": "user", "content": "What is 2 + 3? Answer in \\boxed{}."}]


@pytest.mark.parametrize("finished", [True, False])
def test_a_dangling_answer_line_is_no_answer(finished: bool) -> None:
    assert extract_answer(f"2 + 3 = 5.\n{CUT}", finished=finished) is None


def test_the_cut_last_line_of_an_unfinished_trace_is_no_answer() -> None:
    assert extract_answer("so 12 / 1 = 12.\nThe answer is 1", finished=False) is None
    assert extract_answer("so 12 / 1 = 12.\nThe answer is 1", finished=True) == "1"
    assert extract_answer("The answer is 12.\nchecking again: 12", finished=False) == "12"
    assert extract_answer("\\boxed{12} and more", finished=False) == "12"  # a closed box stands


def test_an_answer_is_what_follows_the_last_answer_marker_of_its_line() -> None:
    assert extract_answer("Final answer: the answer is 5") == "5"


def test_a_tie_goes_to_an_answer_a_finished_trace_gave() -> None:
    assert majority_vote(["7", "5"], [False, True])[0] == "5"
    assert majority_vote(["7", "5", "7", "5"], [False, True, True, True])[0] == "7"  # both finished: earliest
    assert majority_vote(["7", "5"])[0] == "7"  # without flags: the earliest


def _cut_at_is(req: FakeRequest) -> str:
    return f"Let me add: 2 + 3 = 5.\n{CUT} 5." if req.request_id.endswith("-i0") else "2 + 3 = 5, so \\boxed{5}."


async def test_a_cut_trace_does_not_win_the_answer() -> None:
    """The case as a new user met it: N=2, T=2, 96 tokens, seed 1; trace 0 is cut right after
    "The final answer is"; the run answered that line instead of 5."""
    cut = len(FakeTokenizer().encode(f"Let me add: 2 + 3 = 5.\n{CUT}"))
    engine = FakeEngine(script=lambda r: "\\boxed{5}" if r.request_id.endswith("-final") else _cut_at_is(r))
    params = RsaParams(population=2, rounds=2, k=2, trace_max_tokens=cut, tail_tokens=96, seed=1)
    _, result = await collect(RsaRun(engine, MESSAGES, params, run_id="run"))
    assert engine.by_id("run-r1-i0").finish_reason == "length"
    assert result.answers[-1] == [None, "5"]
    assert result.answer == "5" and not result.content.rstrip().endswith("is")


async def test_a_tie_between_a_cut_and_a_finished_trace_goes_to_the_finished_one() -> None:
    def script(req: FakeRequest) -> str:
        if req.request_id.endswith("-i0"):
            return "Answer: 7\nthen I check it again and again and again and again"
        return "so \\boxed{5}."

    engine = FakeEngine(script=script)
    params = RsaParams(population=2, rounds=1, k=2, trace_max_tokens=8, tail_tokens=8, seed=1, selection="majority")
    _, result = await collect(RsaRun(engine, MESSAGES, params, run_id="run"))
    assert engine.by_id("run-r0-i0").finish_reason == "length" and result.answers == [["7", "5"]]
    assert result.answer == "5" and result.content == "so \\boxed{5}."


async def test_auto_votes_when_the_only_answerless_traces_were_cut() -> None:
    """The same run with a final aggregation that would itself be cut: ``auto`` must not send one
    finished answer and one cut trace to a final call, the finished trace's answer is the vote."""
    cut = len(FakeTokenizer().encode(f"Let me add: 2 + 3 = 5.\n{CUT}"))

    def script(req: FakeRequest) -> str:
        return f"Aggregating: 2 + 3 = 5.\n{CUT} 5." if req.request_id.endswith("-final") else _cut_at_is(req)

    engine = FakeEngine(script=script)
    params = RsaParams(population=2, rounds=2, k=2, trace_max_tokens=cut, tail_tokens=96, seed=1)
    _, result = await collect(RsaRun(engine, MESSAGES, params, run_id="run"))
    assert result.answers[-1] == [None, "5"] and result.final_mode == "majority"
    assert not any(r.request_id.endswith("-final") for r in engine.requests)
    assert result.answer == "5" and result.content == "2 + 3 = 5, so \\boxed{5}."


async def test_auto_still_aggregates_when_an_answerless_trace_finished() -> None:
    def script(req: FakeRequest) -> str:
        if req.request_id.endswith("-final"):
            return "\\boxed{5}"
        return "I am not sure." if req.request_id.endswith("-i0") else "so \\boxed{5}."

    engine = FakeEngine(script=script)
    params = RsaParams(population=2, rounds=1, k=2, trace_max_tokens=64, tail_tokens=64, seed=1)
    _, result = await collect(RsaRun(engine, MESSAGES, params, run_id="run"))
    assert result.answers == [[None, "5"]] and result.final_mode == "aggregate"
