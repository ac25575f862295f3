"""Aggregation and refine prompts, and the check that a run's prompts fit the context.

An aggregation prompt is the request's own conversation with the last user message replaced by:
the instruction, the problem (that user message), K candidate tails under numbered separators,
and a closing request for one improved solution. Earlier messages (system prompt, previous
turns) are kept, so a run answers in the same conversation the client sent.

Annotated prompts head each candidate with what it concluded, ``(its final answer: 18)``, or
``(unfinished: it stops before a final answer)`` for a trace that ran out of tokens; the
instruction then asks to continue unfinished work. Small models otherwise lose track of which
candidate said what, and treat a trace cut mid-calculation like a finished one.

Compare prompts put the problem first, the candidates as "attempts" under the same headings,
then their distinct answers side by side ("The attempts disagree: they answer 26, 18.") and a
request to solve the problem anew, checking each step of the attempts against one's own. On
GSM8K's mixed prompts (one right candidate of two) Qwen2.5-Coder-1.5B kept the right answer 46
times of 70 this way against 40 with the annotated wording (docs/evaluation.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mrsa.engine.base import Tokenizer
from mrsa.rsa.answers import normalize_answer
from mrsa.rsa.params import AggregationPrompt, RsaParams
from mrsa.rsa.tails import Tail

AGGREGATE_INSTRUCTION = (
    "You are given a problem and several candidate solutions. Some of them may be wrong. "
    "Aggregate the useful ideas into one improved solution. If the candidates disagree, work "
    "out which reasoning path is correct and follow it; if all of them are wrong, try a "
    "different strategy. End with the final answer in \\boxed{}."
)
AGGREGATE_CLOSING = (
    "Now write a single, complete, improved solution to the problem. "
    "End with the final answer in \\boxed{}."
)
REFINE_INSTRUCTION = (
    "Here is a problem and a candidate solution to it. The candidate may contain mistakes."
)
REFINE_CLOSING = (
    "Review the candidate solution carefully, fix any mistakes, and give an improved, complete "
    "solution to the problem. End with the final answer in \\boxed{}."
)
ANNOTATED_INSTRUCTION = (
    "You are given a problem and several candidate solutions. Some of them may be wrong, and "
    "some are unfinished. Check their steps and aggregate the useful ideas into one improved "
    "solution. If the candidates disagree, work out which reasoning path is correct and follow "
    "it; continue unfinished work where it is right; if all of them are wrong, try a different "
    "strategy. End with the final answer in \\boxed{}."
)
ANNOTATED_REFINE = (
    "Here is a problem and a candidate solution to it. The candidate may contain mistakes, or "
    "stop before its end."
)
# compare: the problem first, then the candidates as attempts, what they concluded side by side,
# and a request to solve the problem anew, checking every step. Small models copy the candidate
# nearest the end of an "improve these" prompt; asked to re-derive the answer, they can use the
# candidates as a check instead.
COMPARE_CLOSING = (
    "Solve the problem yourself, step by step, taking every number from the problem statement. "
    "Check each step of the attempts against your own: where they differ, work out which is right. "
    "End with the final answer in \\boxed{}."
)
CUT_MARKER = "..."
# An answer in a candidate's heading is cut to this many characters (a trace's "answer" can be
# a sentence); check_context measures headings at this length.
ANSWER_LABEL_CHARS = 40
# Tokens allowed per candidate beyond its tail: re-encoding a decoded tail inside a larger
# prompt can merge or split a token or two at its edges.
CANDIDATE_SLACK = 8


class ContextTooLongError(ValueError):
    """The run's prompts plus generation cannot fit the engine's context window."""

    def __init__(self, prompt_tokens: int, required: int, max_model_len: int, message: str) -> None:
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.required = required
        self.max_model_len = max_model_len


class NoUserMessageError(ValueError):
    """The messages hold no user message: the run has no problem to solve."""


@dataclass(frozen=True)
class ContextNeeds:
    """What :func:`check_context` measured: the plain prompt, the worst-case aggregation
    prompt (without generation) and the most context any call of the run may need."""

    prompt_tokens: int
    aggregation_prompt_tokens: int
    required: int


def last_user_index(messages: Sequence[dict[str, str]]) -> int:
    """Position of the last user message: the problem the run is solving."""
    for pos in range(len(messages) - 1, -1, -1):
        if messages[pos].get("role") == "user":
            return pos
    raise NoUserMessageError("messages must contain a user message: it is the problem the run solves")


def _candidate(tail: Tail) -> str:
    return CUT_MARKER + tail.text if tail.cut else tail.text


def _label(tail: Tail, style: AggregationPrompt) -> str:
    """`` (its final answer: 18)`` / `` (unfinished: ...)`` / `` (no boxed answer)`` for
    annotated prompts, else "". A trace that stopped by itself without a boxed answer ("7 + 5
    equals 12.") is not called unfinished: the model would read that as wrong work."""
    if style == "bare":
        return ""
    if tail.answer is None and tail.finished:
        return " (complete, but without a boxed final answer)"
    if tail.answer is None:
        return " (unfinished: it stops before a final answer)"
    return f" (its final answer: {_short_answer(tail.answer)})"


def _short_answer(answer: str) -> str:
    answer = " ".join(answer.split())
    if len(answer) > ANSWER_LABEL_CHARS:
        answer = answer[: ANSWER_LABEL_CHARS - 3] + "..."
    return answer


def _summary(candidates: Sequence[Tail]) -> str:
    """What the attempts concluded, for the compare prompt: their distinct answers in order
    (``The attempts disagree: they answer 26, 18.``), or that they agree, or that none finished."""
    answers: dict[str, str] = {}  # normalised -> as labelled
    for tail in candidates:
        if tail.answer is not None:
            answers.setdefault(normalize_answer(tail.answer), _short_answer(tail.answer))
    if not answers:
        return "None of the attempts reached a final answer." if len(candidates) > 1 else (
            "The attempt did not reach a final answer.")
    if len(answers) == 1:
        (answer,) = answers.values()
        return f"The attempts that finished all answer {answer}." if len(candidates) > 1 else (
            f"The attempt answers {answer}.")
    return f"The attempts disagree: they answer {', '.join(answers.values())}. At most one of these is right."


def _compare_text(problem: str, candidates: Sequence[Tail]) -> str:
    if len(candidates) == 1:
        head = f"Problem:\n{problem}\n\nHere is an attempt at this problem. It may be wrong."
    else:
        head = f"Problem:\n{problem}\n\nHere are {len(candidates)} attempts at this problem. Some of them may be wrong."
    blocks = "\n".join(
        f"--- Attempt {n}{_label(tail, 'annotated')} ---\n{_candidate(tail)}" for n, tail in enumerate(candidates, 1)
    )
    return f"{head}\n\n{blocks}\n--- End of attempts ---\n\n{_summary(candidates)}\n\n{COMPARE_CLOSING}"


def aggregation_text(problem: str, candidates: Sequence[Tail], style: AggregationPrompt = "compare") -> str:
    """The user turn of an aggregation prompt (K >= 2) or a refine prompt (K == 1)."""
    if not candidates:
        raise ValueError("an aggregation prompt needs at least one candidate")
    if style == "compare":
        return _compare_text(problem, candidates)
    annotated = style == "annotated"
    if len(candidates) == 1:
        return (
            f"{ANNOTATED_REFINE if annotated else REFINE_INSTRUCTION}\n\nProblem:\n{problem}\n\n"
            f"--- Candidate solution{_label(candidates[0], style)} ---\n{_candidate(candidates[0])}\n"
            f"--- End of candidate solution ---\n\n{REFINE_CLOSING}"
        )
    blocks = "\n".join(
        f"--- Candidate {n}{_label(tail, style)} ---\n{_candidate(tail)}" for n, tail in enumerate(candidates, 1)
    )
    return (
        f"{ANNOTATED_INSTRUCTION if annotated else AGGREGATE_INSTRUCTION}\n\nProblem:\n{problem}\n\n{blocks}\n"
        f"--- End of candidates ---\n\n{AGGREGATE_CLOSING}"
    )


def aggregation_messages(
    messages: Sequence[dict[str, str]], candidates: Sequence[Tail], style: AggregationPrompt = "compare"
) -> list[dict[str, str]]:
    """The request's conversation with its last user message turned into an aggregation."""
    pos = last_user_index(messages)
    out = [dict(m) for m in messages]
    out[pos]["content"] = aggregation_text(messages[pos]["content"], candidates, style)
    return out


def check_context(
    tokenizer: Tokenizer,
    max_model_len: int,
    messages: Sequence[dict[str, str]],
    params: RsaParams,
) -> ContextNeeds:
    """Refuse a run whose worst-case call cannot fit ``max_model_len`` before it starts.

    Two calls bound the run: the plain prompt plus ``trace_max_tokens`` (round 0), and the
    largest aggregation prompt plus its generation. The aggregation prompt is measured by
    rendering it with K empty (cut) candidates, then adding K tails of at most
    ``min(tail_tokens, trace_max_tokens)`` tokens and :data:`CANDIDATE_SLACK` each. Aggregation
    calls exist only when ``rounds > 1`` (trace generation) or the selection may aggregate (final
    generation), so only those terms count. Raises :class:`ContextTooLongError` with the numbers.
    """
    last_user_index(messages)  # NoUserMessageError before any work
    prompt_tokens = len(tokenizer.apply_chat_template(messages))
    plain = prompt_tokens + params.trace_max_tokens
    if plain > max_model_len:
        raise ContextTooLongError(
            prompt_tokens,
            plain,
            max_model_len,
            f"This request needs {plain} tokens of context (prompt {prompt_tokens} + "
            f"trace_max_tokens {params.trace_max_tokens}) but the model's max_model_len is "
            f"{max_model_len}. Shorten the messages or lower trace_max_tokens.",
        )
    generation = max(
        params.trace_max_tokens if params.rounds > 1 else 0,
        params.final_tokens if params.selection != "majority" else 0,
    )
    if generation == 0:
        return ContextNeeds(prompt_tokens, 0, plain)
    # Empty candidates under their longest possible heading (an answer label at full length).
    # Distinct answers (a compare prompt lists each one once more after the candidates), each
    # of ANSWER_LABEL_CHARS digits.
    empty = [Tail(text="", num_tokens=0, cut=True, answer=f"{n:0{ANSWER_LABEL_CHARS}d}") for n in range(params.k)]
    overhead = len(tokenizer.apply_chat_template(aggregation_messages(messages, empty, params.aggregation_prompt)))
    per_candidate = min(params.tail_tokens, params.trace_max_tokens) + CANDIDATE_SLACK
    aggregation_prompt = overhead + params.k * per_candidate
    required = aggregation_prompt + generation
    if required > max_model_len:
        raise ContextTooLongError(
            prompt_tokens,
            required,
            max_model_len,
            f"This request needs up to {required} tokens of context but the model's "
            f"max_model_len is {max_model_len}: aggregation prompt {overhead} (conversation "
            f"{prompt_tokens} + instructions) + k {params.k} x (tail_tokens "
            f"{min(params.tail_tokens, params.trace_max_tokens)} + {CANDIDATE_SLACK}) + "
            f"{generation} new tokens (max of trace_max_tokens {params.trace_max_tokens} and "
            f"final_max_tokens {params.final_tokens}). Lower k, tail_tokens, trace_max_tokens "
            f"or final_max_tokens.",
        )
    return ContextNeeds(prompt_tokens, aggregation_prompt, max(plain, required))
