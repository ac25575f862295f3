"""HTTP routes: ``/v1/chat/completions`` (plain or RSA), background runs under ``/v1/rsa/runs``,
``/v1/models``, ``/health``."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from mrsa.engine.base import Completion, Engine, EngineError, SamplingParams
from mrsa.rsa import ContextTooLongError, NoUserMessageError, RsaParamError, RsaParams, RsaRun
from mrsa.rsa.events import (
    FinalDelta,
    FinalStarted,
    NodeFinished,
    NodeStarted,
    RoundCompleted,
    RsaEvent,
    RsaResult,
    RunCompleted,
    RunFailed,
    Usage,
)
from mrsa.service import logs, metrics
from mrsa.service.admission import Overloaded, Ticket
from mrsa.service.background import ClientDisconnected, pump, until_disconnect
from mrsa.service.errors import APIError, from_validation_error
from mrsa.service.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    CompletionTokensDetails,
    ModelCard,
    ModelList,
    ResponseMessage,
    UsageInfo,
    completion_id,
    now,
)
from mrsa.service.runs import RunManager, new_run_id
from mrsa.service.settings import Settings
from mrsa.service.streaming import DONE, ChunkFactory, sse, sse_error

log = logging.getLogger(__name__)
router = APIRouter()

# Status nginx uses for "client closed request": never seen by the client, visible in logs.
CLIENT_CLOSED = 499


def _engine(request: Request) -> Engine:
    return request.app.state.engine


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _runs(request: Request) -> RunManager:
    return request.app.state.runs


def _owner(request: Request) -> str:
    """The hash of the caller's API key (set by service.auth), "" when keys are off."""
    return getattr(request.state, "owner", "")


def _served(body: ChatCompletionRequest, request: Request) -> Engine:
    """The engine, once ``body.model`` is the model it serves (404 otherwise)."""
    engine = _engine(request)
    if body.model != engine.model_name:
        raise APIError(
            f"The model `{body.model}` does not exist. Available: `{engine.model_name}`.",
            status=404, param="model", code="model_not_found",
        )
    return engine


def _admit(admission) -> Ticket:
    try:
        return admission.admit()
    except Overloaded as exc:
        raise APIError(
            str(exc), status=429, type="rate_limit_error", code="server_busy",
            headers={"Retry-After": str(exc.retry_after_s)},
        ) from None


@router.get("/health")
async def health(request: Request) -> dict:
    engine = _engine(request)
    return {"status": "ok", "model": engine.model_name, "in_flight": engine.num_in_flight()}


@router.get("/v1/models")
async def models(request: Request) -> ModelList:
    engine = _engine(request)
    card = ModelCard(
        id=engine.model_name, created=request.app.state.started, max_model_len=engine.max_model_len
    )
    return ModelList(data=[card])


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    engine = _served(body, request)
    if body.background:
        if body.rsa is None:
            raise APIError("background needs an rsa object: only RSA runs run in the background", param="background")
        return await _submit_run(body, request, engine)
    chunks = ChunkFactory(id=completion_id(), created=now(), model=engine.model_name)
    if body.rsa is not None:
        return await _rsa_completion(body, request, engine, chunks)
    return await _plain_completion(body, request, engine, chunks)


# --------------------------------------------------------------------------- background runs


@router.post("/v1/rsa/runs", status_code=202, response_model=None)
async def create_run(body: ChatCompletionRequest, request: Request) -> Response:
    """Start a background RSA run (the body of a chat completion; ``rsa`` defaults to {})."""
    engine = _served(body, request)
    return await _submit_run(body.model_copy(update={"rsa": body.rsa or {}}), request, engine)


