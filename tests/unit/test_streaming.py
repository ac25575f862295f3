"""Server-sent events through sse-starlette (service/streaming.py): how each stream kind is
framed on the wire (ids on a run's events, names on Responses events, ``[DONE]`` on chat), the
plain relay's usage count, the admission ticket however a stream ends, and the library's own
exit watch left to the service's shutdown."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn
from httpx_sse import EventSource
from prometheus_client import REGISTRY
from sse_starlette.sse import AppStatus

from mrsa.engine.base import OpenAIResult
from mrsa.service.admission import Admission
from mrsa.service.streaming import DONE, KEEP_ALIVE, EventStream, ServerSentEvent, framed, sse, sse_event
from tests.fakes import FakeEngine
from tests.serving import QUESTION, RSA, serving, submit, wait_status

CHAT = {"model": "fake-model", "messages": QUESTION}


def test_events_are_framed_with_newlines_ids_names_and_comments() -> None:
    assert framed(sse({"a": 1}, id=3)) == 'id: 3\ndata: {"a":1}\n\n'
    assert framed(sse_event({"type": "response.created", "n": "é"})) == (
        'event: response.created\ndata: {"type":"response.created","n":"\\u00e9"}\n\n')
    assert framed(KEEP_ALIVE, DONE) == ": keep-alive\n\ndata: [DONE]\n\n"
    # A data text of several lines is several data: lines (a client joins them back).
    assert framed(sse("a\nb")) == "data: a\ndata: b\n\n"


async def _events(http: httpx.AsyncClient, method: str, url: str, **kw: object) -> tuple[str, list]:
    """The raw text of a stream, and its events as an SSE client reads them."""
    async with http.stream(method, url, **kw) as response:  # type: ignore[arg-type]
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache" and response.headers["x-accel-buffering"] == "no"
        raw = (await response.aread()).decode()
    read = httpx.Response(200, content=raw.encode(), headers={"content-type": "text/event-stream"})
    return raw, [e async for e in EventSource(read).aiter_sse()]


async def test_each_stream_kind_is_framed_as_its_clients_read_it() -> None:
    async with serving(FakeEngine()) as http:
        # A run's events: id = the event's number, every one of them.
        run = await submit(http)
        await wait_status(http, run["id"], {"completed"})
        raw, events = await _events(http, "GET", f"/v1/rsa/runs/{run['id']}/events")
        assert "\r" not in raw and events
        assert [e.id for e in events] == [str(i) for i in range(int(events[0].id), int(events[0].id) + len(events))]
        assert events[-1].json()["event"] == "run_completed"

        # Responses events: event = the data's type.
        raw, events = await _events(http, "POST", "/v1/responses",
                                    json={"model": "fake-model", "input": "What is 6 * 7?", "stream": True})
        assert "\r" not in raw and raw.startswith("event: response.created\ndata: {")
        assert all(e.event == e.json()["type"] for e in events)
        assert events[-1].event == "response.completed"

        # Chat, plain and RSA: JSON chunks, then [DONE].
        for body in ({**CHAT, "stream": True}, {**CHAT, "stream": True, "rsa": RSA}):
            raw, events = await _events(http, "POST", "/v1/chat/completions", json=body)
            assert "\r" not in raw and raw.endswith("\n\ndata: [DONE]\n\n")
            assert events[-1].data == "[DONE]" and all(e.event == "message" for e in events)
            assert all(isinstance(e.json(), dict) for e in events[:-1])


async def test_the_plain_relay_counts_the_usage_chunk_and_not_a_chunk_that_mentions_usage() -> None:
    engine = FakeEngine()
    payloads = [
        '{"choices": [{"index": 0, "delta": {"content": "\\"usage\\": {\\"completion_tokens\\": 50}"}}]}',
        '{"choices": [], "note": "no \\"usage\\" here"}',
        '{"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10}}',
        "[DONE]",
    ]

    async def stream() -> AsyncIterator[str]:
        for payload in payloads:
            yield payload

    async def chat(body: dict) -> OpenAIResult:
        return OpenAIResult(stream=stream())

    engine.openai.chat_completions = chat  # type: ignore[method-assign]
    before = REGISTRY.get_sample_value("mrsa_tokens_total", {"phase": "plain"}) or 0.0
    async with serving(engine) as http:
        raw, events = await _events(http, "POST", "/v1/chat/completions", json={**CHAT, "stream": True})
    after = REGISTRY.get_sample_value("mrsa_tokens_total", {"phase": "plain"}) or 0.0
    assert after - before == 7
    assert [e.data for e in events] == payloads  # each passed on as the layer gave it
    assert raw == "".join(f"data: {p}\n\n" for p in payloads)


async def _drive(stream: EventStream, receive) -> list[dict]:  # type: ignore[no-untyped-def]
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    await stream({"type": "http", "method": "GET", "asgi": {"spec_version": "2.4"}}, receive, send)
    return sent


async def _never() -> dict:
    await asyncio.Event().wait()
    return {}


async def test_a_stream_whose_source_fails_gives_its_ticket_back() -> None:
    admission = Admission("requests", running=1, queued=0)
    ticket = admission.admit()

    async def failing() -> AsyncIterator[ServerSentEvent]:
        yield sse("1")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await _drive(EventStream(failing(), ticket), _never)
    assert ticket.released and admission.running == 0


async def test_uvicorns_exit_signal_leaves_the_stream_to_the_shutdown_middleware() -> None:
    """sse-starlette patches uvicorn's exit handler and polls the server's ``should_exit``; left
    on, it would end a stream itself with an empty body, before service/shutdown.py writes the
    stream's closing event. It is off: a stream runs on until the middleware ends it."""
    server = uvicorn.Server(uvicorn.Config(app=None))
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, server.handle_exit)  # where the library looks for the server
    gate = asyncio.Event()

    async def events() -> AsyncIterator[ServerSentEvent]:
        yield sse("first")
        await gate.wait()
        yield sse("second")

    try:
        server.handle_exit(signal.SIGTERM, None)  # as uvicorn does on SIGTERM
        assert server.should_exit and not AppStatus.should_exit
        stream = asyncio.create_task(_drive(EventStream(events()), _never))
        await asyncio.sleep(1.5)  # the library's watch polls every 0.5 s: give it its chance
        gate.set()
        sent = await asyncio.wait_for(stream, 30)
    finally:
        signal.signal(signal.SIGTERM, previous)
        AppStatus.should_exit = False
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert body == b"data: first\n\ndata: second\n\n"
