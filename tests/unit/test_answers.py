"""Answer extraction, normalisation and the vote."""

from __future__ import annotations

import pytest

from mrsa.rsa.answers import extract_answer, majority_vote, normalize_answer


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("So \\boxed{3} then \\boxed{42}.", "42"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("we get \\boxed{x^{2} + \\{1\\}} done", "x^{2} + \\{1\\}"),
        ("\\fbox{7}", "7"),
        ("\\boxed {9}", "9"),
        ("\\boxed{12} and then cut \\boxed{1", "12"),  # unbalanced last one is skipped
        ("\\boxed{5}\n\\boxed{}", "5"),  # empty box ignored
        ("Thus the answer is 17.", "17"),
        ("Answer: $x = 3$", "x = 3"),
        ("**Final Answer:** 2024", "2024"),
        ("The answer is 1.\nmore work\nFinal answer: 2", "2"),
        ("the final answer is \\frac{3}{4}", "\\frac{3}{4}"),
        ("I computed 3 + 4 = 7 and then 8", None),  # no last-number fallback
        ("", None),
    ],
)
def test_extract_answer(text: str, answer: str | None) -> None:
    assert extract_answer(text) == answer


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        (" 42 ", "42"),
        ("$42$", "42"),
        ("1,000", "1000"),
        ("1,234,567.50", "1234567.5"),
        ("1.0", "1"),
        ("-0.0", "0"),
        ("\\text{Yes}", "yes"),
        ("\\textbf{\\text{No}}.", "no"),
        ("\\dfrac{1}{2}", "\\frac{1}{2}"),
        ("\\tfrac{1}{2}", "\\frac{1}{2}"),
        ("\\left( 1, 2 \\right)", "(1,2)"),
        ("x = 5.", "x=5"),
        ("1\\,000", "1000"),
        ("\\rightarrow", "\\rightarrow"),  # \right only as a whole command
        ("New  York", "new york"),
        ("1,2", "1,2"),  # a tuple, not a thousands separator
    ],
)
def test_normalize_answer(raw: str, normal: str) -> None:
    assert normalize_answer(raw) == normal


def test_majority_vote_normalises_and_ignores_none() -> None:
    winner, counts = majority_vote(["$1,000$", None, "7", "1000", "1000.0", None])
    assert winner == "1000" and counts == {"1000": 3, "7": 1}


def test_majority_vote_ties_go_to_the_earliest() -> None:
    assert majority_vote(["b", "a", "a", "b"])[0] == "b"
    assert majority_vote(["a", "b", "b", "a"])[0] == "a"


def test_majority_vote_of_nothing() -> None:
    assert majority_vote([None, None]) == (None, {})
    assert majority_vote([]) == (None, {})
