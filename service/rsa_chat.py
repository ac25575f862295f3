"""A chat completion answered by a Markovian RSA run, rendered: one ``chat.completion``, a
stream of progress and content chunks, or (``background``) the run object of a run accepted
under ``/v1/rsa/runs``. The run itself is prepared, admitted and executed by
:mod:`~mrsa.service.pipeline`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import aclosing

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from mrsa.rsa import RsaRun
from mrsa.rsa.events import FinalDelta, NodeStarted, RsaResult, RunCompleted
from mrsa.service.admission import Ticket
from mrsa.service.context import engine_of, owner_of, runs_of, settings_of
from mrsa.service.errors import APIError
from mrsa.service.idempotency import REPLAYED, idempotency
from mrsa.service.pipeline import Failure, admit, execute, failure, prepare, submit
from mrsa.service.runs import RunManager, Submitted, new_run_id
from mrsa.service.streaming import CHAT_SHUTDOWN, DONE, EventStream, ServerSentEvent, sse, sse_error
from mrsa.service.tasks import CLIENT_CLOSED, ClientDisconnected, until_disconnect
from mrsa.service.wire import (
    ChatCompletionRequest,
    ChunkFactory,
    progress_event,
    rsa_completion,
    started_event,
    summary_event,
    usage_info,
)

log = logging.getLogger(__name__)


async def answer(body: ChatCompletionRequest, run: RsaRun, chunks: ChunkFactory, request: Request) -> Response:
    """The run's answer while the client waits: one ``chat.completion`` (a failed run: its
    envelope with the usage it spent), or with ``stream`` the chunks as the run goes."""
    ticket = admit(request)
    if body.stream:
        return EventStream(_stream(run, body, chunks, ticket), ticket, closing=CHAT_SHUTDOWN)
    with ticket:
        try:
            result = await until_disconnect(request, _result(run, ticket, chunks.id))
        except ClientDisconnected:  # the run was cancelled, its engine requests aborted
            log.info("client disconnected; run cancelled")
            return Response(status_code=CLIENT_CLOSED)
        except Failure as failed:
            return JSONResponse(failed.body(), status_code=failed.error.status)
    completion = rsa_completion(chunks.id, chunks.created, chunks.model, result, run.params.return_trace,
                                body.include_reasoning)
    return JSONResponse(completion.model_dump())


async def _result(run: RsaRun, ticket: Ticket, run_id: str) -> RsaResult:
    async with aclosing(execute(run, ticket, run_id)) as events:
        async for event in events:
            if isinstance(event, RunCompleted):
                return event.result
    raise AssertionError("a run's events end with RunCompleted or raise")


async def _stream(
    run: RsaRun, body: ChatCompletionRequest, chunks: ChunkFactory, ticket: Ticket,
) -> AsyncIterator[ServerSentEvent]:
    params = run.params
    # Open the stream at once (clients see headers and the run's shape before any trace ends).
    yield sse(chunks.progress(run.started.wire()))
    started = False
    try:
        async with aclosing(execute(run, ticket, chunks.id)) as events:
            async for event in events:
                if isinstance(event, FinalDelta):
                    if not started:
                        started = True
                        yield sse(chunks.role())
                    if event.reasoning and body.include_reasoning:
                        yield sse(chunks.reasoning(event.text))
                    elif not event.reasoning:
                        yield sse(chunks.content(event.text))
                elif isinstance(event, RunCompleted):
                    result = event.result
                    if not started:
                        yield sse(chunks.role())
                    yield sse(chunks.finish(result.finish_reason, rsa=summary_event(result, params.return_trace)))
                    if body.include_usage:
                        yield sse(chunks.usage(usage_info(result.usage).model_dump()))
                elif isinstance(event, NodeStarted):  # live streams only: edges as nodes launch
                    yield sse(chunks.progress(started_event(event)))
                elif (progress := progress_event(event)) is not None:
                    yield sse(chunks.progress(progress))
    except Exception as exc:  # the 200 is sent: the error travels as a chunk (a failed run's with its usage)
        if not isinstance(exc, Failure):
            log.exception("rsa stream failed")
        failed = failure(exc)
        yield sse_error(failed.error) if failed.usage is None else sse(failed.body())
    yield DONE


async def background(body: ChatCompletionRequest, request: Request) -> Response:
    """Accept the body as a background run: 202 with its run object (the earlier one, for a
    repeated ``Idempotency-Key``: :mod:`~mrsa.service.idempotency`), or the error that refuses
    it. Without ``rsa`` or an effort that maps to one, the run has the server's defaults."""
    if body.stream:
        raise APIError("stream and background exclude each other: follow /v1/rsa/runs/{id}/events", param="stream")
    runs = runs_of(request)
    key = idempotency(request, await request.json())
    if key is not None and (earlier := await runs.idempotent(owner_of(request), *key)) is not None:
        return await _accepted(runs, earlier)
    run_id = new_run_id()
    run, _ = prepare(body, settings_of(request), engine_of(request), f"{run_id}-a1")
    return await _accepted(runs, await submit(request, run_id, run, idempotency=key))


async def _accepted(runs: RunManager, submitted: Submitted) -> Response:
    headers = {REPLAYED: "true"} if submitted.replayed else None
    return JSONResponse((await runs.run_object(submitted.run)).model_dump(), status_code=202, headers=headers)
