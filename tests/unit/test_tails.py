"""Token-exact tails, from the output ids or from the re-encoded reasoning section."""

from __future__ import annotations

import pytest

from mrsa.rsa.tails import take_tail
from tests.fakes import FakeTokenizer


def test_tail_is_the_last_tau_output_ids_decoded() -> None:
    tok = FakeTokenizer()
    text = "one two three four five"
    ids = tok.encode(text)
    tail = take_tail(ids, text, tok, 3)
    assert tail.text == "four five" and tail.num_tokens == 3 and tail.cut
    assert tok.encode(tail.text) == ids[-3:]


def test_output_ids_are_sliced_as_given_not_re_encoded() -> None:
    tok = FakeTokenizer()
    ids = tok.encode("alpha beta gamma")
    tail = take_tail(ids, "text that does not match the ids", tok, 2)
    assert tail.text == " gamma" and tail.num_tokens == 2


@pytest.mark.parametrize("tau", [9, 10, 500])
def test_tau_at_least_the_trace_keeps_everything_uncut(tau: int) -> None:
    tok = FakeTokenizer()
    text = "one two three four five"
    ids = tok.encode(text)
    assert len(ids) == 9
    tail = take_tail(ids, text, tok, tau)
    assert (tail.text, tail.num_tokens, tail.cut) == (text, 9, False)


def test_think_section_tail_comes_from_the_reasoning_only() -> None:
    tok = FakeTokenizer()
    text = "<think>alpha beta gamma</think>\nThe answer is \\boxed{5}."
    ids = tok.encode(text)
    short = take_tail(ids, text, tok, 3)
    assert short.text == "beta gamma" and short.cut and short.num_tokens == 3
    whole = take_tail(ids, text, tok, 100)
    assert whole.text == "alpha beta gamma" and not whole.cut and whole.num_tokens == 5
    assert "<think>" not in whole.text and "boxed" not in whole.text


def test_unfinished_think_section_is_sliced_from_the_ids() -> None:
    tok = FakeTokenizer()
    text = "<think>still thinking about it"
    tail = take_tail(tok.encode(text), text, tok, 3)
    assert tail.text == "about it" and tail.cut


def test_tau_must_be_positive() -> None:
    tok = FakeTokenizer()
    with pytest.raises(ValueError):
        take_tail([1], "x", tok, 0)