async def _submit_run(body: ChatCompletionRequest, request: Request, engine: Engine) -> Response:
    if body.stream:
        raise APIError("stream and background exclude each other: follow /v1/rsa/runs/{id}/events", param="stream")
    params = _rsa_params(body, _settings(request))
    run_id = new_run_id()
    try:
        run = RsaRun(engine, body.chat(), params, run_id=f"{run_id}-a1")
    except (ContextTooLongError, NoUserMessageError) as exc:
        raise _context_error(exc) from None
    runs = _runs(request)
    ticket = _admit(runs.admission)
    metrics.RSA_RUNS.inc()
    stored = await runs.submit(_owner(request), engine.model_name, run_id, run, ticket)
    return JSONResponse(await _run_object(runs, stored), status_code=202)


async def _run_object(runs: RunManager, stored) -> dict:
    params = stored.spec["params"]
    progress = await runs.progress(stored.id)
    result = stored.result
    if result is not None:
        usage = result["usage"]
    elif stored.error is not None and "usage" in stored.error:
        usage = stored.error["usage"]
    else:
        usage = usage_info(Usage(progress.prompt_tokens, progress.completion_tokens, progress.reasoning_tokens)).model_dump()
    return {
        "id": stored.id,
        "object": "rsa.run",
        "created": int(stored.created),
        "model": stored.spec["model"],
        "status": stored.status,
        "seed": params["seed"],
        "progress": {
            "nodes_finished": progress.nodes,
            "nodes_total": params["population"] * params["rounds"],
            "rounds": params["rounds"],
            "attempts": stored.attempts,
        },
        "usage": usage,
        "result": result,
        "error": None if stored.error is None else stored.error["error"],
    }


async def _owned(request: Request, run_id: str):
    stored = await _runs(request).get(_owner(request), run_id)
    if stored is None:
        raise APIError(f"No run with id `{run_id}`.", status=404, param="run_id", code="run_not_found")
    return stored


@router.get("/v1/rsa/runs/{run_id}")
async def get_run(run_id: str, request: Request) -> dict:
    return await _run_object(_runs(request), await _owned(request, run_id))


@router.delete("/v1/rsa/runs/{run_id}")
async def cancel_run(run_id: str, request: Request) -> dict:
    await _owned(request, run_id)
    stored = await _runs(request).cancel(_owner(request), run_id)
    return await _run_object(_runs(request), stored)


@router.get("/v1/rsa/runs/{run_id}/events", response_model=None)
async def run_events(
    run_id: str, request: Request, last_event_id: str | None = Header(None), after: int | None = None
) -> Response:
    """The run's progress as SSE (``id:`` = event number); resume with ``Last-Event-ID`` (or
    ``?after=N``). Ends after the run's last event (completed, failed or cancelled)."""
    await _owned(request, run_id)
    start = after if after is not None else 0
    if last_event_id is not None:
        try:
            start = int(last_event_id)
        except ValueError:
            raise APIError("Last-Event-ID must be an event number", param="Last-Event-ID") from None
    if start < 0:
        raise APIError("the event number must not be negative", param="after")
    runs, owner = _runs(request), _owner(request)

    async def stream() -> AsyncIterator[str]:
        async with aclosing(runs.events(owner, run_id, start)) as events:
            async for item in events:
                if item is None:
                    yield ": keep-alive\n\n"
                else:
                    seq, event = item
                    yield f"id: {seq}\n{sse(event)}"

    return _sse_response(stream())


# --------------------------------------------------------------------------- RSA


def _rsa_params(body: ChatCompletionRequest, settings: Settings) -> RsaParams:
    """Server defaults < top-level OpenAI fields < the ``rsa`` object."""
    if body.n != 1:
        raise APIError("n must be 1 with rsa: the run returns one answer", param="n")
    if body.stop:
        raise APIError("stop is not supported with rsa", param="stop")
    top_level = {
        "temperature": body.temperature,
        "top_p": body.top_p,
        "seed": body.seed,
        "final_max_tokens": body.completion_limit,
        "ignore_eos": body.ignore_eos or None,
    }
    overrides = {k: v for k, v in top_level.items() if v is not None}
    overrides.update(body.rsa or {})
    try:
        params = settings.rsa_params(overrides)
        params.check_limits(settings.limits)
    except ValidationError as exc:
        raise from_validation_error(exc, prefix="rsa") from None
    except RsaParamError as exc:
        raise APIError(exc.message, param=f"rsa.{exc.param}", code="invalid_value") from None
    return params


