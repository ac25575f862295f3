"""Token-exact tails: what a trace carries into the next round.

Markovian RSA keeps only the last tau tokens of each trace, so an aggregation prompt holds about
K * tau tokens whatever the length of the traces. Public implementations approximate tau with
words or characters; we slice the engine's own token ids, so the context bound is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mrsa.engine.base import ReasoningParser, Tokenizer
from mrsa.rsa.answers import extract_answer

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


@dataclass(frozen=True)
class Tail:
    """The last ``num_tokens`` tokens of a trace, decoded. ``cut`` when the trace (or its
    reasoning section) was longer, so prompts can mark the candidate as truncated; ``answer``
    is the final answer the whole trace reached (None: it stopped before one), so prompts can
    say which candidates finished and what they concluded; ``finished`` tells a trace that
    stopped without a final answer from one that ran out of tokens before it."""

    text: str
    num_tokens: int
    cut: bool
    answer: str | None = None
    finished: bool = False  # the trace ended by itself (a stop), not at its max_tokens


def reasoning_of(text: str, token_ids: Sequence[int], parser: ReasoningParser | None) -> str | None:
    """The reasoning section of a trace: what the engine's reasoning parser says it is, or
    without one the text before a closing think tag (opening tag removed); None if it has none."""
    if parser is not None:
        return parser.split(text, token_ids)[0]
    if THINK_CLOSE in text:
        return text.split(THINK_CLOSE, 1)[0].replace(THINK_OPEN, "")
    return None


def take_tail(
    token_ids: Sequence[int], text: str, tokenizer: Tokenizer, tau: int, *, finished: bool = False,
    parser: ReasoningParser | None = None,
) -> Tail:
    """The tail of one trace, given its output ids and text (and the engine's reasoning parser
    for this output, if the server has one).

    When the trace has a reasoning section (:func:`reasoning_of`) the tail comes from the
    reasoning only: the reasoning is where the useful state of the trace lives, and the answer
    section mostly restates it. That part is re-encoded with the engine's tokenizer, since the
    streamed ids do not say where the reasoning ends. Otherwise (or when all of the output is
    reasoning) the output ids are sliced directly.
    """
    if tau < 1:
        raise ValueError("tau must be at least 1")
    reasoning = reasoning_of(text, token_ids, parser)
    if reasoning is not None and reasoning.strip() and reasoning != text:
        ids = tokenizer.encode(reasoning.strip())
    else:
        ids = list(token_ids)
    kept = ids[-tau:]
    return Tail(text=tokenizer.decode(kept), num_tokens=len(kept), cut=len(ids) > tau, answer=extract_answer(text, finished=finished),
                finished=finished)
