"""Background runs under ``/v1/rsa/runs``: create, poll, cancel, follow as SSE."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response

from mrsa.service import rsa_chat
from mrsa.service.context import owner_of, runs_of, served
from mrsa.service.errors import APIError
from mrsa.service.json_body import check_json
from mrsa.service.rsa_request import rsa_request
from mrsa.service.runs import StoredRun
from mrsa.service.streaming import KEEP_ALIVE, EventStream, ServerSentEvent, sse
from mrsa.service.wire import ChatCompletionRequest, RunObject

router = APIRouter()


@router.post("/v1/rsa/runs", status_code=202, response_model=None)
async def create_run(body: ChatCompletionRequest, request: Request) -> Response:
    """Start a background RSA run (the body of a chat completion; without ``rsa`` the server's
    defaults, or the preset of its ``reasoning_effort``). ``Idempotency-Key``: see
    :mod:`~mrsa.service.idempotency`."""
    raw = await request.json()
    check_json(raw)
    rsa_request(raw)  # a field a run cannot honour is refused by name
    served(body.model, request)
    return await rsa_chat.background(body, request)


async def _owned(request: Request, run_id: str) -> StoredRun:
    stored = await runs_of(request).get(owner_of(request), run_id)
    if stored is None:
        raise APIError(f"No run with id `{run_id}`.", status=404, param="run_id", code="run_not_found")
    return stored


MAX_EVENT_ID = 2**63 - 1
"""Event numbers are SQLite integers: a larger one names no event and cannot be looked up."""


def _event_id(value: str) -> int:
    try:
        number = int(value.strip())
    except ValueError:
        number = -1
    if not 0 <= number <= MAX_EVENT_ID:
        raise APIError("Last-Event-ID must be an event number from 0 to 2^63 - 1", param="Last-Event-ID",
                       code="invalid_value")
    return number


@router.get("/v1/rsa/runs/{run_id}")
async def get_run(run_id: str, request: Request) -> RunObject:
    return await runs_of(request).run_object(await _owned(request, run_id))


@router.delete("/v1/rsa/runs/{run_id}")
async def cancel_run(run_id: str, request: Request) -> RunObject:
    await _owned(request, run_id)
    runs = runs_of(request)
    stored = await runs.cancel(owner_of(request), run_id)
    assert stored is not None  # owned a moment ago; runs are never deleted
    return await runs.run_object(stored)


@router.get("/v1/rsa/runs/{run_id}/events", response_model=None)
async def run_events(
    run_id: str, request: Request, last_event_id: str | None = Header(None),
    after: int | None = None,
) -> Response:
    """The run's progress as SSE (``id:`` = event number); resume with ``Last-Event-ID`` (or
    ``?after=N``), an event number from 0 to 2^63 - 1. Ends after the run's last event
    (completed, failed or cancelled)."""
    await _owned(request, run_id)
    start = after if after is not None else 0
    if not 0 <= start <= MAX_EVENT_ID:
        raise APIError("after must be an event number from 0 to 2^63 - 1", param="after", code="invalid_value")
    if last_event_id is not None:
        start = _event_id(last_event_id)
    runs, owner = runs_of(request), owner_of(request)

    async def stream() -> AsyncIterator[ServerSentEvent]:
        async with aclosing(runs.events(owner, run_id, start)) as events:
            async for item in events:
                if item is None:
                    yield KEEP_ALIVE
                else:
                    seq, event = item
                    yield sse(event, id=seq)

    return EventStream(stream())
