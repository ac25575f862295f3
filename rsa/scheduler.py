"""The evolution half of a run: which trace runs when, and what its end changes.

The scheduler loops over the nodes of a :class:`~rsa.plan.Plan`:

1. launch every node that is ready (round 0 at once; a later node when its parents finished —
   its own K parents under the ``dataflow`` schedule, its whole previous round under
   ``rounds``) and that the token budget can fund;
2. wait with ``asyncio.wait(FIRST_COMPLETED)`` for a node to end, with the time left before the
   deadline as the timeout;
3. settle what ended (tail, answer, budget, round completion, consensus) and go to 1.

Evolution ends when nothing is running (all rounds done, or the budget cannot fund what is
ready), at the deadline, or on consensus. Each node streams in its own task, so traces progress
while the consumer handles the events the scheduler queues.

An adaptive run (``method`` adaptive_vote or adaptive_rsa, :mod:`rsa.adaptive`) opens a round's
nodes in waves: the first ``population``, then ``wave`` more each time every open one has
ended, up to the round's width (round 0: ``max_population``). It counts the round's ended nodes
in index order and asks its stop rule after each: a settled vote ends evolution at once
(``settled``: whatever is in flight is aborted) and the run answers with that vote; a round
that grew to its width unsettled is aggregated by the next round (adaptive_rsa) or ends the
run (``max_population``; the last round of adaptive_rsa: ``rounds``). A later round of
adaptive_rsa launches only once the round before it is known to need aggregating.

A failed trace is replaced by a survivor of its round (:mod:`rsa.substitution`). As soon as a
round can no longer keep K survivors (N - failed < K; with K = 1: all failed), every request in
flight is aborted and :class:`~rsa.events.RunFailed` is raised with the failing error as its
cause and the usage spent so far.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence

from mrsa.engine.base import Engine, EngineError, SamplingParams
from mrsa.rsa.adaptive import settled
from mrsa.rsa.answers import normalize_answer
from mrsa.rsa.budget import TokenBudget
from mrsa.rsa.events import NodeFinished, NodeStarted, RoundCompleted, RsaEvent, StopReason
from mrsa.rsa.node import Node, NodeState, stream_request
from mrsa.rsa.params import RsaParams
from mrsa.rsa.plan import Plan
from mrsa.rsa.prompts import ContextTooLongError, aggregation_messages
from mrsa.rsa.report import run_failed
from mrsa.rsa.substitution import effective_parents
from mrsa.rsa.tails import take_tail

log = logging.getLogger(__name__)


def _unanimous(answers: Sequence[str | None]) -> bool:
    if any(a is None for a in answers):
        return False
    keys = {normalize_answer(a) for a in answers if a is not None}
    return len(keys) == 1 and "" not in keys


class Scheduler:
    """The trace nodes of one run, and the rules that launch them and settle their ends.

    Everything it reports is appended to :attr:`events`, which the run drains between waits."""

    def __init__(
        self,
        engine: Engine,
        messages: list[dict[str, str]],
        params: RsaParams,
        plan: Plan,
        *,
        run_id: str,
        clock: Callable[[], float],
    ) -> None:
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.messages = messages
        self.params = params
        self.plan = plan
        self.run_id = run_id
        self.clock = clock
        self.rounds = [
            [
                Node(r, i, list(plan.parents(r, i)), plan.node_seed(r, i), f"{run_id}-r{r}-i{i}")
                for i in range(plan.width(r))
            ]
            for r in range(plan.rounds)
        ]
        # nodes open to launch per round (all but an adaptive round's later waves), and how many
        # of them an adaptive run has counted, in index order
        self.open = [params.population] * plan.rounds
        self.counted = [0] * plan.rounds
        self.decided: tuple[int, int] | None = None  # (round, traces counted) where a vote settled
        self.aggregating: set[int] = set()  # adaptive rounds that grew unsettled: the next aggregates
        reserve = 0 if params.votes_only else params.final_tokens
        self.budget = TokenBudget(params.budget_tokens, reserve)
        self.plain_ids = self.tokenizer.apply_chat_template(messages)
        self.events: deque[RsaEvent] = deque()
        self.t0 = 0.0
        self.stop_reason: StopReason | None = None
        self.completed: set[int] = set()  # rounds reported complete (RoundCompleted)
        self.consensus_round: int | None = None
        self.errors: dict[int, EngineError] = {}  # the last engine error per round
        self._budget_blocked = False

    def start_clock(self, elapsed_s: float) -> None:
        """Start measuring the deadline; ``elapsed_s`` is the age the run had before a restart."""
        self.t0 = self.clock() - elapsed_s

    def nodes(self) -> Iterator[Node]:
        """Every node, round-major then by index: the launch priority and the trace order."""
        for nodes in self.rounds:
            yield from nodes

    def running(self) -> list[Node]:
        return [n for n in self.nodes() if n.running]

    def opened(self, r: int) -> list[Node]:
        """The nodes of round ``r`` open to launch (an adaptive round's waves so far)."""
        return self.rounds[r][: self.open[r]]

    @property
    def survivors_needed(self) -> int:
        """Ended traces a round must keep: K to aggregate; one for a vote."""
        return 1 if self.params.method == "adaptive_vote" else self.params.k

    def time_left(self) -> float | None:
        if self.params.deadline_s is None:
            return None
        return self.params.deadline_s - (self.clock() - self.t0)

    # ------------------------------------------------------------------------ launching

    def _ready(self, node: Node) -> bool:
        if node.index >= self.open[node.round]:
            return False
        if node.round == 0:
            return True
        if self.params.adaptive and node.round - 1 not in self.aggregating:
            return False
        previous = self.rounds[node.round - 1]
        if self.params.schedule == "rounds" and not all(p.finished or p.failed for p in previous):
            return False
        parents = effective_parents(node, previous, self.plan.seed)
        if parents is None or not all(previous[p].finished for p in parents):
            return False
        node.parents = parents  # final: finished parents stay finished
        return True

    def _prompt_for(self, node: Node) -> list[int]:
        if node.round == 0:
            return list(self.plain_ids)
        previous = self.rounds[node.round - 1]
        tails = [previous[p].tail for p in node.parents]
        assert all(t is not None for t in tails)
        messages = aggregation_messages(self.messages, tails, self.params.aggregation_prompt)  # type: ignore[arg-type]
        return self.tokenizer.apply_chat_template(messages)

    def launch_ready(self) -> None:
        """Launch every ready node the budget can fund, earliest round first."""
        if self.stop_reason is not None:
            return
        left = self.time_left()
        if left is not None and left <= 0:
            return
        self._budget_blocked = False
        max_model_len = self.engine.max_model_len
        for node in self.nodes():
            if node.state is not NodeState.WAITING or not self._ready(node):
                continue
            if node.prompt_ids is None:
                node.prompt_ids = self._prompt_for(node)
            want = min(self.params.trace_max_tokens, max_model_len - len(node.prompt_ids))
            if want < 1:
                raise ContextTooLongError(
                    len(self.plain_ids),
                    len(node.prompt_ids) + 1,
                    max_model_len,
                    f"the prompt of node {node.request_id} has {len(node.prompt_ids)} tokens, "
                    f"which leaves no room to generate within max_model_len {max_model_len}",
                )
            granted = self.budget.grant(want, minimum=min(want, self.params.tail_tokens))
            if granted is None:
                self._budget_blocked = True  # may clear when a running node releases budget
                return
            self._start(node, granted)

    def _start(self, node: Node, max_tokens: int) -> None:
        sampling = SamplingParams(
            max_tokens=max_tokens,
            temperature=self.params.temperature,
            top_p=self.params.top_p,
            seed=node.seed,
            ignore_eos=self.params.ignore_eos,
        )
        task = asyncio.create_task(stream_request(self.engine, node, sampling), name=node.request_id)
        node.start(max_tokens, task)
        self.events.append(NodeStarted(node.round, node.index, list(node.parents)))

    # ------------------------------------------------------------------------ waiting, settling

    async def step(self) -> bool:
        """Wait for the next node to end (or the deadline) and react. False when evolution is over."""
        running = {n.task: n for n in self.nodes() if n.running}
        left = self.time_left()
        if left is not None and left <= 0 and (
            running or any(n.state is NodeState.WAITING for n in self.nodes())
        ):
            await self.halt("deadline")
            return False
        if not running:
            if self.stop_reason is None:
                self.stop_reason = "budget" if self._budget_blocked else "rounds"
            return False
        done, _ = await asyncio.wait(running.keys(), timeout=left, return_when=asyncio.FIRST_COMPLETED)
        for node in sorted((running[t] for t in done), key=lambda n: n.key):
            self.settle(node)
        await self._check_survivors()
        if self.stop_reason in ("consensus", "settled"):
            await self.halt(self.stop_reason)
            return False
        self.launch_ready()
        return True

    def settle(self, node: Node, *, aborted: bool = False) -> None:
        """A node's request ended: charge its tokens, take its tail and answer, report it."""
        assert node.task is not None
        error: BaseException | None = None
        if not aborted and not node.task.cancelled():
            error = node.task.exception()
            if error is not None and not isinstance(error, EngineError):
                raise error  # a bug, not an engine failure: it ends the run
        completion = node.completion
        self.budget.settle(node.max_tokens, len(completion.token_ids))
        if error is not None:
            node.fail(str(error) or type(error).__name__)
            self.errors[node.round] = error  # type: ignore[assignment]
            log.warning("run %s: trace %s failed: %s", self.run_id, node.request_id, error)
        elif aborted or completion.finish_reason not in ("stop", "length"):
            node.abort()
        else:
            tail = take_tail(completion.token_ids, completion.text, self.tokenizer, self.params.tail_tokens,
                             finished=completion.finish_reason == "stop",
                             parser=self.engine.reasoning_parser(node.prompt_ids or ()))
            node.finish(tail, tail.answer)
        self.events.append(
            NodeFinished(
                round=node.round,
                index=node.index,
                completion_tokens=len(completion.token_ids),
                answer=node.answer,
                status=node.state.value,  # type: ignore[arg-type]
                cut=node.tail.cut if node.tail else False,
                error=node.error,
                record=node.record(),
                elapsed_s=self.clock() - self.t0,
            )
        )
        if self.params.adaptive:
            self.advance(node.round)
        elif node.finished or node.failed:
            self.check_round(node.round)

    async def _check_survivors(self) -> None:
        """Fail the run once a round can no longer keep K survivors (see the module docstring):
        abort everything in flight, then raise :class:`RunFailed` with what was spent."""
        for r in range(len(self.rounds)):
            nodes = self.opened(r)
            failed = sum(n.failed for n in nodes)
            if failed and len(nodes) - failed < self.survivors_needed:
                needed = f"k={self.params.k}" if self.survivors_needed > 1 else "one"
                await self.halt_running()
                raise run_failed(
                    f"{failed} of {len(nodes)} traces of round {r} failed, leaving "
                    f"{len(nodes) - failed} (fewer than {needed}); last error: {self.errors[r]}",
                    self.errors[r],
                    list(self.nodes()),
                    None,  # evolution is not over: no final call yet
                    self.plan.seed,
                )

    def check_round(self, r: int) -> None:
        """Report round ``r`` once all its nodes finished; test it for consensus.

        Under ``dataflow`` a round can complete before an earlier one whose straggler feeds no
        child, so completions may arrive out of order; only the deepest completed round is
        tested for consensus (an earlier round agreeing says nothing new)."""
        nodes = self.rounds[r]
        if not all(n.finished or n.failed for n in nodes) or r in self.completed:
            return
        if len(nodes) - sum(n.failed for n in nodes) < self.params.k:
            return  # a lost round: _check_survivors fails the run
        self.completed.add(r)
        answers = [n.answer for n in nodes]  # None for failed traces
        self.events.append(RoundCompleted(r, answers))
        if (
            self.params.early_stop == "consensus"
            and self.stop_reason is None
            and r < self.params.rounds - 1  # the last round ends the run anyway
            and r == max(self.completed)
            and _unanimous([n.answer for n in nodes if n.finished])
        ):
            self.stop_reason = "consensus"
            self.consensus_round = r

    def advance(self, r: int) -> None:
        """Count round ``r``'s ended nodes in index order (an adaptive run), asking the stop rule
        after each once the first wave is in; open the next wave when every open node has ended
        unsettled; mark the round for aggregation (or end the run) when it is full unsettled."""
        params, nodes = self.params, self.rounds[r]
        if self.decided is not None or r in self.completed or self.stop_reason is not None:
            return
        minimum = min(params.population, len(nodes))
        while True:
            while self.counted[r] < self.open[r] and nodes[self.counted[r]].settled:
                self.counted[r] += 1
                counted = nodes[: self.counted[r]]
                answers = [n.answer if n.finished else None for n in counted]
                if self.counted[r] >= minimum and settled(answers, params.stop_rule, params.stop_threshold):
                    self.decided = (r, self.counted[r])
                    self.completed.add(r)
                    self.events.append(RoundCompleted(r, answers))
                    if self.stop_reason is None:
                        self.stop_reason = "settled"
                    return
            if self.counted[r] < self.open[r]:
                return  # an open node is still running (or waiting for budget)
            if self.open[r] < len(nodes):
                self.open[r] = min(len(nodes), self.open[r] + params.wave)
                continue  # restored checkpoints may already hold the next wave
            if len(nodes) - sum(n.failed for n in nodes) < self.survivors_needed:
                return  # a lost round: _check_survivors fails the run
            self.completed.add(r)
            self.events.append(RoundCompleted(r, [n.answer if n.finished else None for n in nodes]))
            if r < len(self.rounds) - 1:
                self.aggregating.add(r)
            elif r == 0 and self.stop_reason is None:
                self.stop_reason = "max_population"
            return

    # ------------------------------------------------------------------------ stopping

    async def halt(self, reason: StopReason) -> None:
        """Stop evolving for ``reason``: abort every running node and record it as aborted."""
        self.stop_reason = reason
        await self.halt_running()

    async def halt_running(self) -> None:
        """Abort every running node and settle it as aborted (its tokens still count)."""
        nodes = self.running()
        await self.abort(nodes)
        for node in nodes:
            self.settle(node, aborted=True)

    async def abort(self, nodes: Sequence[Node]) -> None:
        """Abort in the engine, then cancel the tasks (which closes their streams) and wait."""
        for node in nodes:
            await self.abort_request(node.request_id)
        tasks = [n.task for n in nodes if n.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def abort_request(self, request_id: str) -> None:
        try:
            await self.engine.abort(request_id)
        except Exception:  # keep aborting the others
            log.exception("engine.abort(%s) failed", request_id)
