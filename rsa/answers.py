"""Final answers: extraction from a trace, normalisation, and the majority vote.

The vote decides early stops (consensus) and the ``majority`` selection, so extraction is
deliberately conservative: a wrong "answer" pulled from a truncated trace would manufacture
agreement. We take the last ``\\boxed{...}`` (what every prompt of the run asks for), else an
explicit "answer is X" / "Answer: X" line, else nothing. We never fall back to the last number
of the text: traces cut by ``max_tokens`` end mid-calculation, and their last number is noise.
For the same reason the last line of a cut trace is no answer line ("The final answer is" cut
before its number, or "The answer is 1" cut from 12), and a line's answer is what follows its
last "answer is" / "answer:" ("**Final answer**: The final answer is" says nothing yet).
A tie in the vote goes to an answer a finished trace gave, before one only cut traces gave.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_LINE = re.compile(
    r"\b(?:final\s+answer|answer)\b[*_\s]*(?:is\b|:)[*_\s:]*(?P<answer>.*)$", re.IGNORECASE
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


def _line_answer(line: str) -> str | None:
    """What follows the last "answer is" / "answer:" of ``line`` (None: nothing does)."""
    answer = None
    pos = 0
    while (match := _ANSWER_LINE.search(line, pos)) is not None:
        answer = match.group("answer")
        pos = match.start("answer")
    if answer is None:
        return None
    answer = answer.strip().strip("*_").strip().rstrip(".").strip()
    return answer.strip("$").strip() or None


def extract_answer(text: str, *, finished: bool = True) -> str | None:
    """The answer a trace commits to: the last non-empty boxed expression, else the last
    explicit "answer is X" / "Answer: X" / "Final answer: X" line, else ``None``. A trace that
    did not finish (cut at its ``max_tokens``) has no answer line in its last, cut line."""
    boxed = [b.strip() for b in _boxed_contents(text) if b.strip()]
    if boxed:
        return boxed[-1]
    lines = text.splitlines()
    if not finished and lines:
        lines = lines[:-1]
    for line in reversed(lines):
        answer = _line_answer(line)
        if answer is not None:
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


def majority_vote(
    answers: Iterable[str | None], finished: Iterable[bool] | None = None
) -> tuple[str | None, dict[str, int]]:
    """The most common normalised answer and the counts of every normalised answer.

    ``None`` (and answers that normalise to nothing) do not vote. ``finished`` (one flag per
    answer: its trace ended by itself rather than at its token limit) breaks ties in favour of
    an answer some finished trace gave; remaining ties go to the answer that occurred first, so
    the result depends only on the order of ``answers``, never on hashing.
    """
    counts: dict[str, int] = {}
    by_finished: set[str] = set()
    flags = iter(finished) if finished is not None else None
    for answer in answers:
        done = next(flags, True) if flags is not None else True
        if answer is None:
            continue
        key = normalize_answer(answer)
        if key:
            counts[key] = counts.get(key, 0) + 1
            if done:
                by_finished.add(key)
    if not counts:
        return None, counts
    best = max(counts.values())
    tied = [key for key, count in counts.items() if count == best]
    winner = next((key for key in tied if key in by_finished), tied[0])
    return winner, counts
