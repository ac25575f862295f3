"""Aggregation / refine prompts and the context check."""

from __future__ import annotations

import pytest

from mrsa.rsa.params import RsaParams
from mrsa.rsa.prompts import (
    ContextTooLongError,
    aggregation_messages,
    aggregation_text,
    check_context,
)
from mrsa.rsa.tails import Tail
from tests.fakes import FakeTokenizer

CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 1+1?"},
    {"role": "assistant", "content": "2"},
    {"role": "user", "content": "And 6*7?"},
]


def test_aggregation_keeps_earlier_messages_and_replaces_the_last_user_turn() -> None:
    tails = [Tail("first idea", 2, cut=False), Tail("second idea", 2, cut=True)]
    out = aggregation_messages(CHAT, tails, "bare")
    assert out[:3] == CHAT[:3] and out[3]["role"] == "user"
    text = out[3]["content"]
    assert "And 6*7?" in text and "What is 1+1?" not in text
    assert "Some of them may be wrong" in text and "\\boxed{}" in text
    assert "--- Candidate 1 ---\nfirst idea\n" in text
    assert "--- Candidate 2 ---\n...second idea\n" in text  # cut tails are marked
    assert text.index("And 6*7?") < text.index("Candidate 1") < text.index("Candidate 2")
    assert text.rstrip().endswith("\\boxed{}.")
    assert CHAT[3]["content"] == "And 6*7?"  # the request is not mutated


def test_annotated_candidates_say_what_they_concluded_or_that_they_stopped() -> None:
    tails = [Tail("so x = 1, \\boxed{1}", 6, cut=False, answer="1"), Tail("first, x + 1", 4, cut=True),
             Tail("long", 1, cut=False, answer="the answer is a whole sentence that goes on and on and on")]
    text = aggregation_text("Solve x+1=2.", tails, "annotated")
    assert "--- Candidate 1 (its final answer: 1) ---\nso x = 1" in text
    assert "--- Candidate 2 (unfinished: it stops before a final answer) ---\n...first, x + 1" in text
    assert "(its final answer: the answer is a whole sentence that g...)" in text  # cut to 40 chars
    assert "continue unfinished work" in text and text.rstrip().endswith("\\boxed{}.")
    assert aggregation_text("Solve x+1=2.", tails, "bare").count("final answer:") == 0
    single = aggregation_text("Solve x+1=2.", tails[1:2], "annotated")
    assert "--- Candidate solution (unfinished: it stops before a final answer) ---" in single


def test_a_complete_trace_without_a_boxed_answer_is_not_called_unfinished() -> None:
    tails = [Tail("7 + 5 equals 12.", 6, cut=False, finished=True), Tail("7 + 5 is", 4, cut=False)]
    text = aggregation_text("What is 7 + 5?", tails, "annotated")
    assert "--- Candidate 1 (complete, but without a boxed final answer) ---\n7 + 5 equals 12." in text
    assert "--- Candidate 2 (unfinished: it stops before a final answer) ---" in text


def test_the_finish_of_a_trace_reaches_its_tail() -> None:
    from mrsa.rsa.tails import take_tail

    tok = FakeTokenizer()
    ids = tok.encode("7 + 5 equals 12.")
    assert take_tail(ids, "7 + 5 equals 12.", tok, 8, finished=True).finished
    assert not take_tail(ids, "7 + 5 equals 12.", tok, 8).finished


def test_the_context_check_covers_the_longest_headings() -> None:
    tok = FakeTokenizer()
    params = RsaParams(population=3, k=3, rounds=2, tail_tokens=40, trace_max_tokens=40)
    needs = check_context(tok, 10_000, CHAT, params)
    long_answer = "9" * 200  # headings cut it to 40 characters
    tails = [Tail(" ".join(["w"] * 20), 40, cut=True, answer=long_answer) for _ in range(3)]
    prompt = tok.apply_chat_template(aggregation_messages(CHAT, tails))
    assert len(prompt) <= needs.aggregation_prompt_tokens


def test_single_candidate_uses_refine_wording() -> None:
    text = aggregation_text("Solve x+1=2.", [Tail("x is 1", 3, cut=False)], "bare")
    assert "candidate solution" in text and "fix any mistakes" in text
    assert "several candidate" not in text and "Candidate 1" not in text
    assert "x is 1" in text and not text.count("...x is 1")


def test_messages_without_a_user_turn_are_rejected() -> None:
    with pytest.raises(ValueError):
        aggregation_messages([{"role": "system", "content": "hi"}], [Tail("a", 1, False)])


