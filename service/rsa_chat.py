"""A chat completion answered by a Markovian RSA run: the request's parameters, the run, and
its answer as one ``chat.completion`` or as a stream of progress and content chunks."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import aclosing

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from mrsa.engine.base import Engine, EngineError
from mrsa.rsa import ContextTooLongError, NoUserMessageError, RsaParamError, RsaParams, RsaRun
from mrsa.rsa.events import FinalDelta, NodeStarted, RsaResult, RunCompleted, RunFailed
from mrsa.service import logs, metrics
from mrsa.service.admission import Ticket
from mrsa.service.errors import APIError, from_validation_error
from mrsa.service.context import admit, engine_error, runs_of, settings_of
from mrsa.service.settings import Settings
from mrsa.service.streaming import CHAT_SHUTDOWN, DONE, EventStream, ServerSentEvent, sse, sse_error
from mrsa.service.tasks import CLIENT_CLOSED, ClientDisconnected, in_own_task, until_disconnect
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



def rsa_params(body: ChatCompletionRequest, settings: Settings) -> RsaParams:
    """Server defaults < top-level OpenAI fields < the ``rsa`` object."""
    if body.n != 1:
        raise APIError("n must be 1 with rsa: the run returns one answer", param="n")
    if body.stop:
        raise APIError("stop is not supported with rsa", param="stop")
    top_level = {
        "temperature": body.temperature,
        "top_p": body.top_p,
        "seed": body.seed,
        "ignore_eos": body.ignore_eos or None,
    }
    overrides = {k: v for k, v in top_level.items() if v is not None}
    overrides.update(body.rsa or {})
    try:
        params = settings.rsa_params(overrides)
        limit = body.completion_limit
        if limit is not None and "final_max_tokens" not in (body.rsa or {}):
            # OpenAI's max_tokens is a ceiling, not a target: it caps the final answer (whose
            # budget is otherwise trace_max_tokens), so a client default such as 4096 never
            # asks for more context than the run needs.
            params = params.model_copy(update={"final_max_tokens": min(limit, params.final_tokens)})
        params.check_limits(settings.limits)
    except ValidationError as exc:
        raise from_validation_error(exc, prefix="rsa") from None
    except RsaParamError as exc:
        raise APIError(exc.message, param=f"rsa.{exc.param}", code="invalid_value") from None
    return params


def new_run(engine: Engine, body: ChatCompletionRequest, params: RsaParams, run_id: str) -> RsaRun:
    """The run, once its prompts are known to fit (prompt + K*tau + template + trace tokens)."""
    try:
        return RsaRun(engine, body.chat(), params, run_id=run_id)
    except NoUserMessageError as exc:
        raise APIError(str(exc), param="messages", code="invalid_value") from None
    except ContextTooLongError as exc:
        raise APIError(str(exc), param="messages", code="context_length_exceeded") from None


def failed_body(exc: RunFailed) -> dict:
    """The envelope of a failed run, plus the usage it spent."""
    return {**engine_error(exc).body(), "usage": usage_info(exc.usage).model_dump()}


async def complete(body: ChatCompletionRequest, request: Request, engine: Engine, chunks: ChunkFactory) -> Response:
    params = rsa_params(body, settings_of(request))
    run = new_run(engine, body, params, chunks.id)
    ticket = admit(request, runs_of(request).admission)
    logs.bind_run(chunks.id)
    log.info("rsa run started", extra={"seed": run.seed, "population": params.population, "k": params.k,
                                       "rounds": params.rounds, "method": params.method})
    metrics.RSA_RUNS.inc()
    observer = metrics.RunObserver()
    if body.stream:
        return EventStream(_stream(run, body, chunks, ticket, observer), ticket, closing=CHAT_SHUTDOWN)
    with ticket:
        try:
            result = await until_disconnect(request, _drain(run, ticket, observer))
        except ClientDisconnected:  # the run was cancelled, its engine requests aborted
            log.info("client disconnected; run cancelled")
            return Response(status_code=CLIENT_CLOSED)
        except RunFailed as exc:  # the envelope plus what it spent
            return JSONResponse(failed_body(exc), status_code=exc.status)
        except EngineError as exc:
            return engine_error(exc).response()
    completion = rsa_completion(chunks.id, chunks.created, chunks.model, result, params.return_trace,
                                body.include_reasoning)
    return JSONResponse(completion.model_dump())


async def _drain(run: RsaRun, ticket: Ticket, observer: metrics.RunObserver) -> RsaResult:
    ended = False
    try:
        await ticket.wait()
        async with aclosing(in_own_task(run.events())) as events:
            async for event in events:
                observer.observe(event)
                if isinstance(event, RunCompleted):
                    ended = True
                    _log_completed(event.result)
                    return event.result
    except RunFailed as exc:
        ended = True
        observer.failed(exc.calls, exc.usage.completion_tokens)
        raise
    finally:
        if not ended:  # cancelled: the client went away
            observer.cancelled()
    raise AssertionError("a run's events end with RunCompleted or raise")


async def _stream(
    run: RsaRun, body: ChatCompletionRequest, chunks: ChunkFactory, ticket: Ticket, observer: metrics.RunObserver,
) -> AsyncIterator[ServerSentEvent]:
    params = run.params
    # Open the stream at once (clients see headers and the run's shape before any trace ends).
    yield sse(chunks.progress(run.started.wire()))
    await ticket.wait()
    started = ended = False
    try:
        async with aclosing(in_own_task(run.events())) as events:
            async for event in events:
                observer.observe(event)
                if isinstance(event, FinalDelta):
                    if not started:
                        started = True
                        yield sse(chunks.role())
                    if event.reasoning and body.include_reasoning:
                        yield sse(chunks.reasoning(event.text))
                    elif not event.reasoning:
                        yield sse(chunks.content(event.text))
                elif isinstance(event, RunCompleted):
                    result, ended = event.result, True
                    _log_completed(result)
                    if not started:
                        yield sse(chunks.role())
                    yield sse(chunks.finish(result.finish_reason, rsa=summary_event(result, params.return_trace)))
                    if body.include_usage:
                        yield sse(chunks.usage(usage_info(result.usage).model_dump()))
                elif isinstance(event, NodeStarted):  # live streams only: edges as nodes launch
                    yield sse(chunks.progress(started_event(event)))
                elif (progress := progress_event(event)) is not None:
                    yield sse(chunks.progress(progress))
    except RunFailed as exc:  # the 200 is sent: the error travels as a chunk, with usage
        ended = True
        observer.failed(exc.calls, exc.usage.completion_tokens)
        log.warning("rsa run failed: %s", exc)
        yield sse(failed_body(exc))
    except EngineError as exc:
        ended = True
        observer.failed(0, 0)
        yield sse_error(engine_error(exc))
    except Exception as exc:
        ended = True
        observer.failed(0, 0)
        log.exception("rsa stream failed")
        yield sse_error(APIError(f"Internal error: {type(exc).__name__}", status=500, type="server_error",
                                 code="internal_error"))
    finally:
        if not ended:  # the client went away mid-run
            observer.cancelled()
    yield DONE


def _log_completed(result: RsaResult) -> None:
    log.info(
        "rsa run completed",
        extra={
            "stop_reason": result.stop_reason, "method": result.method, "rounds_completed": result.rounds_completed,
            "calls": result.calls, "completion_tokens": result.usage.completion_tokens,
            "answer": result.answer,
        },
    )
