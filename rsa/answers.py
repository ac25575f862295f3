"""Final answers: extraction from a trace, normalisation, and the majority vote.

The vote decides early stops (consensus) and the ``majority`` selection, so extraction is
deliberately conservative: a wrong "answer" pulled from a truncated trace would manufacture
agreement. We take the last ``\\boxed{...}`` (what every prompt of the run asks for), else an
explicit "answer is X" / "Answer: X" line, else nothing. We never fall back to the last number
of the text: traces cut by ``max_tokens`` end mid-calculation, and their last number is noise.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_LINE = re.compile(
    r"\b(?:final\s+answer|answer)\b[*_\s]*(?:is\b|:)[*_\s:]*(?P<answer>.+)$", re.IGNORECASE
)
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox)\s*\{([^{}]*)\}")
_LEFT_RIGHT = re.compile(r"\\(?:left|right)(?![a-zA-Z])")
_LATEX_SPACES = re.compile(r"\\[,;:! ]|\\(?:displaystyle|quad|qquad)(?![a-zA-Z])")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)")
_SPACE_AROUND_SYMBOL = re.compile(r"\s*([^\w\s])\s*")


def _boxed_contents(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}`` / ``\\fbox{...}`` with balanced braces, in order.

    An occurrence whose braces never close (a trace cut mid-answer) is skipped."""
    found = []
    for match in _BOXED.finditer(text):
        depth, start = 1, match.end()
        for pos in range(start, len(text)):
            if text[pos] == "{":
                depth += 1
            elif text[pos] == "}":
                depth -= 1
                if depth == 0:
                    found.append(text[start:pos])
                    break
    return found


def extract_answer(text: str) -> str | None:
    """The answer a trace commits to: the last non-empty boxed expression, else the last
    explicit "answer is X" / "Answer: X" / "Final answer: X" line, else ``None``."""
    boxed = [b.strip() for b in _boxed_contents(text) if b.strip()]
    if boxed:
        return boxed[-1]
    for line in reversed(text.splitlines()):
        match = _ANSWER_LINE.search(line)
        if match:
            answer = match.group("answer").strip().strip("*_").strip().rstrip(".").strip()
            answer = answer.strip("$").strip()
            if answer:
                return answer
    return None


def _normalize_number(s: str) -> str:
    try:
        value = Decimal(s)
    except InvalidOperation:  # pragma: no cover - the regex admits only decimals
        return s
    if value == 0:
        return "0"
    return format(value.normalize(), "f")


def normalize_answer(answer: str) -> str:
    """A canonical form so that equal answers written differently vote together:
    ``"$1,000.0$"``, ``"1000"`` and ``"\\text{1000}."`` all become ``"1000"``;
    ``"\\dfrac{1}{2}"`` becomes ``"\\frac{1}{2}"``; text is lowercased."""
    s = answer.strip().replace("$", "")
    previous = None
    while previous != s:  # nested wrappers: \text{\textbf{x}}
        previous, s = s, _TEXT_WRAPPER.sub(r"\1", s)
    s = _LEFT_RIGHT.sub("", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("{,}", ",")
    s = _LATEX_SPACES.sub("", s)
    s = s.strip().rstrip(".").strip()
    s = " ".join(s.split())
    s = _SPACE_AROUND_SYMBOL.sub(r"\1", s)
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    if _NUMBER.fullmatch(s):
        s = _normalize_number(s)
    return s.lower()


def majority_vote(answers: Iterable[str | None]) -> tuple[str | None, dict[str, int]]:
    """The most common normalised answer and the counts of every normalised answer.

    ``None`` (and answers that normalise to nothing) do not vote. Ties go to the answer that
    occurred first, so the result depends only on the order of ``answers``, never on hashing.
    """
    counts: dict[str, int] = {}
    for answer in answers:
        if answer is None:
            continue
        key = normalize_answer(answer)
        if key:
            counts[key] = counts.get(key, 0) + 1
    if not counts:
        return None, counts
    best = max(counts.values())
    winner = next(key for key, count in counts.items() if count == best)
    return winner, counts