def test_context_check_passes_and_bounds_a_real_worst_case_prompt() -> None:
    tok = FakeTokenizer()
    params = RsaParams(population=4, k=3, rounds=3, tail_tokens=50, trace_max_tokens=80)
    needs = check_context(tok, 4096, CHAT, params)
    assert needs.prompt_tokens == len(tok.apply_chat_template(CHAT))
    # Three cut tails of exactly tau tokens each must fit the measured aggregation prompt.
    words = " ".join(f"tok{i}" for i in range(200))
    tails = [Tail(tok.decode(tok.encode(words)[-50:]), 50, cut=True) for _ in range(3)]
    prompt = tok.apply_chat_template(aggregation_messages(CHAT, tails))
    assert len(prompt) <= needs.aggregation_prompt_tokens
    assert needs.required == needs.aggregation_prompt_tokens + 80 <= 4096


def test_context_error_shows_the_numbers() -> None:
    tok = FakeTokenizer()
    params = RsaParams(population=4, k=4, rounds=2, tail_tokens=600, trace_max_tokens=600)
    with pytest.raises(ContextTooLongError) as info:
        check_context(tok, 2048, CHAT, params)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.max_model_len == 2048 and err.required > 2048
    assert err.prompt_tokens == len(tok.apply_chat_template(CHAT))
    message = str(err)
    assert "2048" in message and str(err.required) in message and "600" in message


def test_plain_prompt_too_long_is_reported() -> None:
    tok = FakeTokenizer()
    long = [{"role": "user", "content": "word " * 600}]
    params = RsaParams(population=2, k=1, rounds=1, tail_tokens=8, trace_max_tokens=100, selection="majority")
    with pytest.raises(ContextTooLongError) as info:
        check_context(tok, 1000, long, params)
    assert info.value.required == info.value.prompt_tokens + 100 > 1000
    assert str(info.value.prompt_tokens) in str(info.value) and "1000" in str(info.value)


def test_runs_that_never_aggregate_need_only_the_plain_prompt() -> None:
    tok = FakeTokenizer()
    big_tails = dict(population=4, k=4, tail_tokens=1000, trace_max_tokens=100)
    voting = RsaParams(rounds=1, selection="majority", **big_tails)
    assert check_context(tok, 200, CHAT, voting).required <= 200
    with pytest.raises(ContextTooLongError):
        check_context(tok, 200, CHAT, RsaParams(rounds=1, selection="auto", **big_tails))


def test_compare_prompt_asks_to_solve_anew_and_lists_what_the_attempts_concluded() -> None:
    tails = [Tail("so 16 - 3 = 13, \\boxed{26}", 8, cut=False, answer="26"),
             Tail("... 9 * 2 = 18, \\boxed{18}", 8, cut=True, answer="18"),
             Tail("first, 16 - 3", 4, cut=True)]
    text = aggregation_text("How much does Janet make?", tails, "compare")
    assert text.startswith("Problem:\nHow much does Janet make?\n\nHere are 3 attempts")
    assert "--- Attempt 1 (its final answer: 26) ---\nso 16 - 3 = 13" in text
    assert "--- Attempt 2 (its final answer: 18) ---\n...... 9 * 2" in text  # cut: marked
    assert "--- Attempt 3 (unfinished: it stops before a final answer) ---" in text
    # what they concluded, side by side, after the attempts; then the request
    assert text.index("--- End of attempts ---") < text.index("The attempts disagree: they answer 26, 18.")
    assert "Solve the problem yourself" in text and text.rstrip().endswith("\\boxed{}.")


def test_compare_prompt_says_when_the_attempts_agree_or_none_finished() -> None:
    agree = [Tail("\\boxed{18}", 3, cut=False, answer="18"), Tail("\\boxed{18.}", 3, cut=False, answer="18")]
    assert "The attempts that finished all answer 18." in aggregation_text("Q?", agree, "compare")
    unfinished = [Tail("16 - 3", 3, cut=True), Tail("so far", 2, cut=True)]
    assert "None of the attempts reached a final answer." in aggregation_text("Q?", unfinished, "compare")
    one = aggregation_text("Q?", agree[:1], "compare")
    assert "Here is an attempt at this problem. It may be wrong." in one and "Attempt 1" in one


def test_context_check_bounds_the_compare_prompt() -> None:
    tok = FakeTokenizer()
    params = RsaParams(population=3, k=3, rounds=2, tail_tokens=40, trace_max_tokens=40, aggregation_prompt="compare")
    needs = check_context(tok, 10_000, CHAT, params)
    tails = [Tail(" ".join(["w"] * 20), 40, cut=True, answer=f"{n}" * 200) for n in range(3)]  # 3 long answers
    prompt = tok.apply_chat_template(aggregation_messages(CHAT, tails, "compare"))
    assert len(prompt) <= needs.aggregation_prompt_tokens
