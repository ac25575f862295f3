"""Is an extracted answer right? math-verify decides, not string rules.

math-verify parses both sides (LaTeX or plain expressions) into sympy and compares them, so
``0.5``, ``\\frac{1}{2}`` and ``x = 1/2`` all match a gold ``1/2``. Answers it cannot parse as
math (words, names) fall back to the run's own normalisation (rsa/answers.py), so a textual
answer can still be graded.
"""

from __future__ import annotations

import threading
from functools import lru_cache

from math_verify import parse, verify

from rsa.answers import normalize_answer


@lru_cache(maxsize=65536)
def is_correct(predicted: str | None, gold: str) -> bool:
    """Whether ``predicted`` (the content of the model's ``\\boxed{}``, or None) equals ``gold``."""
    if predicted is None or not predicted.strip():
        return False
    # math-verify's timeouts use SIGALRM, which only the main thread may set.
    main = threading.current_thread() is threading.main_thread()
    parse_kw = {} if main else {"parsing_timeout": None}
    verify_kw = {} if main else {"timeout_seconds": None}
    gold_parsed = parse(f"${gold}$", **parse_kw)
    pred_parsed = parse(f"\\boxed{{{predicted}}}", **parse_kw)
    if gold_parsed and pred_parsed and verify(gold_parsed, pred_parsed, **verify_kw):
        return True
    return normalize_answer(predicted) == normalize_answer(gold)
