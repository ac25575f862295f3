"""A response answered while its client waits: one object, or the Responses event stream.

An RSA response runs its :class:`RsaRun` through :func:`mrsa.service.pipeline.execute`, as a
chat completion does; a plain one streams its single generation straight from the engine (token
by token, which a one-trace run would only give at its end). Both are read as one sequence:
text deltas (``str``), progress events (``dict``), then the :class:`Answer`; a failure of either
is answered as :func:`mrsa.service.pipeline.failure` maps it. A client that goes away aborts the
engine requests, as in chat completions.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from mrsa.engine.base import Completion, EngineError, SamplingParams
from mrsa.rsa.events import FinalDelta, NodeStarted, RunCompleted
from mrsa.rsa.run import final_pieces
from mrsa.service import metrics
from mrsa.service.admission import Ticket
from mrsa.service.context import owner_of, runs_of
from mrsa.service.json_body import replacing_surrogates
from mrsa.service.pipeline import Failure, execute, failure
from mrsa.service.responses.events import EventSequence, TextItems
from mrsa.service.responses.prepare import Prepared
from mrsa.service.responses.stored import answer_of, record, summary_of
from mrsa.service.responses.wire import THINK_CLOSE, THINK_OPEN, ResponseObject, response_object
from mrsa.service.streaming import EventStream, ServerSentEvent, sse_event
from mrsa.service.tasks import CLIENT_CLOSED, ClientDisconnected, in_own_task, until_disconnect
from mrsa.service.wire import PromptTokensDetails, UsageInfo, now, progress_event, rsa_completion, started_event, summary_event

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    text: str
    status: str  # completed | incomplete
    usage: UsageInfo
    rsa: dict | None = None  # the run's summary (method, stop_reason...): None for a plain response


class Tagged:
    """The answer's pieces (:class:`~mrsa.rsa.events.FinalDelta`, split by the engine's
    reasoning parser) as the text :func:`~mrsa.service.responses.wire.join_reasoning` writes:
    the thinking inside ``<think>`` tags, so that TextItems turns it into the reasoning item."""

    def __init__(self) -> None:
        self.thinking = False

    def text(self, piece: FinalDelta) -> str:
        tag = ""
        if piece.reasoning != self.thinking:
            self.thinking = piece.reasoning
            tag = THINK_OPEN if piece.reasoning else THINK_CLOSE
        return tag + piece.text


async def _plain(prep: Prepared) -> AsyncIterator[str | dict | Answer]:
    engine, params = prep.engine, prep.run.params
    prompt_ids = engine.tokenizer.apply_chat_template(prep.run.messages)
    sampling = SamplingParams(max_tokens=params.trace_max_tokens, temperature=params.temperature, top_p=params.top_p)
    done = Completion()
    parser, tagged, text = engine.reasoning_parser(prompt_ids), Tagged(), ""
    async for delta in engine.generate(prompt_ids, sampling, f"{prep.resp_id}-0"):
        done.add(delta)
        for piece in final_pieces(delta, parser):
            chunk = tagged.text(piece)
            text += chunk
            yield chunk
        if delta.finished:
            break
    metrics.GENERATED_TOKENS.inc(len(done.token_ids))
    metrics.TOKENS.labels("plain").inc(len(done.token_ids))
    usage = UsageInfo(prompt_tokens=len(prompt_ids), completion_tokens=len(done.token_ids),
                      total_tokens=len(prompt_ids) + len(done.token_ids),
                      prompt_tokens_details=PromptTokensDetails(cached_tokens=done.cached_tokens))
    yield Answer(replacing_surrogates(text), "incomplete" if done.finish_reason == "length" else "completed", usage)


async def _rsa(prep: Prepared, ticket: Ticket) -> AsyncIterator[str | dict | Answer]:
    tagged = Tagged()
    async with aclosing(execute(prep.run, ticket, prep.resp_id)) as events:
        async for event in events:
            if isinstance(event, FinalDelta):
                yield tagged.text(event)
            elif isinstance(event, RunCompleted):
                completion = rsa_completion(prep.resp_id, now(), prep.engine.model_name, event.result, False)
                yield summary_event(event.result, False)  # which method ran, why it stopped
                text, status = answer_of(completion, plain=False)
                yield Answer(text, status, completion.usage, summary_of(completion))
            elif isinstance(event, NodeStarted):
                yield started_event(event)
            elif (progress := progress_event(event)) is not None:
                yield progress


def _source(prep: Prepared, ticket: Ticket) -> AsyncIterator[str | dict | Answer]:
    """What the response answers: the run's (whose events are read in a task of their own),
    or the plain generation's, read in one."""
    return in_own_task(_plain(prep)) if prep.plain else _rsa(prep, ticket)


def _object(prep: Prepared, created: int, status: str, **kw: object) -> ResponseObject:
    return response_object(prep.resp_id, created, prep.engine.model_name, prep.echo, status, **kw)  # type: ignore[arg-type]


async def _keep(request: Request, prep: Prepared, created: int, response: ResponseObject) -> None:
    if prep.echo["store"]:
        await runs_of(request).put_response(
            owner_of(request), prep.resp_id,
            record(prep.engine.model_name, created, prep.echo, prep.conversation, response),
        )


async def respond(prep: Prepared, request: Request, ticket: Ticket, stream: bool) -> Response:
    created = now()
    if stream:
        return EventStream(_stream(prep, request, ticket, created), ticket)
    with ticket:
        try:
            answer = await until_disconnect(request, _drain(prep, ticket))
        except ClientDisconnected:  # its engine requests were aborted
            return Response(status_code=CLIENT_CLOSED)
        except (Failure, EngineError) as exc:
            return failure(exc).error.response()
    response = _object(prep, created, answer.status, text=answer.text, usage=answer.usage, completed_at=now(),
                       rsa=answer.rsa)
    await _keep(request, prep, created, response)
    return JSONResponse(response.model_dump())


async def _drain(prep: Prepared, ticket: Ticket) -> Answer:
    await ticket.wait()
    async with aclosing(_source(prep, ticket)) as items:
        async for item in items:
            if isinstance(item, Answer):
                return item
    raise AssertionError("a response's source ends with its Answer or raises")


async def _stream(prep: Prepared, request: Request, ticket: Ticket, created: int) -> AsyncIterator[ServerSentEvent]:
    seq = EventSequence()
    items = TextItems(prep.resp_id, seq)
    yield sse_event(seq.lifecycle("response.created", _object(prep, created, "in_progress")))
    await ticket.wait()
    yield sse_event(seq.lifecycle("response.in_progress", _object(prep, created, "in_progress")))
    try:
        async with aclosing(_source(prep, ticket)) as source:
            async for item in source:
                if isinstance(item, str):
                    for event in items.feed(item):
                        yield sse_event(event)
                elif isinstance(item, dict):
                    yield sse_event(seq.progress(item))
                else:
                    for event in items.finish(item.status):
                        yield sse_event(event)
                    response = _object(prep, created, item.status, text=items.text, usage=item.usage,
                                       completed_at=now(), rsa=item.rsa)
                    await _keep(request, prep, created, response)
                    kind = "response.incomplete" if item.status == "incomplete" else "response.completed"
                    yield sse_event(seq.lifecycle(kind, response))
    except Exception as exc:  # the 200 is sent: the failure is an event
        if not isinstance(exc, Failure | EngineError):
            log.exception("responses stream failed")
        failed = failure(exc)
        response = _object(prep, created, "failed", error=failed.error.error_body(), usage=failed.usage)
        yield sse_event(seq.lifecycle("response.failed", response))