def _context_error(exc: ContextTooLongError | NoUserMessageError) -> APIError:
    if isinstance(exc, NoUserMessageError):
        return APIError(str(exc), param="messages", code="invalid_value")
    return APIError(str(exc), param="messages", code="context_length_exceeded")


def _usage(result: RsaResult | RunFailed) -> UsageInfo:
    return usage_info(result.usage)


def usage_info(u: Usage) -> UsageInfo:
    return UsageInfo(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        total_tokens=u.total_tokens,
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=u.reasoning_tokens),
    )


def _summary(result: RsaResult, with_trace: bool) -> dict:
    block = {
        "seed": result.seed,
        "rounds_completed": result.rounds_completed,
        "calls": result.calls,
        "stop_reason": result.stop_reason,
        "final_mode": result.final_mode,
        "answer": result.answer,
        "answers": result.answers,
        "degraded": result.degraded,
        "failed": [dataclasses.asdict(f) for f in result.failed],
    }
    if with_trace:
        block["trace"] = [dataclasses.asdict(node) for node in result.trace]
    return block


def completion_body(id: str, model: str, result: RsaResult, with_trace: bool) -> dict:
    """The ``chat.completion`` body of a finished run."""
    return ChatCompletion(
        id=id,
        created=now(),
        model=model,
        choices=[
            Choice(index=0, message=ResponseMessage(content=result.content), finish_reason=result.finish_reason)
        ],
        usage=_usage(result),
        rsa=_summary(result, with_trace),
    ).model_dump()


def progress_event(event: RsaEvent) -> dict | None:
    """The ``rsa`` progress object of an event (streams and the background event log)."""
    return _progress(event)


def _progress(event: RsaEvent) -> dict | None:
    match event:
        case NodeFinished():
            return {
                "event": "node_finished",
                "round": event.round,
                "index": event.index,
                "tokens": event.completion_tokens,
                "answer": event.answer,
                "status": event.status,
                "cut": event.cut,
                **({"parents": event.record.parents} if event.record is not None and event.round > 0 else {}),
                **({"error": event.error} if event.error is not None else {}),
            }
        case RoundCompleted():
            return {"event": "round_completed", "round": event.round, "answers": event.answers}
        case FinalStarted():
            return {"event": "final_started", "mode": event.mode, "parents": event.parents}
    return None


async def _rsa_completion(
    body: ChatCompletionRequest, request: Request, engine: Engine, chunks: ChunkFactory
) -> Response:
    params = _rsa_params(body, _settings(request))
    messages = body.chat()
    try:  # the run checks that prompt + K*tau + template + trace tokens fit, before any work
        run = RsaRun(engine, messages, params, run_id=chunks.id)
    except (ContextTooLongError, NoUserMessageError) as exc:
        raise _context_error(exc) from None
    ticket = _admit(_runs(request).admission)
    logs.bind_run(chunks.id)
    log.info(
        "rsa run started",
        extra={"seed": run.seed, "population": params.population, "k": params.k, "rounds": params.rounds},
    )
    metrics.RSA_RUNS.inc()
    observer = metrics.RunObserver()
    if body.stream:
        return _sse_response(_rsa_stream(run, params, body, chunks, ticket, observer))

    async def drain() -> RsaResult:
        ended = False
        try:
            with ticket:
                await ticket.wait()
                async with aclosing(pump(run.events())) as events:
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
        raise EngineError("run ended without a result")

    result = await _guarded(request, drain())
    if isinstance(result, Response):
        return result
    body_out = completion_body(chunks.id, chunks.model, result, params.return_trace)
    return JSONResponse({**body_out, "created": chunks.created})


