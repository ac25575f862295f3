"""Background responses are durable runs: polled, cancelled, replayed with ``starting_after``
(no gap, no duplicate, also after a restart), resumed after a restart with the usage of the work
before it; retention (TTL, DELETE) and the store's size under a soak. The real openai SDK over
the fake engine."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from types import SimpleNamespace

import httpx
import openai
import pytest

from mrsa.service.app import create_app
from mrsa.service.runs import manager as manager_module
from mrsa.service.runs import store as store_module
from mrsa.service.responses import stored
from mrsa.service.settings import Settings
from tests.fakes import FakeEngine

RSA = {"population": 4, "k": 2, "rounds": 3, "tail_tokens": 16, "trace_max_tokens": 48, "seed": 5,
       "selection": "aggregate"}
QUESTION = "What is 6 * 7?"


def _engine(delay: float = 0.0) -> FakeEngine:
    return FakeEngine(answer=lambda r: str((r.params.seed or 0) % 3), delay=delay)


@asynccontextmanager
async def serving(engine: FakeEngine, key: str = "x", **settings: object) -> AsyncIterator[openai.AsyncOpenAI]:
    app = create_app(Settings(**settings), engine_factory=lambda _: engine)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            yield openai.AsyncOpenAI(base_url="http://test/v1", api_key=key, http_client=http, max_retries=0)


async def until(client: openai.AsyncOpenAI, resp_id: str, statuses: set[str], in_flight: FakeEngine | None = None):
    for _ in range(4000):
        response = await client.responses.retrieve(resp_id)
        if response.status in statuses or (in_flight is not None and in_flight.num_in_flight() > 0):
            return response
        await asyncio.sleep(0.005)
    raise AssertionError(f"response stuck: {response.status}")


async def _events(client: openai.AsyncOpenAI, resp_id: str, after: int | None = None) -> list:
    kw = {} if after is None else {"starting_after": after}
    stream = await client.responses.retrieve(resp_id, stream=True, **kw)
    return [event async for event in stream]


async def test_background_returns_queued_then_completes() -> None:
    engine = _engine()
    async with serving(engine) as client:
        queued = await client.responses.create(model="fake-model", input=QUESTION, background=True,
                                               extra_body={"rsa": RSA})
        assert queued.status in ("queued", "in_progress") and queued.background and queued.output == []
        done = await until(client, queued.id, {"completed"})
        direct = await client.responses.create(model="fake-model", input=QUESTION, extra_body={"rsa": RSA})
    assert done.output_text == direct.output_text and "\\boxed{" in done.output_text
    assert done.usage.output_tokens == direct.usage.output_tokens > 0
    assert done.usage.output_tokens_details.reasoning_tokens == direct.usage.output_tokens_details.reasoning_tokens


async def test_a_plain_background_response() -> None:
    engine = _engine()
    async with serving(engine) as client:
        queued = await client.responses.create(model="fake-model", input=QUESTION, background=True)
        done = await until(client, queued.id, {"completed"})
    assert len(engine.requests) == 1 and done.output_text == engine.requests[0].text
    assert done.usage.output_tokens == engine.requests[0].completion_tokens
    assert done.usage.output_tokens_details.reasoning_tokens == 0


async def test_cancel_aborts_the_engine_requests_before_answering() -> None:
    engine = _engine(delay=0.05)
    async with serving(engine) as client:
        queued = await client.responses.create(model="fake-model", input=QUESTION, background=True,
                                               extra_body={"rsa": RSA})
        await until(client, queued.id, set(), in_flight=engine)
        cancelled = await client.responses.cancel(queued.id)
        assert cancelled.status == "cancelled" and engine.num_in_flight() == 0
        assert all(r.finish_reason == "abort" for r in engine.requests)
        assert (await client.responses.cancel(queued.id)).status == "cancelled"  # idempotent
        events = await _events(client, queued.id)
        assert events[-1].type == "response.cancelled" and events[-1].response["status"] == "cancelled"
        plain = await client.responses.create(model="fake-model", input=QUESTION)
        with pytest.raises(openai.BadRequestError):
            await client.responses.cancel(plain.id)


async def test_starting_after_replays_exactly_the_events_after_it() -> None:
    engine = _engine(delay=0.002)
    async with serving(engine) as client:
        stream = await client.responses.create(model="fake-model", input=QUESTION, background=True, stream=True,
                                               extra_body={"rsa": RSA})
        seen = []
        async for event in stream:  # a client that drops its stream half-way
            seen.append(event)
            if len(seen) == 7:
                break
        await stream.close()
        resumed = await _events(client, seen[0].response.id, after=seen[-1].sequence_number)
        whole = await _events(client, seen[0].response.id)
    numbers = [e.sequence_number for e in seen + resumed]
    assert numbers == list(range(len(numbers)))  # no gap, no duplicate
    assert [e.model_dump() for e in seen + resumed] == [e.model_dump() for e in whole]
    types = [e.type for e in whole]
    assert types[0] == "response.created" and "response.in_progress" in types and types[-1] == "response.completed"
    assert "rsa.progress" in types
    text = "".join(e.delta for e in whole if e.type == "response.output_text.delta")
    assert text == whole[-1].response.output_text


async def test_a_restart_resumes_the_response_and_its_stream(tmp_path: Path) -> None:
    db = tmp_path / "runs.sqlite3"
    async with serving(_engine()) as client:  # the uninterrupted reference
        ref = await until(client, (await client.responses.create(
            model="fake-model", input=QUESTION, background=True, extra_body={"rsa": RSA})).id, {"completed"})

    # The first server finishes 5 traces, then its engine hangs: it stops with the run half done.
    first = _engine(delay=lambda r: 0.0 if r.order < 5 else 60.0)
    app = create_app(Settings(store_path=db), engine_factory=lambda _: first)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            client = openai.AsyncOpenAI(base_url="http://test/v1", api_key="x", http_client=http, max_retries=0)
            queued = await client.responses.create(model="fake-model", input=QUESTION, background=True,
                                                   extra_body={"rsa": RSA})
            while (await http.get(f"/v1/rsa/runs/{queued.id}")).json()["progress"]["nodes_finished"] < 5:
                await asyncio.sleep(0.005)  # the same store: a response is a run
            before = await _logged_so_far(app, queued.id)
    assert [e["sequence_number"] for e in before] == list(range(len(before))) and len(before) > 5

    second = _engine()
    async with serving(second, store_path=db) as client:
        done = await until(client, queued.id, {"completed"})
        after = await _events(client, queued.id, after=before[-1]["sequence_number"])
        whole = await _events(client, queued.id)
    assert len(second.requests) <= 13 - 5  # only unfinished nodes and the final call are redone
    assert done.output_text == ref.output_text
    assert done.usage.output_tokens == ref.usage.output_tokens  # the work before the restart counts
    assert [e.to_dict() for e in whole[: len(before)]] == before  # the same numbers after the restart
    assert [e.model_dump() for e in whole[len(before):]] == [e.model_dump() for e in after]
    assert "run_resumed" in [e.rsa["event"] for e in after if e.type == "rsa.progress"]


async def _logged_so_far(app, resp_id: str) -> list[dict]:
    """The Responses events of what the run logged so far (until the stream falls quiet)."""
    runs = app.state.runs
    _, data = await runs.get_response("", resp_id)
    out = []
    async with aclosing(stored.replay(runs, "", resp_id, data, -1, heartbeat_s=0.2)) as events:
        async for event in events:
            if event is None:
                return out
            out.append(event)
    return out


@pytest.fixture
def later(monkeypatch: pytest.MonkeyPatch):
    """``later(s)`` moves the clock of the run store and manager ``s`` seconds ahead."""
    shift = [0.0]
    clock = SimpleNamespace(time=lambda: time.time() + shift[0])
    monkeypatch.setattr(manager_module, "time", clock)
    monkeypatch.setattr(store_module, "time", clock)

    def advance(seconds: float) -> None:
        shift[0] += seconds

    return advance


async def test_expired_and_deleted_responses_are_404(later) -> None:
    async with serving(_engine(), store_ttl_s=3600) as client:
        kept = await client.responses.create(model="fake-model", input=QUESTION)
        background = await client.responses.create(model="fake-model", input=QUESTION, background=True)
        await until(client, background.id, {"completed"})
        deleted = await client.responses.create(model="fake-model", input=QUESTION)
        await client.responses.delete(deleted.id)
        with pytest.raises(openai.NotFoundError):
            await client.responses.delete(deleted.id)
        later(3601)
        for resp_id in (kept.id, background.id, deleted.id):
            with pytest.raises(openai.NotFoundError) as gone:
                await client.responses.retrieve(resp_id)
            assert gone.value.body["code"] == "response_not_found"
        with pytest.raises(openai.NotFoundError):
            await client.responses.create(model="fake-model", input="more", previous_response_id=kept.id)


async def test_a_foreign_key_sees_no_background_response() -> None:
    engine = _engine(delay=0.02)
    app = create_app(Settings(api_keys="alice,bob"), engine_factory=lambda _: engine)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            alice, bob = (openai.AsyncOpenAI(base_url="http://test/v1", api_key=k, http_client=http, max_retries=0)
                          for k in ("alice", "bob"))
            queued = await alice.responses.create(model="fake-model", input=QUESTION, background=True,
                                                  extra_body={"rsa": RSA})
            for call in (bob.responses.retrieve(queued.id), bob.responses.cancel(queued.id),
                         bob.responses.retrieve(queued.id, stream=True), bob.responses.delete(queued.id)):
                with pytest.raises(openai.NotFoundError) as foreign:
                    await call
                assert foreign.value.body["code"] == "response_not_found"
            assert (await alice.responses.cancel(queued.id)).status == "cancelled"


async def test_the_store_file_stays_bounded_under_a_soak(tmp_path: Path, later) -> None:
    db = tmp_path / "runs.sqlite3"
    sizes = []
    async with serving(_engine(), store_path=db, store_ttl_s=3600) as client:
        for _ in range(4):
            for _ in range(6):
                queued = await client.responses.create(model="fake-model", input=QUESTION * 20, background=True,
                                                       extra_body={"rsa": {**RSA, "rounds": 2}})
                await until(client, queued.id, {"completed"})
                await client.responses.create(model="fake-model", input=QUESTION * 20)
            later(3601)  # everything so far expires; the next writes remove it
            await client.responses.create(model="fake-model", input=QUESTION)
            sizes.append(db.stat().st_size)
    with sqlite3.connect(db) as check:
        kept = check.execute("SELECT (SELECT COUNT(*) FROM runs), (SELECT COUNT(*) FROM responses)").fetchone()
    assert kept == (0, 1)  # only the last, unexpired response is left
    # freed pages are reused: after the first batches the file does not grow with the work done
    assert max(sizes[2:]) <= sizes[1] * 1.5, sizes
