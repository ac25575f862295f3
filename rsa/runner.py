"""Executes one Markovian RSA run against an engine and reports it as a stream of events.

The run is a scheduler loop over the nodes of a :class:`~rsa.plan.Plan`:

1. launch every node that is ready (round 0 at once; a later node when its parents finished —
   its own K parents under the ``dataflow`` schedule, its whole previous round under
   ``rounds``) and that the token budget can fund;
2. wait with ``asyncio.wait(FIRST_COMPLETED)`` for a node to end, with the time left before the
   deadline as the timeout;
3. settle what ended (tail, answer, budget, round completion, consensus) and go to 1.

Evolution ends when nothing is running (all rounds done, or the budget cannot fund what is
ready), at the deadline, or on consensus; then the final answer is produced from the pool.
Events accumulate in a queue that :meth:`RsaRun.events` drains between waits. Each node streams
in its own task, so traces progress while the consumer handles events.

Whatever ends the iteration (normal end, engine error, ``aclose()``, cancellation), the
``finally`` of :meth:`RsaRun.events` aborts every engine request still in flight: the service
relies on it to free the engine when a client disconnects.

Resuming. Every :class:`~rsa.events.NodeFinished` carries the node's
:class:`~rsa.events.NodeRecord`, a complete checkpoint (tail, answer, token counts, effective
parents, seed). ``RsaRun(..., resume=records, elapsed_s=...)`` rebuilds the same plan from the
same seed and settles those nodes without engine calls, so a run interrupted by a crash
continues where it was, redoing only what was in flight; budget, usage and the deadline count
the work done before (see :meth:`RsaRun._restore`).

Failures. A trace whose engine request raises :class:`~engine.base.EngineError` (for the
remote engine: after its retries and fail-over, i.e. no replica could serve it) does not end the
run: it becomes a *failed* node (the tokens it delivered count in usage and budget) and the run
goes on with the survivors of its round:

* a child whose planned parents include a failed node takes a *substitute* in that parent's
  place: the first member of a per-child preference order of the parent round that is not a
  parent already and has not failed. The order is a permutation of the round's indices drawn
  from ``random.Random("<seed>:substitute:<round>:<index>")``, so it depends only on the run
  seed, never on timing, and the child waits for its substitute to finish like for any parent
  (if the substitute fails in turn, the next one in the order is taken). Given which traces
  fail, the run is therefore still reproducible.
* as soon as a round can no longer keep K survivors (N - failed < K; with K = 1: all failed),
  every request in flight is aborted and :class:`~rsa.events.RunFailed` is raised with the
  failing error's status and code and the usage spent so far. A failed final aggregation raises
  it too. The result of a run that lost traces lists them (``failed``; ``degraded`` is true).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass

from mrsa.engine.base import Completion, Engine, EngineError, SamplingParams
from mrsa.rsa.answers import extract_answer, normalize_answer
from mrsa.rsa.budget import TokenBudget
from mrsa.rsa.events import (
    FailedTrace,
    FinalDelta,
    FinalMode,
    FinalStarted,
    NodeFinished,
    NodeRecord,
    NodeStarted,
    RoundCompleted,
    RsaEvent,
    RsaResult,
    RunCompleted,
    RunFailed,
    StopReason,
    Usage,
)
from mrsa.rsa.node import Node, NodeState
from mrsa.rsa.params import RsaParams
from mrsa.rsa.plan import Plan
from mrsa.rsa.prompts import ContextTooLongError, aggregation_messages, check_context
from mrsa.rsa.selection import final_mode, final_pool, majority_pick
from mrsa.rsa.tails import take_tail

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _FinalCall:
    """The final engine call, decided once evolution is over."""

    request_id: str
    prompt_ids: list[int]
    sampling: SamplingParams


async def _aclose(stream: object) -> None:
    """Close an engine stream; closing is how the engine learns we stopped listening."""
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()


def _unanimous(answers: Sequence[str | None]) -> bool:
    if any(a is None for a in answers):
        return False
    keys = {normalize_answer(a) for a in answers if a is not None}
    return len(keys) == 1 and "" not in keys


class RsaRun:
    """One run: construct it (this checks the context), then iterate :meth:`events` once."""

    def __init__(
        self,
        engine: Engine,
        messages: list[dict[str, str]],
        params: RsaParams,
        *,
        run_id: str,
        clock: Callable[[], float] = time.monotonic,
        resume: Sequence[NodeRecord] = (),
        elapsed_s: float = 0.0,
    ) -> None:
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.messages = [dict(m) for m in messages]
        self.params = params
        self.run_id = run_id
        self.clock = clock
        self.seed = params.seed if params.seed is not None else random.SystemRandom().randrange(2**31)
        self.context = check_context(self.tokenizer, engine.max_model_len, self.messages, params)
        self.plan = Plan(params.population, params.k, params.rounds, self.seed)
        self._rounds = [
            [
                Node(r, i, list(self.plan.parents(r, i)), self.plan.node_seed(r, i), f"{run_id}-r{r}-i{i}")
                for i in range(params.population)
            ]
            for r in range(params.rounds)
        ]
        reserve = 0 if params.selection == "majority" else params.final_tokens
        self.budget = TokenBudget(params.budget_tokens, reserve)
        self._plain_ids = self.tokenizer.apply_chat_template(self.messages)
        self._queue: deque[RsaEvent] = deque()
        self._started = False
        self._t0 = 0.0
        self._stop_reason: StopReason | None = None
        self._budget_blocked = False
        self._completed: set[int] = set()
        self._consensus_round: int | None = None
        self._errors: dict[int, EngineError] = {}  # the last engine error per round
        # The final answer.
        self._final_mode: FinalMode = "direct"
        self._final_parents: list[int] = []
        self._final_request: str | None = None  # set while the final call is in flight
        self._final_record: NodeRecord | None = None
        self._content = ""
        self._finish_reason = "stop"
        self._elapsed0 = elapsed_s
        self._restore(resume)

    # ------------------------------------------------------------------------ the event stream

    async def events(self) -> AsyncIterator[RsaEvent]:
        """Progress events as they happen, then one :class:`RunCompleted` with the result."""
        if self._started:
            raise RuntimeError("an RsaRun can be iterated only once")
        self._started = True
        self._t0 = self.clock() - self._elapsed0
        try:
            self._launch_ready()
            while True:
                while self._queue:
                    yield self._queue.popleft()
                if not await self._step():
                    break
            call = self._decide_final()
            while self._queue:
                yield self._queue.popleft()
            if call is not None:
                completion = Completion()
                self._final_request = call.request_id
                stream = self.engine.generate(call.prompt_ids, call.sampling, call.request_id)
                try:
                    async for delta in stream:
                        completion.add(delta)
                        if delta.text:
                            yield FinalDelta(delta.text)
                        if delta.finished:
                            break
                except EngineError as exc:
                    self._final_request = None
                    self._settle_final(call, completion, error=str(exc) or type(exc).__name__)
                    raise self._run_failed(f"the final {self._final_mode} call failed: {exc}", exc) from exc
                finally:
                    await _aclose(stream)
                self._final_request = None
                self._settle_final(call, completion)
            yield RunCompleted(self._result())
        finally:
            await self._cleanup()

    # ------------------------------------------------------------------------ resuming

    def _restore(self, records: Sequence[NodeRecord]) -> None:
        """Settle the nodes an earlier process finished, from their checkpoints.

        The plan (parents and seeds) is drawn from the seed alone, so the same seed and
        parameters rebuild the same graph; each checkpoint brings back a node's tail, answer,
        token counts and effective parents. Their tokens count against the budget and in
        usage, rounds they complete count as completed (consensus included), and no event
        is emitted for them: the earlier process reported them already. Aborted traces and
        the final call are not restored: they are redone. Resuming with the nodes reported
        by :class:`NodeFinished` events therefore redoes at most the nodes in flight."""
        for record in records:
            if record.kind != "trace" or record.status == "aborted":
                continue
            if not (0 <= record.round < self.params.rounds and 0 <= record.index < self.params.population):
                raise ValueError(f"checkpoint of node ({record.round}, {record.index}) is outside the plan")
            node = self._rounds[record.round][record.index]
            if node.state is not NodeState.WAITING:
                raise ValueError(f"two checkpoints of node ({record.round}, {record.index})")
            node.restore(record)
            self.budget.generated += record.completion_tokens
            if node.failed:
                self._errors[node.round] = EngineError(node.error or "failed before a restart")
        for r in range(self.params.rounds):
            self._check_round(r)
        self._queue.clear()

    # ------------------------------------------------------------------------ scheduling

    def _nodes(self) -> Iterator[Node]:
        """Every node, round-major then by index: the launch priority and the trace order."""
        for nodes in self._rounds:
            yield from nodes

    def _time_left(self) -> float | None:
        if self.params.deadline_s is None:
            return None
        return self.params.deadline_s - (self.clock() - self._t0)

    def _substitutes(self, node: Node) -> list[int]:
        """The order in which members of the parent round replace failed planned parents of
        ``node``: a permutation drawn from the run seed alone (see the module docstring)."""
        order = list(range(self.params.population))
        random.Random(f"{self.seed}:substitute:{node.round}:{node.index}").shuffle(order)
        return order

    def _effective_parents(self, node: Node) -> list[int] | None:
        """``node``'s planned parents with every failed one replaced by a substitute, in its
        place; None when the parent round has too few survivors left to fill them."""
        previous = self._rounds[node.round - 1]
        if not any(previous[p].failed for p in node.planned):
            return list(node.planned)
        taken = {p for p in node.planned if not previous[p].failed}
        candidates = iter(
            c for c in self._substitutes(node) if c not in taken and c not in node.planned and not previous[c].failed
        )
        parents: list[int] = []
        for p in node.planned:
            if previous[p].failed:
                substitute = next(candidates, None)
                if substitute is None:
                    return None
                p = substitute
            parents.append(p)
        return parents

    def _ready(self, node: Node) -> bool:
        if node.round == 0:
            return True
        previous = self._rounds[node.round - 1]
        if self.params.schedule == "rounds" and not all(p.finished or p.failed for p in previous):
            return False
        parents = self._effective_parents(node)
        if parents is None or not all(previous[p].finished for p in parents):
            return False
        node.parents = parents  # final: finished parents stay finished
        return True

    def _prompt_for(self, node: Node) -> list[int]:
        if node.round == 0:
            return list(self._plain_ids)
        previous = self._rounds[node.round - 1]
        tails = [previous[p].tail for p in node.parents]
        assert all(t is not None for t in tails)
        return self.tokenizer.apply_chat_template(aggregation_messages(self.messages, tails))  # type: ignore[arg-type]

    def _launch_ready(self) -> None:
        """Launch every ready node the budget can fund, earliest round first."""
        if self._stop_reason is not None:
            return
        left = self._time_left()
        if left is not None and left <= 0:
            return
        self._budget_blocked = False
        for node in self._nodes():
            if node.state is not NodeState.WAITING or not self._ready(node):
                continue
            if node.prompt_ids is None:
                node.prompt_ids = self._prompt_for(node)
            want = min(self.params.trace_max_tokens, self.engine.max_model_len - len(node.prompt_ids))
            if want < 1:
                raise ContextTooLongError(
                    len(self._plain_ids),
                    len(node.prompt_ids) + 1,
                    self.engine.max_model_len,
                    f"the prompt of node {node.request_id} has {len(node.prompt_ids)} tokens, "
                    f"which leaves no room to generate within max_model_len "
                    f"{self.engine.max_model_len}",
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
        task = asyncio.create_task(self._stream(node, sampling), name=node.request_id)
        node.start(max_tokens, task)
        self._queue.append(NodeStarted(node.round, node.index, list(node.parents)))

    async def _stream(self, node: Node, sampling: SamplingParams) -> None:
        """One node's engine request; deltas accumulate on the node as they arrive."""
        assert node.prompt_ids is not None
        stream = self.engine.generate(node.prompt_ids, sampling, node.request_id)
        try:
            async for delta in stream:
                node.completion.add(delta)
                if delta.finished:
                    break
        finally:
            await _aclose(stream)

    async def _step(self) -> bool:
        """Wait for the next node to end (or the deadline) and react. False when evolution is over."""
        running = {n.task: n for n in self._nodes() if n.running}
        left = self._time_left()
        if left is not None and left <= 0 and (
            running or any(n.state is NodeState.WAITING for n in self._nodes())
        ):
            await self._halt("deadline")
            return False
        if not running:
            if self._stop_reason is None:
                self._stop_reason = "budget" if self._budget_blocked else "rounds"
            return False
        done, _ = await asyncio.wait(running.keys(), timeout=left, return_when=asyncio.FIRST_COMPLETED)
        for node in sorted((running[t] for t in done), key=lambda n: n.key):
            self._settle(node)
        await self._check_survivors()
        if self._stop_reason == "consensus":
            await self._halt("consensus")
            return False
        self._launch_ready()
        return True

    def _settle(self, node: Node, *, aborted: bool = False) -> None:
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
            self._errors[node.round] = error  # type: ignore[assignment]
            log.warning("run %s: trace %s failed: %s", self.run_id, node.request_id, error)
        elif aborted or completion.finish_reason not in ("stop", "length"):
            node.abort()
        else:
            tail = take_tail(completion.token_ids, completion.text, self.tokenizer, self.params.tail_tokens)
            node.finish(tail, extract_answer(completion.text))
        self._queue.append(
            NodeFinished(
                round=node.round,
                index=node.index,
                completion_tokens=len(completion.token_ids),
                answer=node.answer,
                status=node.state.value,  # type: ignore[arg-type]
                cut=node.tail.cut if node.tail else False,
                error=node.error,
                record=node.record(),
                elapsed_s=self.clock() - self._t0,
            )
        )
        if node.finished or node.failed:
            self._check_round(node.round)

    async def _check_survivors(self) -> None:
        """Fail the run once a round can no longer keep K survivors (see the module docstring):
        abort everything in flight, then raise :class:`RunFailed` with what was spent."""
        for r, nodes in enumerate(self._rounds):
            failed = sum(n.failed for n in nodes)
            if failed and len(nodes) - failed < self.params.k:
                running = [n for n in self._nodes() if n.running]
                await self._abort(running)
                for node in running:
                    self._settle(node, aborted=True)
                survivors = len(nodes) - failed
                raise self._run_failed(
                    f"{failed} of {len(nodes)} traces of round {r} failed, leaving {survivors} "
                    f"(fewer than k={self.params.k}); last error: {self._errors[r]}",
                    self._errors[r],
                )

    def _run_failed(self, message: str, cause: EngineError) -> RunFailed:
        trace = self._trace()
        return RunFailed(
            message,
            cause=cause,
            usage=self._usage(trace),
            failed=self._failed(),
            calls=len(trace),
            seed=self.seed,
        )

    def _check_round(self, r: int) -> None:
        """Report round ``r`` once all its nodes finished; test it for consensus.

        Under ``dataflow`` a round can complete before an earlier one whose straggler feeds no
        child, so completions may arrive out of order; only the deepest completed round is
        tested for consensus (an earlier round agreeing says nothing new)."""
        nodes = self._rounds[r]
        if not all(n.finished or n.failed for n in nodes) or r in self._completed:
            return
        if len(nodes) - sum(n.failed for n in nodes) < self.params.k:
            return  # a lost round: _check_survivors fails the run
        self._completed.add(r)
        answers = [n.answer for n in nodes]  # None for failed traces
        self._queue.append(RoundCompleted(r, answers))
        if (
            self.params.early_stop == "consensus"
            and self._stop_reason is None
            and r < self.params.rounds - 1  # the last round ends the run anyway
            and r == max(self._completed)
            and _unanimous([n.answer for n in nodes if n.finished])
        ):
            self._stop_reason = "consensus"
            self._consensus_round = r

    async def _halt(self, reason: StopReason) -> None:
        """Stop evolving: abort every running node and record it as aborted."""
        self._stop_reason = reason
        nodes = [n for n in self._nodes() if n.running]
        await self._abort(nodes)
        for node in nodes:
            self._settle(node, aborted=True)

    async def _abort(self, nodes: Sequence[Node]) -> None:
        """Abort in the engine, then cancel the tasks (which closes their streams) and wait."""
        for node in nodes:
            await self._abort_request(node.request_id)
        tasks = [n.task for n in nodes if n.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _abort_request(self, request_id: str) -> None:
        try:
            await self.engine.abort(request_id)
        except Exception:  # keep aborting the others
            log.exception("engine.abort(%s) failed", request_id)

    async def _cleanup(self) -> None:
        """Leave nothing of this run in flight, however the iteration ended."""
        await self._abort([n for n in self._nodes() if n.running])
        if self._final_request is not None:
            await self._abort_request(self._final_request)
            self._final_request = None

    # ------------------------------------------------------------------------ the final answer

    def _decide_final(self) -> _FinalCall | None:
        """Choose the final mode; answer a majority vote at once, else describe the call."""
        rounds = self._rounds
        if self._consensus_round is not None:
            rounds = [self._rounds[self._consensus_round]]
        pool = final_pool(rounds, self.params.k)
        mode = final_mode(self.params.selection, pool)
        self._final_mode = mode
        if mode == "majority":
            pick = majority_pick(pool)
            self._final_parents = [n.index for n in pool]
            self._content, self._finish_reason = pick.completion.text, "stop"
            self._queue.append(FinalStarted(mode, list(self._final_parents)))
            if self._content:
                self._queue.append(FinalDelta(self._content))
            return None
        if mode == "aggregate":
            by_index = {n.index: n for n in pool}
            self._final_parents = self.plan.final_subset(list(by_index))
            tails = [by_index[i].tail for i in self._final_parents]
            messages = aggregation_messages(self.messages, tails)  # type: ignore[arg-type]
            prompt_ids = self.tokenizer.apply_chat_template(messages)
        else:
            self._final_parents = []
            prompt_ids = list(self._plain_ids)
        self._queue.append(FinalStarted(mode, list(self._final_parents)))
        room = max(0, self.engine.max_model_len - len(prompt_ids))
        max_tokens = self.budget.grant_final(min(self.params.final_tokens, room))
        if max_tokens < 1:  # only a majority run (no reserve) that spent its whole budget
            self._content, self._finish_reason = "", "length"
            return None
        sampling = SamplingParams(
            max_tokens=max_tokens,
            temperature=self.params.final_temperature,
            top_p=self.params.final_top_p,
            seed=self.plan.final_seed,
            ignore_eos=self.params.ignore_eos,
        )
        return _FinalCall(f"{self.run_id}-final", prompt_ids, sampling)

    def _settle_final(self, call: _FinalCall, completion: Completion, *, error: str | None = None) -> None:
        self.budget.settle(call.sampling.max_tokens, len(completion.token_ids))
        self._content = completion.text
        self._finish_reason = "error" if error is not None else completion.finish_reason or "abort"
        if error is not None:
            status = "failed"
        else:
            status = "finished" if self._finish_reason in ("stop", "length") else "aborted"
        self._final_record = NodeRecord(
            round=len(self._completed),
            index=0,
            kind="final",
            parents=list(self._final_parents),
            seed=call.sampling.seed,
            max_tokens=call.sampling.max_tokens,
            prompt_tokens=completion.prompt_tokens if error is not None else completion.prompt_tokens or len(call.prompt_ids),
            completion_tokens=len(completion.token_ids),
            finish_reason=self._finish_reason,
            status=status,  # type: ignore[arg-type]
            text=completion.text,
            answer=extract_answer(completion.text),
            error=error,
        )

    def _trace(self) -> list[NodeRecord]:
        """Every engine call that ended, finished, aborted or failed, in trace order."""
        trace = [n.record() for n in self._nodes() if n.settled]
        if self._final_record is not None:
            trace.append(self._final_record)
        return trace

    @staticmethod
    def _usage(trace: Sequence[NodeRecord]) -> Usage:
        return Usage(
            prompt_tokens=sum(r.prompt_tokens for r in trace),
            completion_tokens=sum(r.completion_tokens for r in trace),
            reasoning_tokens=sum(r.completion_tokens for r in trace if r.kind != "final"),
        )

    def _failed(self) -> list[FailedTrace]:
        return [FailedTrace(n.round, n.index, n.error or "") for n in self._nodes() if n.failed]

    def _result(self) -> RsaResult:
        trace = self._trace()
        usage = self._usage(trace)
        launched = [r for r, nodes in enumerate(self._rounds) if any(n.state is not NodeState.WAITING for n in nodes)]
        depth = max(launched) + 1 if launched else 0
        answers = [[n.answer if n.finished else None for n in self._rounds[r]] for r in range(depth)]
        assert self._stop_reason is not None
        return RsaResult(
            content=self._content,
            finish_reason=self._finish_reason,
            final_mode=self._final_mode,
            stop_reason=self._stop_reason,
            rounds_completed=len(self._completed),
            calls=len(trace),
            seed=self.seed,
            usage=usage,
            answers=answers,
            answer=extract_answer(self._content),
            trace=trace,
            failed=self._failed(),
        )