async def _rsa_stream(
    run: RsaRun, params: RsaParams, body: ChatCompletionRequest, chunks: ChunkFactory, ticket: Ticket,
    observer: metrics.RunObserver,
) -> AsyncIterator[str]:
    with ticket:
        async with aclosing(_rsa_stream_admitted(run, params, body, chunks, ticket, observer)) as lines:
            async for line in lines:
                yield line


async def _rsa_stream_admitted(
    run: RsaRun, params: RsaParams, body: ChatCompletionRequest, chunks: ChunkFactory, ticket: Ticket,
    observer: metrics.RunObserver,
) -> AsyncIterator[str]:
    # Open the stream at once (clients see headers and the run's shape before any trace ends).
    yield sse(chunks.progress({
        "event": "run_started", "seed": run.seed, "population": params.population,
        "k": params.k, "rounds": params.rounds,
    }))
    await ticket.wait()
    started = ended = False
    try:
        async with aclosing(pump(run.events())) as events:
            async for event in events:
                observer.observe(event)
                if isinstance(event, FinalDelta):
                    if not started:
                        started = True
                        yield sse(chunks.role())
                    if event.text:
                        yield sse(chunks.content(event.text))
                elif isinstance(event, RunCompleted):
                    result = event.result
                    ended = True
                    _log_completed(result)
                    if not started:
                        yield sse(chunks.role())
                    summary = {"event": "run_completed", **_summary(result, params.return_trace)}
                    yield sse(chunks.finish(result.finish_reason, rsa=summary))
                    if body.include_usage:
                        yield sse(chunks.usage(_usage(result).model_dump()))
                elif isinstance(event, NodeStarted):  # live streams only: edges as nodes launch
                    yield sse(chunks.progress({
                        "event": "node_started", "round": event.round, "index": event.index,
                        "parents": event.parents,
                    }))
                elif (progress := _progress(event)) is not None:
                    yield sse(chunks.progress(progress))
    except RunFailed as exc:  # the 200 is sent: the error travels as a chunk, with usage
        ended = True
        observer.failed(exc.calls, exc.usage.completion_tokens)
        log.warning("rsa run failed: %s", exc)
        yield sse({**_engine_error(exc).body(), "usage": _usage(exc).model_dump()})
    except Exception as exc:
        ended = True
        observer.failed(0, 0)
        yield sse_error(_stream_failure(exc))
    finally:
        if not ended:  # the client went away mid-run
            observer.cancelled()
    yield DONE


def _log_completed(result: RsaResult) -> None:
    log.info(
        "rsa run completed",
        extra={
            "stop_reason": result.stop_reason, "rounds_completed": result.rounds_completed,
            "calls": result.calls, "completion_tokens": result.usage.completion_tokens,
            "answer": result.answer,
        },
    )


# --------------------------------------------------------------------------- plain


