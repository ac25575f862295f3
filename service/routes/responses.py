"""``/v1/responses``: OpenAI's Responses API. Create (live, streamed, or in the background as a
durable run), retrieve (or replay its events with ``stream=true&starting_after=N``), cancel,
delete. A response is visible only to the API key that created it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from mrsa.service.context import owner_of, runs_of
from mrsa.service.errors import APIError
from mrsa.service.idempotency import REPLAYED, idempotency
from mrsa.service.json_body import check_json
from mrsa.service.pipeline import admit, submit
from mrsa.service.responses import stored
from mrsa.service.responses.live import respond
from mrsa.service.responses.prepare import Prepared, prepare
from mrsa.service.responses.wire import ResponseObject, ResponseRequest, response_id
from mrsa.service.runs import Submitted
from mrsa.service.streaming import KEEP_ALIVE, EventStream, ServerSentEvent, sse_event
from mrsa.service.wire import now

router = APIRouter()


@router.post("/v1/responses", response_model=ResponseObject)
async def create_response(body: ResponseRequest, request: Request) -> Response:
    """A response: plain, or an RSA run with ``reasoning.effort`` low..xhigh or ``rsa``;
    ``stream`` for the event stream; ``background`` to return at once (status ``queued``),
    once per ``Idempotency-Key`` (:mod:`~mrsa.service.idempotency`)."""
    raw = await request.json()
    check_json(raw)
    if body.background and not body.store:
        raise APIError("background responses are stored: store must not be false", param="store")
    runs, owner = runs_of(request), owner_of(request)
    key = idempotency(request, raw) if body.background else None
    if key is not None and (earlier := await runs.idempotent(owner, *key)) is not None:
        return await _accepted(request, earlier, body.stream)
    prep = await prepare(body, request, response_id())
    if body.background:
        return await _submit(prep, request, body.stream, key)
    return await respond(prep, request, admit(request, plain=prep.plain), body.stream)


async def _submit(prep: Prepared, request: Request, stream: bool, key: tuple[str, str] | None) -> Response:
    """The response's run, stored with its record in one transaction."""
    data = stored.record(prep.engine.model_name, now(), prep.echo, prep.conversation, None)
    submitted = await submit(request, prep.resp_id, prep.run, idempotency=key, extra={"response": True}, response=data)
    return await _accepted(request, submitted, stream)


async def _accepted(request: Request, submitted: Submitted, stream: bool) -> Response:
    """A background response as accepted (or as the first request with its key left it)."""
    resp_id = submitted.run.id
    response, data = await _found(request, resp_id)
    answer: Response = (EventStream(_replay(request, resp_id, data, -1)) if stream
                        else JSONResponse(response.model_dump()))
    if submitted.replayed:
        answer.headers[REPLAYED] = "true"
    return answer


async def _found(request: Request, resp_id: str) -> tuple[ResponseObject, dict[str, Any]]:
    found = await stored.load(runs_of(request), owner_of(request), resp_id)
    if found is None:
        raise APIError(f"No response with id `{resp_id}`.", status=404, param="response_id",
                       code="response_not_found")
    return found


def _replay(request: Request, resp_id: str, data: dict[str, Any], after: int) -> AsyncIterator[ServerSentEvent]:
    runs, owner = runs_of(request), owner_of(request)

    async def lines() -> AsyncIterator[ServerSentEvent]:
        async with aclosing(stored.replay(runs, owner, resp_id, data, after)) as events:
            async for event in events:
                yield KEEP_ALIVE if event is None else sse_event(event)

    return lines()


@router.get("/v1/responses/{response_id}", response_model=ResponseObject)
async def get_response(response_id: str, request: Request, stream: bool = False,
                       starting_after: int | None = None) -> Response:
    """The response; with ``stream=true`` its events after ``starting_after`` (live until a
    background response ends)."""
    response, data = await _found(request, response_id)
    if not stream:
        return JSONResponse(response.model_dump())
    after = -1 if starting_after is None else starting_after
    if response.background:
        return EventStream(_replay(request, response_id, data, after))

    async def lines() -> AsyncIterator[ServerSentEvent]:
        for event in stored.synthesized(response, after):
            yield sse_event(event)

    return EventStream(lines())


@router.get("/v1/responses/{response_id}/input_items")
async def input_items(response_id: str, request: Request, order: Literal["asc", "desc"] = "desc",
                      limit: int = Query(20, ge=1, le=100), after: str | None = None) -> dict[str, Any]:
    """The conversation the response answered (a previous response's turns included, the
    instructions not), as message items; newest first unless ``order=asc``."""
    _, data = await _found(request, response_id)
    suffix = response_id.removeprefix("resp_")
    items = [
        {"id": f"msg_{suffix}_{i}", "type": "message", "role": m["role"], "status": "completed",
         "content": [{"type": "output_text" if m["role"] == "assistant" else "input_text", "text": m["content"]}]}
        for i, m in enumerate(data["conversation"])
    ]
    if order == "desc":
        items.reverse()
    if after is not None:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    page = items[:limit]
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit}


@router.post("/v1/responses/{response_id}/cancel", response_model=ResponseObject)
async def cancel_response(response_id: str, request: Request) -> Response:
    """Cancel a background response (idempotent; its engine requests are aborted before the
    answer). One that already ended is returned as it is."""
    response, data = await _found(request, response_id)
    if not response.background:
        raise APIError("Only background responses can be cancelled.", param="response_id")
    runs = runs_of(request)
    run = await runs.cancel(owner_of(request), response_id)
    if run is None:  # removed in between
        raise APIError(f"No response with id `{response_id}`.", status=404, param="response_id",
                       code="response_not_found")
    return JSONResponse((await stored.background_object(runs, run, data)).model_dump())


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, request: Request) -> dict[str, Any]:
    """Remove a stored response (a background one is cancelled first)."""
    if not await runs_of(request).delete_response(owner_of(request), response_id):
        raise APIError(f"No response with id `{response_id}`.", status=404, param="response_id",
                       code="response_not_found")
    return {"id": response_id, "object": "response.deleted", "deleted": True}
