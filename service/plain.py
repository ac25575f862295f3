"""A chat completion without ``rsa``: what vLLM's own server would answer.

``n`` choices are ``n`` engine requests, each with its own seed (``seed + i``), merged into one
stream of ``(choice index, delta)``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import aclosing

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from mrsa.engine.base import Completion, Engine, EngineError, GenerationDelta, SamplingParams
from mrsa.service import metrics
from mrsa.service.admission import Ticket
from mrsa.service.errors import APIError
from mrsa.service.context import admit, engine_error, settings_of
from mrsa.service.settings import Settings
from mrsa.service.streaming import DONE, EventStream, sse, sse_error
from mrsa.service.tasks import CLIENT_CLOSED, ClientDisconnected, fan_in, in_own_task, until_disconnect
from mrsa.service.wire import ChatCompletion, ChatCompletionRequest, Choice, ChunkFactory, ResponseMessage, UsageInfo

log = logging.getLogger(__name__)


def sampling_params(body: ChatCompletionRequest, settings: Settings, prompt_tokens: int, max_model_len: int) -> list[SamplingParams]:
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


def _generations(engine: Engine, prompt_ids: list[int], params: list[SamplingParams], request_id: str
                 ) -> AsyncIterator[tuple[int, GenerationDelta]]:
    return fan_in([engine.generate(prompt_ids, p, f"{request_id}-{i}") for i, p in enumerate(params)])


async def complete(body: ChatCompletionRequest, request: Request, engine: Engine, chunks: ChunkFactory) -> Response:
    prompt_ids = engine.tokenizer.apply_chat_template(body.chat())
    params = sampling_params(body, settings_of(request), len(prompt_ids), engine.max_model_len)
    ticket = admit(request.app.state.plain_admission)
    if body.stream:
        return EventStream(_stream(engine, prompt_ids, params, body, chunks, ticket), ticket)
    with ticket:
        try:
            outs = await until_disconnect(request, _collect(engine, prompt_ids, params, chunks.id, ticket))
        except ClientDisconnected:  # its engine requests were aborted
            return Response(status_code=CLIENT_CLOSED)
        except EngineError as exc:
            return engine_error(exc).response()
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


async def _collect(engine: Engine, prompt_ids: list[int], params: list[SamplingParams], request_id: str,
                   ticket: Ticket) -> list[Completion]:
    await ticket.wait()
    outs = [Completion() for _ in params]
    async with aclosing(in_own_task(_generations(engine, prompt_ids, params, request_id))) as events:
        async for i, delta in events:
            outs[i].add(delta)
    return outs


async def _stream(engine: Engine, prompt_ids: list[int], params: list[SamplingParams], body: ChatCompletionRequest,
                  chunks: ChunkFactory, ticket: Ticket) -> AsyncIterator[str]:
    await ticket.wait()
    completion_tokens = 0
    for i in range(body.n):
        yield sse(chunks.role(i))
    try:
        async with aclosing(in_own_task(_generations(engine, prompt_ids, params, chunks.id))) as events:
            async for i, delta in events:
                completion_tokens += len(delta.token_ids)
                if delta.text:
                    yield sse(chunks.content(delta.text, i))
                if delta.finished:
                    yield sse(chunks.finish(delta.finish_reason or "stop", i))
    except EngineError as exc:  # the 200 is sent: the error travels as a chunk
        yield sse_error(engine_error(exc))
    except Exception as exc:
        log.exception("stream failed")
        yield sse_error(APIError(f"Internal error: {type(exc).__name__}", status=500, type="server_error",
                                 code="internal_error"))
    else:
        metrics.GENERATED_TOKENS.inc(completion_tokens)
        metrics.TOKENS.labels("plain").inc(completion_tokens)
        if body.include_usage:
            usage = UsageInfo(
                prompt_tokens=len(prompt_ids), completion_tokens=completion_tokens,
                total_tokens=len(prompt_ids) + completion_tokens,
            )
            yield sse(chunks.usage(usage.model_dump(exclude_none=True)))
    yield DONE