def _plain_params(
    body: ChatCompletionRequest, settings: Settings, prompt_tokens: int, max_model_len: int
) -> list[SamplingParams]:
    if body.n > settings.max_n:
        raise APIError(f"n={body.n} exceeds this server's limit of {settings.max_n}", param="n")
    room = max_model_len - prompt_tokens
    limit = body.completion_limit
    if room <= 0 or (limit is not None and limit > room):
        asked = limit if limit is not None else 0
        raise APIError(
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {prompt_tokens + asked} tokens ({prompt_tokens} in the messages, "
            f"{asked} in the completion). Please reduce the length of the messages or completion.",
            param="messages",
            code="context_length_exceeded",
        )
    return [
        SamplingParams(
            max_tokens=limit or room,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            seed=None if body.seed is None else body.seed + i,
            stop=tuple(body.stop or ()),
            ignore_eos=body.ignore_eos,
        )
        for i in range(body.n)
    ]


async def _plain_completion(
    body: ChatCompletionRequest, request: Request, engine: Engine, chunks: ChunkFactory
) -> Response:
    from mrsa.service.plain import merged_generations

    prompt_ids = engine.tokenizer.apply_chat_template(body.chat())
    params = _plain_params(body, _settings(request), len(prompt_ids), engine.max_model_len)
    ticket = _admit(request.app.state.plain_admission)
    deltas = merged_generations(engine, prompt_ids, params, chunks.id)
    if body.stream:
        return _sse_response(_plain_stream(deltas, len(prompt_ids), body, chunks, ticket))

    async def collect() -> list[Completion]:
        with ticket:
            await ticket.wait()
            outs = [Completion() for _ in params]
            async with aclosing(pump(deltas)) as events:
                async for i, delta in events:
                    outs[i].add(delta)
            return outs

    outs = await _guarded(request, collect())
    if isinstance(outs, Response):
        return outs
    completion_tokens = sum(len(o.token_ids) for o in outs)
    metrics.GENERATED_TOKENS.inc(completion_tokens)
    metrics.TOKENS.labels("plain").inc(completion_tokens)
    return JSONResponse(
        ChatCompletion(
            id=chunks.id,
            created=chunks.created,
            model=chunks.model,
            choices=[
                Choice(index=i, message=ResponseMessage(content=o.text), finish_reason=o.finish_reason)
                for i, o in enumerate(outs)
            ],
            usage=UsageInfo(
                prompt_tokens=len(prompt_ids),
                completion_tokens=completion_tokens,
                total_tokens=len(prompt_ids) + completion_tokens,
            ),
        ).model_dump(exclude_none=True)
    )


async def _plain_stream(
    deltas: AsyncIterator, prompt_tokens: int, body: ChatCompletionRequest, chunks: ChunkFactory, ticket: Ticket
) -> AsyncIterator[str]:
    with ticket:
        await ticket.wait()
        async with aclosing(_plain_stream_admitted(deltas, prompt_tokens, body, chunks)) as lines:
            async for line in lines:
                yield line


async def _plain_stream_admitted(
    deltas: AsyncIterator, prompt_tokens: int, body: ChatCompletionRequest, chunks: ChunkFactory
) -> AsyncIterator[str]:
    completion_tokens = 0
    for i in range(body.n):
        yield sse(chunks.role(i))
    try:
        async with aclosing(pump(deltas)) as events:
            async for i, delta in events:
                completion_tokens += len(delta.token_ids)
                if delta.text:
                    yield sse(chunks.content(delta.text, i))
                if delta.finished:
                    yield sse(chunks.finish(delta.finish_reason or "stop", i))
    except Exception as exc:  # the 200 is sent: the error travels as a chunk
        yield sse_error(_stream_failure(exc))
    else:
        metrics.GENERATED_TOKENS.inc(completion_tokens)
        metrics.TOKENS.labels("plain").inc(completion_tokens)
        if body.include_usage:
            usage = UsageInfo(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
            )
            yield sse(chunks.usage(usage.model_dump(exclude_none=True)))
    yield DONE


# --------------------------------------------------------------------------- shared


def _sse_response(stream: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _guarded(request: Request, work):
    """Run non-streaming work; a disconnect cancels it (aborting its engine requests) and an
    engine failure becomes a 500 envelope."""
    try:
        return await until_disconnect(request, work)
    except ClientDisconnected:
        log.info("client disconnected; run cancelled")
        return Response(status_code=CLIENT_CLOSED)
    except RunFailed as exc:  # an RSA run that failed: the envelope plus what it spent
        body = {**_engine_error(exc).body(), "usage": _usage(exc).model_dump()}
        return JSONResponse(body, status_code=exc.status)
    except EngineError as exc:
        return _engine_error(exc).response()


def _stream_failure(exc: Exception) -> APIError:
    if isinstance(exc, EngineError):
        return _engine_error(exc)
    log.exception("stream failed")
    return APIError(f"Internal error: {type(exc).__name__}", status=500, type="server_error", code="internal_error")


def _engine_error(exc: EngineError) -> APIError:
    err_type = "invalid_request_error" if exc.status < 500 else "server_error"
    return APIError(str(exc), status=exc.status, type=err_type, code=exc.code)
