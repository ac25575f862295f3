"""Is an extracted answer right? math-verify decides, with a numeric rule for word problems.

math-verify parses both sides (LaTeX or plain expressions) into sympy and compares them, so
``0.5``, ``\\frac{1}{2}`` and ``x = 1/2`` all match a gold ``1/2``. GSM8K's gold answers are
plain numbers while models box ``\\$18``, ``18 \\text{ dollars}``, ``1,200`` or ``40\\%``; when
the gold is a number, the last number of the answer (thousands separators, currency signs,
percent signs and LaTeX text wrappers removed) is compared to it numerically. Answers that are
neither fall back to the run's own normalisation (rsa/answers.py), so a textual answer can
still be graded.
"""

from __future__ import annotations

import re
import threading
from decimal import Decimal, InvalidOperation
from functools import lru_cache

from math_verify import parse, verify

from mrsa.rsa.answers import normalize_answer

_TEXT = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox|operatorname)\s*\{([^{}]*)\}")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_GROUPED = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def as_number(text: str) -> Decimal | None:
    """``text`` as a decimal when it is a plain number (``18``, ``-3.5``, ``1,200``), else None."""
    try:
        return Decimal(_GROUPED.sub("", text.strip()))
    except InvalidOperation:
        return None


def last_number(answer: str) -> Decimal | None:
    """The last number written in ``answer``, read as GSM8K writes numbers: ``\\$1,200.50``,
    ``18 \\text{ dollars}`` and ``40\\%`` give 1200.50, 18 and 40. A fraction ``\\frac{a}{b}``
    or ``a/b`` is left to math-verify (its parts are two numbers, not one)."""
    s = answer.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    previous = None
    while previous != s:
        previous, s = s, _TEXT.sub(r" \1 ", s)
    s = _GROUPED.sub("", s.replace("{,}", ","))
    found = _NUMBER.findall(s)
    return Decimal(found[-1]) if found else None


def _math_verify(predicted: str, gold: str) -> bool:
    # math-verify's timeouts use SIGALRM, which only the main thread may set.
    main = threading.current_thread() is threading.main_thread()
    parse_kw = {} if main else {"parsing_timeout": None}
    verify_kw = {} if main else {"timeout_seconds": None}
    gold_parsed = parse(f"${gold}$", **parse_kw)
    pred_parsed = parse(f"\\boxed{{{predicted}}}", **parse_kw)
    return bool(gold_parsed and pred_parsed and verify(gold_parsed, pred_parsed, **verify_kw))


@lru_cache(maxsize=65536)
def is_correct(predicted: str | None, gold: str) -> bool:
    """Whether ``predicted`` (the content of the model's ``\\boxed{}``, or None) equals ``gold``."""
    if predicted is None or not predicted.strip():
        return False
    gold_number = as_number(gold)
    if gold_number is not None:
        found = last_number(predicted)
        if found is not None and found == gold_number:
            return True
    if _math_verify(predicted, gold):
        return True
    return normalize_answer(predicted) == normalize_answer(gold)
