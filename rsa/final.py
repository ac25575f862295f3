"""How a run turns its last population into one answer.

The pool is the deepest round with enough finished traces to aggregate (``min(K, N)``), or
failing that the deepest round with any; after consensus it is the unanimous round.
``majority`` returns the full text of a pool member holding the most common answer (no engine
call; with ``final_vote="all"`` the vote counts the finished traces of every round, and a tie goes to
the deepest round's answer); ``aggregate`` asks the model once more over K members of the pool; ``auto`` votes when
at least two answers could be extracted (a vote of one says nothing), or when some answer was and
every member without one was cut at its token limit (a cut trace abstains), else aggregates. An empty
pool (deadline before any trace finished) is answered directly from the plain prompt.

An adaptive run whose stop rule settled a vote answers with that vote, over the traces it
counted (:mod:`rsa.adaptive`); an adaptive vote that did not settle votes over every trace it
finished; an adaptive RSA run that did not settle selects as RSA does.

Where the engine has a reasoning parser, the answer's text is split as ``vllm serve`` splits a
reasoning model's output: ``reasoning`` (its thinking) and ``content`` (the rest); the streamed
:class:`~rsa.events.FinalDelta` pieces say which part they belong to.

The final call draws on the budget's reserve, kept from the start by every run that may need
it (all but ``selection="majority"``); a call the budget cannot fund at all is not made, and the
answer is empty with ``finish_reason="length"``. A failed final call fails the run (the run
raises :class:`~rsa.events.RunFailed`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mrsa.engine.base import Completion, ReasoningParser, SamplingParams
from mrsa.rsa.answers import extract_answer, majority_vote, normalize_answer
from mrsa.rsa.events import FinalDelta, FinalMode, FinalStarted, NodeRecord
from mrsa.rsa.node import Node
from mrsa.rsa.params import Selection
from mrsa.rsa.prompts import aggregation_messages
from mrsa.rsa.scheduler import Scheduler


def final_pool(rounds: Sequence[Sequence[Node]], k: int) -> list[Node]:
    """Finished nodes of the deepest round that has ``min(k, N)`` of them (else any), by index."""
    fallback: list[Node] = []
    for nodes in reversed(rounds):
        done = [n for n in nodes if n.finished]
        if done and len(done) >= min(k, len(nodes)):
            return done
        if done and not fallback:
            fallback = done
    return fallback


def final_mode(selection: Selection, pool: Sequence[Node]) -> FinalMode:
    if not pool:
        return "direct"
    if selection == "auto":
        extracted = sum(n.answer is not None for n in pool)
        # A member cut at its token limit without an answer abstains: when every answer-less
        # member was cut, the finished traces' answers are the whole vote, and aggregating them
        # with cut text gains nothing (and would itself risk being cut).
        abstained = all(n.answer is not None or not ended_by_itself(n) for n in pool)
        return "majority" if extracted >= 2 or (extracted and abstained) else "aggregate"
    return selection


def ended_by_itself(node: Node) -> bool:
    """The trace stopped on its own, not at its token limit."""
    return node.tail is not None and node.tail.finished


def majority_pick(pool: Sequence[Node]) -> Node:
    """The first pool member (by index) whose answer wins the vote (a tie goes to an answer a
    finished trace gave), preferring a member that finished; the first member when no answer
    could be extracted."""
    winner, _ = majority_vote((n.answer for n in pool), (ended_by_itself(n) for n in pool))
    holders = [n for n in pool if winner is not None and n.answer is not None and normalize_answer(n.answer) == winner]
    return next((n for n in holders if ended_by_itself(n)), holders[0] if holders else pool[0])


def split_answer(text: str, token_ids: Sequence[int], parser: ReasoningParser | None) -> tuple[str | None, str]:
    """``(reasoning, content)`` of a final answer: the reasoning parser's split, or (without a
    parser) no reasoning and all of the text as content."""
    if parser is None:
        return None, text
    reasoning, content = parser.split(text, token_ids)
    return reasoning, content or ""


@dataclass(frozen=True)
class FinalCall:
    """The final engine call, decided once evolution is over."""

    request_id: str
    prompt_ids: list[int]
    sampling: SamplingParams


class FinalAnswer:
    """The final answer of one run: its mode and parents, then its content and record.

    It reads the population from the scheduler and reports through the scheduler's events."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.mode: FinalMode = "direct"
        self.parents: list[int] = []
        self.request: str | None = None  # set while the final call is in flight
        self.record: NodeRecord | None = None
        self.text = ""  # the answer as the model wrote it
        self.reasoning: str | None = None  # and split: its thinking, then its content
        self.content = ""
        self.finish_reason = "stop"
        self.answer: str | None = None  # a vote's winning answer, as its trace gave it

    def decide(self) -> FinalCall | None:
        """Choose the final mode; answer a majority vote at once, else describe the call."""
        s = self.scheduler
        if s.decided is not None:
            r, counted = s.decided
            pool = [n for n in s.rounds[r][:counted] if n.finished]
            self.mode = "majority" if pool else "direct"
        elif s.params.method == "adaptive_vote":
            pool = [n for n in s.opened(0) if n.finished]
            self.mode = "majority" if pool else "direct"
        else:
            rounds = [s.opened(r) for r in range(len(s.rounds))]
            if s.consensus_round is not None:
                rounds = [rounds[s.consensus_round]]
            pool = final_pool(rounds, s.params.k)
            self.mode = final_mode(s.params.selection, pool)
        if self.mode == "majority":
            voters = pool
            if s.params.final_vote == "all" and s.consensus_round is None and not s.params.adaptive:
                voters = [n for nodes in reversed(s.rounds) for n in nodes if n.finished]
            pick = majority_pick(voters)
            self.answer = pick.answer
            self.parents = [n.index for n in pool]
            self._answer(pick.completion, s.engine.reasoning_parser(pick.prompt_ids or ()))
            self.finish_reason = "stop"
            s.events.append(FinalStarted(self.mode, list(self.parents)))
            if self.reasoning:
                s.events.append(FinalDelta(self.reasoning, reasoning=True))
            if self.content:
                s.events.append(FinalDelta(self.content))
            return None
        if self.mode == "aggregate":
            by_index = {n.index: n for n in pool}
            self.parents = s.plan.final_subset(list(by_index))
            tails = [by_index[i].tail for i in self.parents]
            messages = aggregation_messages(s.messages, tails, s.params.aggregation_prompt)  # type: ignore[arg-type]
            prompt_ids = s.tokenizer.apply_chat_template(messages)
        else:
            self.parents = []
            prompt_ids = list(s.plain_ids)
        s.events.append(FinalStarted(self.mode, list(self.parents)))
        room = max(0, s.engine.max_model_len - len(prompt_ids))
        max_tokens = s.budget.grant_final(min(s.params.final_tokens, room))
        if max_tokens < 1:  # only a majority run (no reserve) that spent its whole budget
            self.content, self.finish_reason = "", "length"
            return None
        sampling = SamplingParams(
            max_tokens=max_tokens,
            temperature=s.params.final_temperature,
            top_p=s.params.final_top_p,
            seed=s.plan.final_seed,
            ignore_eos=s.params.ignore_eos,
        )
        return FinalCall(f"{s.run_id}-final", prompt_ids, sampling)

    def _answer(self, completion: Completion, parser: ReasoningParser | None) -> None:
        self.text = completion.text
        self.reasoning, self.content = split_answer(completion.text, completion.token_ids, parser)

    def settle(
        self, call: FinalCall, completion: Completion, parser: ReasoningParser | None, *, error: str | None = None
    ) -> None:
        """The final call ended (``error``: it failed): charge its tokens, keep its record.
        ``parser`` is the one its stream went through (None: the engine has none)."""
        self.scheduler.budget.settle(call.sampling.max_tokens, len(completion.token_ids))
        self._answer(completion, parser)
        self.finish_reason = "error" if error is not None else completion.finish_reason or "abort"
        if error is not None:
            status = "failed"
            prompt_tokens = completion.prompt_tokens
        else:
            status = "finished" if self.finish_reason in ("stop", "length") else "aborted"
            prompt_tokens = completion.prompt_tokens or len(call.prompt_ids)
        self.record = NodeRecord(
            round=len(self.scheduler.completed),
            index=0,
            kind="final",
            parents=list(self.parents),
            seed=call.sampling.seed,
            max_tokens=call.sampling.max_tokens,
            prompt_tokens=prompt_tokens,
            cached_tokens=completion.cached_tokens,
            completion_tokens=len(completion.token_ids),
            reasoning_tokens=parser.reasoning_tokens(completion.token_ids) if parser and completion.token_ids else 0,
            finish_reason=self.finish_reason,
            status=status,  # type: ignore[arg-type]
            text=completion.text,
            answer=extract_answer(completion.text, finished=self.finish_reason != "length"),
            error=error,
        )
