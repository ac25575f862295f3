"""Executes one Markovian RSA run against an engine and reports it as a stream of events.

A run is two halves. Evolution: the :class:`~rsa.scheduler.Scheduler` launches the traces of
the plan as their parents finish and the budget allows, until the rounds are done, the budget
or the deadline runs out, or the population agrees (failed traces are replaced by survivors:
:mod:`rsa.substitution`). Then the final answer (:mod:`rsa.final`): a vote over the pool, or
one more engine call that aggregates it. A run can start from the checkpoints of an earlier
process (:mod:`rsa.resume`); what it leaves behind is built by :mod:`rsa.report`.

Events accumulate in a queue that :meth:`RsaRun.events` drains between waits. Each node streams
in its own task, so traces progress while the consumer handles events.

Whatever ends the iteration (normal end, engine error, ``aclose()``, cancellation), the
``finally`` of :meth:`RsaRun.events` aborts every engine request still in flight: the service
relies on it to free the engine when a client disconnects. :meth:`RsaRun.result` is the same
run for callers that want only its end.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing

from mrsa.engine.base import Completion, Engine, EngineError, GenerationDelta, ReasoningParser
from mrsa.rsa.answers import extract_answer
from mrsa.rsa.events import FinalDelta, NodeRecord, RsaEvent, RsaResult, RunCompleted, RunStarted
from mrsa.rsa.final import FinalAnswer
from mrsa.rsa.node import NodeState, close_stream
from mrsa.rsa.params import RsaParams
from mrsa.rsa.plan import Plan
from mrsa.rsa.prompts import check_context
from mrsa.rsa.report import failed_traces, run_failed, trace_of, usage_of
from mrsa.rsa.resume import restore
from mrsa.rsa.scheduler import Scheduler


class RsaRun:
    """One run: construct it (this checks the context), then iterate :meth:`events` once, or
    await :meth:`result` once."""

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
        rounds = 1 if params.method == "adaptive_vote" else params.rounds
        self.plan = Plan(params.population, params.k, rounds, self.seed, first=params.first_width)
        self.scheduler = Scheduler(engine, self.messages, params, self.plan, run_id=run_id, clock=clock)
        self.budget = self.scheduler.budget
        self.final = FinalAnswer(self.scheduler)
        self._elapsed0 = elapsed_s
        self._started = False
        restore(self.scheduler, resume)

    @property
    def started(self) -> RunStarted:
        """The run's shape, before it runs (not one of :meth:`events`: see :class:`RunStarted`)."""
        return RunStarted(seed=self.seed, population=self.params.population, k=self.params.k,
                          rounds=self.plan.rounds, method=self.params.method)

    async def events(self) -> AsyncIterator[RsaEvent]:
        """Progress events as they happen, then one :class:`RunCompleted` with the result."""
        if self._started:
            raise RuntimeError("an RsaRun can be iterated only once")
        self._started = True
        scheduler, queue, final = self.scheduler, self.scheduler.events, self.final
        scheduler.start_clock(self._elapsed0)
        try:
            scheduler.launch_ready()
            while True:
                while queue:
                    yield queue.popleft()
                if not await scheduler.step():
                    break
            call = final.decide()
            while queue:
                yield queue.popleft()
            if call is not None:
                completion = Completion()
                final.request = call.request_id
                parser = self.engine.reasoning_parser(call.prompt_ids)
                stream = self.engine.generate(call.prompt_ids, call.sampling, call.request_id)
                try:
                    async for delta in stream:
                        completion.add(delta)
                        for piece in final_pieces(delta, parser):
                            yield piece
                        if delta.finished:
                            break
                except EngineError as exc:
                    final.request = None
                    final.settle(call, completion, parser, error=str(exc) or type(exc).__name__)
                    message = f"the final {final.mode} call failed: {exc}"
                    raise run_failed(message, exc, list(scheduler.nodes()), final.record, self.seed) from exc
                finally:
                    await close_stream(stream)
                final.request = None
                final.settle(call, completion, parser)
            yield RunCompleted(self._result())
        finally:
            await self._cleanup()

    async def result(self) -> RsaResult:
        """Run to the end and return the result, for callers that do not follow the progress.

        It drains :meth:`events`, so it fails the same way (:class:`~rsa.events.RunFailed`, or
        whatever ended the run) and leaves nothing in flight however it ends: cancelling the
        task that awaits it aborts every engine request of the run."""
        last: RsaEvent | None = None
        async with aclosing(self.events()) as events:
            async for event in events:
                last = event
        if not isinstance(last, RunCompleted):  # events() ends with one or raises
            raise RuntimeError(f"run {self.run_id} ended without a result")
        return last.result

    async def _cleanup(self) -> None:
        """Leave nothing of this run in flight, however the iteration ended."""
        await self.scheduler.abort(self.scheduler.running())
        if self.final.request is not None:
            await self.scheduler.abort_request(self.final.request)
            self.final.request = None

    def _result(self) -> RsaResult:
        scheduler, final = self.scheduler, self.final
        trace = trace_of(scheduler.nodes(), final.record)
        rounds = scheduler.rounds
        launched = [r for r, nodes in enumerate(rounds) if any(n.state is not NodeState.WAITING for n in nodes)]
        depth = max(launched) + 1 if launched else 0
        answers = [[n.answer if n.finished else None for n in scheduler.opened(r)] for r in range(depth)]
        assert scheduler.stop_reason is not None
        return RsaResult(
            content=final.content,
            finish_reason=final.finish_reason,
            final_mode=final.mode,
            stop_reason=scheduler.stop_reason,
            rounds_completed=len(scheduler.completed),
            calls=len(trace),
            seed=self.seed,
            usage=usage_of(trace),
            answers=answers,
            answer=final.answer if final.mode == "majority" else extract_answer(
                final.text, finished=final.finish_reason != "length"),
            trace=trace,
            failed=failed_traces(scheduler.nodes()),
            reasoning=final.reasoning,
            method=self.params.method,
            samples=scheduler.counted[0] if self.params.adaptive else self.params.population,
        )


def final_pieces(delta: GenerationDelta, parser: ReasoningParser | None) -> list[FinalDelta]:
    """The final answer's streamed pieces of one engine delta: as it is without a reasoning
    parser, else its reasoning and content parts (in that order, each only if not empty)."""
    if parser is None:
        return [FinalDelta(delta.text)] if delta.text else []
    reasoning, content = parser.delta(delta.text, delta.token_ids, finished=delta.finished)
    return [piece for piece in (FinalDelta(reasoning, reasoning=True), FinalDelta(content)) if piece.text]
