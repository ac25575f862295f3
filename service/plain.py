"""A request without RSA: vLLM's own OpenAI layer answers it (``engine.openai``), as
``vllm serve`` would, with tools, structured outputs, logprobs and the rest.

What the service adds around it is its own: admission (a plain request holds one slot of the
``requests`` pool while it runs or streams), the disconnect watch (a client that goes away
cancels the call, which aborts its engine requests), token metrics from the usage, and error
bodies in this service's envelope. The answer itself is passed on as the layer gave it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from http import HTTPStatus

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from mrsa.engine.base import EngineError, OpenAIResult
from mrsa.service import metrics
from mrsa.service.admission import Ticket
from mrsa.service.errors import APIError
from mrsa.service.pipeline import admit, failure
from mrsa.service.streaming import CHAT_SHUTDOWN, DONE, EventStream, ServerSentEvent, sse, sse_error
from mrsa.service.tasks import CLIENT_CLOSED, ClientDisconnected, in_own_task, until_disconnect

log = logging.getLogger(__name__)

Call = Callable[[], Awaitable[OpenAIResult]]


async def forward(request: Request, call: Call, *, admitted: bool = True) -> Response:
    """Answer with what ``call`` (a method of ``engine.openai``) returns. ``admitted``: the
    call generates, so it takes an admission slot (tokenize and the model list do not)."""
    ticket = admit(request, plain=True) if admitted else None
    try:
        result = await until_disconnect(request, _started(ticket, call))
    except ClientDisconnected:  # the call was cancelled: its engine requests were aborted
        _release(ticket)
        return Response(status_code=CLIENT_CLOSED)
    except EngineError as exc:
        _release(ticket)
        return failure(exc).error.response()
    except BaseException:
        _release(ticket)
        raise
    if result.stream is None:
        _release(ticket)
        if result.status == 200:
            _count(result.body)
        return JSONResponse(enveloped(result.status, result.body), status_code=result.status)
    return EventStream(_relay(result.stream), ticket, closing=CHAT_SHUTDOWN)


async def _started(ticket: Ticket | None, call: Call) -> OpenAIResult:
    if ticket is not None:
        await ticket.wait()
    return await call()


def _release(ticket: Ticket | None) -> None:
    if ticket is not None:
        ticket.release()


def enveloped(status: int, body: dict | None) -> dict | None:
    """An error body in this service's envelope (vLLM's has an integer ``code`` and its own
    ``type`` names): the message and param are kept; a success body is returned as it is."""
    if status < 400:
        return body
    error = (body or {}).get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    message = error.get("message") or (json.dumps(body) if body else HTTPStatus(status).phrase)
    code = error.get("code")
    if status == 400 and "maximum context length" in str(message):
        code = "context_length_exceeded"  # OpenAI's code for it, which clients test
    return APIError.for_status(
        status,
        str(message),
        param=error.get("param") if isinstance(error.get("param"), str) else None,
        code=code if isinstance(code, str) else HTTPStatus(status).phrase.lower().replace(" ", "_"),
    ).body()


def _count(body: dict | None) -> None:
    usage = (body or {}).get("usage") if isinstance(body, dict) else None
    tokens = (usage or {}).get("completion_tokens") if isinstance(usage, dict) else None
    if isinstance(tokens, int) and tokens > 0:
        metrics.GENERATED_TOKENS.inc(tokens)
        metrics.TOKENS.labels("plain").inc(tokens)


async def _relay(payloads: AsyncIterator[str]) -> AsyncIterator[ServerSentEvent]:
    """The layer's events (their data: JSON chunks, then ``[DONE]``), read by a task of their
    own (a disconnect cancels it, which aborts the engine requests:
    :func:`mrsa.service.tasks.in_own_task`) and passed on as they are. The usage chunk (sent
    when the client asked for ``include_usage``: no choices, a usage) feeds the token metrics.
    A failure after the 200 travels as an error chunk, then ``[DONE]``."""
    try:
        async with aclosing(in_own_task(payloads)) as events:
            async for data in events:
                chunk = _chunk(data)
                if chunk is not None and chunk.get("choices") == []:  # the usage chunk: no choices
                    _count(chunk)
                yield sse(data)
    except EngineError as exc:
        yield sse_error(failure(exc).error)
        yield DONE
    except Exception as exc:
        log.exception("plain stream failed")
        yield sse_error(APIError.internal(exc))
        yield DONE


def _chunk(data: str) -> dict | None:
    """An event's data as a JSON object, read once (None for ``[DONE]`` or anything else)."""
    if data == "[DONE]":
        return None
    try:
        chunk = json.loads(data)
    except ValueError:
        return None
    return chunk if isinstance(chunk, dict) else None
