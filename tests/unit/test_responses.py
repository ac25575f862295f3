"""``/v1/responses`` over the fake engine, through the real openai SDK: plain and RSA responses,
usage, streams, stored responses and continuations, keys. Background runs and retention:
test_responses_background.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import openai
import pytest

from mrsa.service.app import create_app
from mrsa.service.settings import Settings
from tests.fakes import FakeEngine

RSA = {"population": 4, "k": 2, "rounds": 2, "tail_tokens": 16, "trace_max_tokens": 64, "seed": 5}


def client_of(http: httpx.AsyncClient, key: str = "x") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url="http://test/v1", api_key=key, http_client=http, max_retries=0)


@pytest.fixture
async def engine_and_client() -> AsyncIterator[tuple[FakeEngine, openai.AsyncOpenAI]]:
    engine = FakeEngine(answer=lambda r: str((r.params.seed or 0) % 3))
    app = create_app(Settings(), engine_factory=lambda _: engine)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            yield engine, client_of(http)


async def test_plain_response_is_one_generation(engine_and_client) -> None:
    engine, client = engine_and_client
    out = await client.responses.create(model="fake-model", input="What is 6 * 7?", instructions="Be brief.",
                                        max_output_tokens=200, temperature=0.5)
    assert len(engine.requests) == 1
    request = engine.requests[0]
    assert "<|system|>\nBe brief." in request.prompt and "What is 6 * 7?" in request.prompt
    assert request.params.max_tokens == 200 and request.params.temperature == 0.5
    assert out.object == "response" and out.status == "completed" and out.id.startswith("resp_")
    assert out.output_text == request.text
    assert [item.type for item in out.output] == ["message"]
    assert out.usage.input_tokens == len(request.prompt_ids)
    assert out.usage.output_tokens == request.completion_tokens > 0
    assert out.usage.output_tokens_details.reasoning_tokens == 0
    assert out.usage.total_tokens == out.usage.input_tokens + out.usage.output_tokens
    assert out.instructions == "Be brief." and out.temperature == 0.5 and out.max_output_tokens == 200


async def test_reasoning_effort_runs_its_preset(engine_and_client) -> None:
    engine, client = engine_and_client
    out = await client.responses.create(model="fake-model", input="What is 6 * 7?", reasoning={"effort": "low"})
    low = Settings().rsa_params(Settings().effort_presets["low"])
    # population 2 for `rounds` rounds, then (auto selection) a final aggregation or vote
    assert len(engine.requests) >= low.population * low.rounds
    assert out.status == "completed" and out.reasoning.effort == "low"
    assert out.usage.output_tokens == engine.completion_tokens
    final = engine.requests[-1]
    traces = sum(r.completion_tokens for r in engine.requests[: low.population * low.rounds])
    assert out.usage.output_tokens_details.reasoning_tokens == traces
    if len(engine.requests) > low.population * low.rounds:  # an aggregation answered
        assert out.output_text == final.text


async def test_rsa_object_and_messages_as_input(engine_and_client) -> None:
    engine, client = engine_and_client
    out = await client.responses.create(
        model="fake-model",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "What is 6 * 7?"}]}],
        extra_body={"rsa": {**RSA, "selection": "aggregate"}},
    )
    assert len(engine.requests) == 4 * 2 + 1
    assert out.output_text == engine.requests[-1].text
    assert out.usage.output_tokens == engine.completion_tokens
    assert out.usage.input_tokens == sum(len(r.prompt_ids) for r in engine.requests)


async def test_a_think_block_is_the_reasoning_item() -> None:
    engine = FakeEngine(think=True)
    app = create_app(Settings(), engine_factory=lambda _: engine)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            client = client_of(http)
            out = await client.responses.create(model="fake-model", input="What is 6 * 7?")
            stream = await client.responses.create(model="fake-model", input="What is 6 * 7?", stream=True)
            events = [event async for event in stream]
    assert [item.type for item in out.output] == ["reasoning", "message"]
    assert out.output_text == "The answer is \\boxed{42}."
    assert "<think>" not in out.output_text and out.output[0].summary[0].text.strip()
    summary = "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta")
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert summary == final.output[0].summary[0].text and text == final.output_text == out.output_text


async def test_the_stream_is_parsed_by_the_sdk(engine_and_client) -> None:
    _, client = engine_and_client
    stream = await client.responses.create(
        model="fake-model", input="What is 6 * 7?", stream=True, extra_body={"rsa": {**RSA, "selection": "aggregate"}})
    events = [event async for event in stream]
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    progress = [e.rsa["event"] for e in events if e.type == "rsa.progress"]
    assert progress.count("node_finished") == 8 and progress.count("round_completed") == 2
    assert "final_started" in progress
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert text == final.output_text and final.usage.output_tokens > 0
    for kind in ("response.output_item.added", "response.content_part.added", "response.output_text.done",
                 "response.content_part.done", "response.output_item.done"):
        assert kind in types


async def test_the_sdk_stream_helper_accumulates_the_response(engine_and_client) -> None:
    _, client = engine_and_client
    async with client.responses.stream(model="fake-model", input="What is 6 * 7?",
                                       extra_body={"rsa": {**RSA, "selection": "aggregate"}}) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert "rsa.progress" in kinds and final.status == "completed" and "\\boxed{" in final.output_text


async def test_stored_response_is_retrieved_and_continued(engine_and_client) -> None:
    engine, client = engine_and_client
    first = await client.responses.create(model="fake-model", input="What is 6 * 7?", metadata={"k": "v"})
    again = await client.responses.retrieve(first.id)
    assert again.model_dump() == first.model_dump() and again.metadata == {"k": "v"}
    second = await client.responses.create(model="fake-model", input="And 7 * 8?", previous_response_id=first.id)
    prompt = engine.requests[-1].prompt
    assert "What is 6 * 7?" in prompt and first.output_text in prompt and prompt.index("And 7 * 8?") > prompt.index(
        first.output_text)
    assert second.previous_response_id == first.id
    items = await client.responses.input_items.list(second.id, order="asc")
    assert [(i.role, i.content[0].text) for i in items.data] == [
        ("user", "What is 6 * 7?"), ("assistant", first.output_text), ("user", "And 7 * 8?")]
    newest = await client.responses.input_items.list(second.id, limit=1)
    assert [i.content[0].text for i in newest.data] == ["And 7 * 8?"] and newest.has_more
    replayed = await client.responses.retrieve(first.id, stream=True)
    events = [e async for e in replayed]
    assert events[-1].type == "response.completed" and events[-1].response.output_text == first.output_text
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == first.output_text
    await client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError) as gone:
        await client.responses.retrieve(first.id)
    assert gone.value.body["code"] == "response_not_found"


async def test_store_false_keeps_nothing(engine_and_client) -> None:
    _, client = engine_and_client
    out = await client.responses.create(model="fake-model", input="What is 6 * 7?", store=False)
    assert out.status == "completed" and out.store is False
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(out.id)
    with pytest.raises(openai.NotFoundError) as missing:
        await client.responses.create(model="fake-model", input="Go on", previous_response_id=out.id)
    assert missing.value.body["param"] == "previous_response_id"


async def test_fields_that_ask_for_nothing_are_accepted(engine_and_client) -> None:
    _, client = engine_and_client
    out = await client.responses.create(model="fake-model", input="What is 6 * 7?", tools=[], tool_choice="auto",
                                        text={"format": {"type": "text"}}, truncation="disabled", user="u1")
    assert out.status == "completed"


async def test_max_output_tokens_cut_is_incomplete(engine_and_client) -> None:
    _, client = engine_and_client
    out = await client.responses.create(model="fake-model", input="What is 6 * 7?", max_output_tokens=3)
    assert out.status == "incomplete" and out.incomplete_details.reason == "max_output_tokens"
    assert out.usage.output_tokens == 3


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "other", "input": "hi"}, 404, "model"),
        ({"model": "fake-model", "input": "hi", "rsa": {"rounds": 999}}, 400, "rsa.rounds"),
        ({"model": "fake-model", "input": "hi", "reasoning": {"effort": "huge"}}, 400, "reasoning.effort"),
        ({"model": "fake-model", "input": "hi", "background": True, "store": False}, 400, "store"),
        ({"model": "fake-model", "input": []}, 400, "input"),
        ({"model": "fake-model", "input": [{"role": "wizard", "content": "hi"}]}, 400, "input.0.role"),
        ({"model": "fake-model", "input": "hi", "max_output_tokens": 10**6}, 400, "messages"),
        ({"model": "fake-model", "input": "hi", "previous_response_id": "resp_nope"}, 404, "previous_response_id"),
        ({"model": "fake-model", "input": "hi", "tools": [{"type": "web_search"}]}, 400, "tools"),
        ({"model": "fake-model", "input": "hi", "text": {"format": {"type": "json_object"}}}, 400, "text"),
    ],
)
async def test_bad_input_gets_the_envelope(engine_and_client, body: dict, status: int, param: str) -> None:
    engine, client = engine_and_client
    response = await client._client.post("http://test/v1/responses", json=body)
    assert response.status_code == status, response.text
    err = response.json()["error"]
    assert err["param"] == param and err["message"]
    assert engine.requests == []


async def test_a_response_is_visible_only_to_its_key() -> None:
    engine = FakeEngine()
    app = create_app(Settings(api_keys="alice,bob"), engine_factory=lambda _: engine)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            alice, bob = client_of(http, "alice"), client_of(http, "bob")
            out = await alice.responses.create(model="fake-model", input="What is 6 * 7?")
            assert (await alice.responses.retrieve(out.id)).id == out.id
            for call in (bob.responses.retrieve(out.id), bob.responses.delete(out.id),
                         bob.responses.create(model="fake-model", input="more", previous_response_id=out.id)):
                with pytest.raises(openai.NotFoundError):
                    await call
            assert (await alice.responses.retrieve(out.id)).id == out.id
