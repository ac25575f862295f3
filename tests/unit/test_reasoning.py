"""A reasoning parser (vLLM's ``--reasoning-parser``) on RSA runs: the final answer's thinking
goes to ``reasoning``, ``content`` holds the rest, streams send reasoning deltas then content
deltas, tails come from the reasoning, and usage counts the final call's reasoning tokens.

The adapter is checked against vLLM's own qwen3 parser (no engine: a tokenizer suffices); the
run and the HTTP layer over the fake engine's parser of the same contract."""

from __future__ import annotations

import httpx
import openai
import pytest

from mrsa.engine.reasoning import reasoning_parsers
from mrsa.rsa import RsaParams, RsaRun
from mrsa.rsa.events import FinalDelta
from mrsa.service.app import create_app
from mrsa.service.settings import Settings
from tests.fakes import FakeEngine, ThinkTagParser, collect

pytestmark = pytest.mark.vllm_api  # the adapter over vLLM's parsers: also run on the CUDA flavour

MESSAGES = [{"role": "user", "content": "What is 6 * 7?"}]
RSA = {"population": 3, "k": 2, "rounds": 2, "tail_tokens": 8, "trace_max_tokens": 200, "seed": 3}
THOUGHT = "<think>\nsix sevens: 7, 14, 21, 28, 35, 42\n</think>\n\nThe answer is \\boxed{42}."


@pytest.fixture(scope="module")
def qwen3():
    """vLLM's qwen3 parser behind our adapter, on the tiny ZAYA checkpoint's byte-level
    tokenizer (every think tag arrives as several tokens, the hard case for streaming)."""
    from mrsa.engine.tokenizer import HFTokenizer
    from mrsa.engine.zaya.tiny import build_tokenizer

    tokenizer = HFTokenizer(build_tokenizer())
    return tokenizer, reasoning_parsers("qwen3", tokenizer)


def test_no_parser_name_means_no_parser() -> None:
    assert reasoning_parsers(None, object())([1, 2]) is None  # type: ignore[arg-type]


def test_an_unknown_parser_fails_at_start(qwen3) -> None:
    tokenizer, _ = qwen3
    with pytest.raises(Exception, match="nope"):
        reasoning_parsers("nope", tokenizer)


@pytest.mark.parametrize("step", [1, 3, 7])
def test_vllm_parser_splits_whole_and_streamed_output_alike(qwen3, step: int) -> None:
    tokenizer, make = qwen3
    ids = tokenizer.encode(THOUGHT)
    prompt = tokenizer.encode("<start_of_turn>model\n")
    reasoning, content = make(prompt).split(THOUGHT, ids)
    assert reasoning.strip() == "six sevens: 7, 14, 21, 28, 35, 42"
    assert content.strip() == "The answer is \\boxed{42}."
    parser = make(prompt)
    pieces = [parser.delta(tokenizer.decode(ids[i:i + step]), ids[i:i + step], finished=i + step >= len(ids))
              for i in range(0, len(ids), step)]
    assert "".join(r for r, _ in pieces) == reasoning
    assert "".join(c for _, c in pieces) == content
    assert 0 < make(prompt).reasoning_tokens(ids) < len(ids)


def test_output_without_a_closing_tag_is_all_thinking_for_qwen3(qwen3) -> None:
    """What the tiny ZAYA model's random bytes give on the end-to-end test (tests/zaya)."""
    tokenizer, make = qwen3
    text = "no tags here, 12"
    assert make([]).split(text, tokenizer.encode(text)) == (text, None)


async def run(engine: FakeEngine, **rsa: object):
    return await collect(RsaRun(engine, MESSAGES, RsaParams(**{**RSA, **rsa}), run_id="run"))


@pytest.mark.parametrize("selection", ["aggregate", "majority"])
async def test_the_final_answer_is_split_and_streamed_in_its_parts(selection: str) -> None:
    engine = FakeEngine(think=True, reasoning=True, length=10)
    events, result = await run(engine, selection=selection, return_trace=True)
    final_text = result.trace[-1].text if selection == "aggregate" else None
    pieces = [e for e in events if isinstance(e, FinalDelta)]
    reasoning = "".join(p.text for p in pieces if p.reasoning)
    content = "".join(p.text for p in pieces if not p.reasoning)
    assert result.reasoning == reasoning and reasoning.strip() and "think>" not in reasoning
    assert result.content == content == "\nThe answer is \\boxed{42}."
    assert result.answer == "42"
    first_content = next(i for i, p in enumerate(pieces) if not p.reasoning)
    assert all(p.reasoning for p in pieces[:first_content])  # thinking first, then the answer
    if final_text is not None:
        assert final_text == f"<think>{reasoning}</think>{content}"  # the record keeps the raw text


async def test_usage_counts_the_final_calls_reasoning_tokens() -> None:
    engine = FakeEngine(think=True, reasoning=True, length=10)
    _, result = await run(engine, selection="aggregate")
    final = result.trace[-1]
    parser = ThinkTagParser(engine.tokenizer)
    final_ids = engine.tokenizer.encode(final.text)
    assert 0 < final.reasoning_tokens == parser.reasoning_tokens(final_ids) < final.completion_tokens
    traces = sum(r.completion_tokens for r in result.trace if r.kind == "trace")
    assert result.usage.reasoning_tokens == traces + final.reasoning_tokens


async def test_tails_come_from_what_the_parser_calls_reasoning() -> None:
    """The parser decides, not the tags: a parser that sees no reasoning leaves the whole
    trace (answer included) to the tail."""

    class NoReasoning(ThinkTagParser):
        def split(self, text, token_ids):  # type: ignore[no-untyped-def]
            return None, text

    engine = FakeEngine(think=True, reasoning=True, length=3)
    _, with_parser = await run(engine, rounds=1, tail_tokens=400, selection="majority", return_trace=True)
    assert all("boxed" not in r.tail_text and r.tail_text.strip() for r in with_parser.trace if r.kind == "trace")
    engine = FakeEngine(think=True, length=3)
    engine.reasoning_parser = lambda prompt_ids: NoReasoning(engine.tokenizer)  # type: ignore[method-assign]
    _, without = await run(engine, rounds=1, tail_tokens=400, selection="majority", return_trace=True)
    assert all("boxed{42}" in r.tail_text for r in without.trace if r.kind == "trace")


async def test_no_parser_leaves_the_answer_whole() -> None:
    _, result = await run(FakeEngine(think=True, length=4), selection="aggregate", return_trace=True)
    assert result.reasoning is None and result.content == result.trace[-1].text
    assert "</think>" in result.content


@pytest.fixture
async def client():
    engine = FakeEngine(think=True, reasoning=True, length=10)
    app = create_app(Settings(), engine_factory=lambda _: engine)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            yield openai.AsyncOpenAI(base_url="http://test/v1", api_key="x", http_client=http, max_retries=0)


async def test_chat_answers_in_reasoning_and_content_as_vllm_does(client) -> None:
    rsa = {**RSA, "selection": "aggregate", "return_trace": True}
    out = await client.chat.completions.create(model="fake-model", messages=MESSAGES, extra_body={"rsa": rsa})
    message = out.choices[0].message
    raw = out.model_extra["rsa"]["trace"][-1]["text"]
    assert raw == f"<think>{message.model_extra['reasoning']}</think>{message.content}"
    assert message.content == "\nThe answer is \\boxed{42}."

    stream = await client.chat.completions.create(model="fake-model", messages=MESSAGES, stream=True,
                                                  extra_body={"rsa": rsa})
    deltas = [c.choices[0].delta for c in [c async for c in stream] if c.choices]
    reasoning = "".join((d.model_extra or {}).get("reasoning") or "" for d in deltas)
    content = "".join(d.content or "" for d in deltas)
    assert (reasoning, content) == (message.model_extra["reasoning"], message.content)  # same seed, same run
    first = next(i for i, d in enumerate(deltas) if d.content)
    assert not any((d.model_extra or {}).get("reasoning") for d in deltas[first:])

    hidden = await client.chat.completions.create(model="fake-model", messages=MESSAGES,
                                                  extra_body={"rsa": rsa, "include_reasoning": False})
    assert hidden.choices[0].message.model_extra["reasoning"] is None
    assert hidden.choices[0].message.content == message.content


async def test_responses_put_the_reasoning_in_the_reasoning_item(client) -> None:
    rsa = {**RSA, "selection": "aggregate"}
    out = await client.responses.create(model="fake-model", input="What is 6 * 7?", extra_body={"rsa": rsa})
    assert [item.type for item in out.output] == ["reasoning", "message"]
    assert out.output_text.strip() == "The answer is \\boxed{42}."
    stream = await client.responses.create(model="fake-model", input="What is 6 * 7?", stream=True,
                                           extra_body={"rsa": rsa})
    events = [e async for e in stream]
    summary = "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta")
    assert summary == out.output[0].summary[0].text and "think>" not in summary
    assert events[-1].response.output_text == out.output_text


class SplitAtAnswer(ThinkTagParser):
    """A parser whose model thinks without tags: everything before "The answer" is thinking."""

    @staticmethod
    def _split(text: str) -> tuple[str | None, str | None]:
        head, sep, tail = text.partition("The answer")
        return (head, sep + tail) if sep else (text, None)


@pytest.mark.parametrize("rsa", [None, {**RSA, "selection": "aggregate"}], ids=["plain", "rsa"])
async def test_responses_follow_the_parser_not_the_tags(rsa: dict | None) -> None:
    engine = FakeEngine(length=6)  # no think tags in any output
    engine.reasoning_parser = lambda prompt_ids: SplitAtAnswer(engine.tokenizer)  # type: ignore[method-assign]
    app = create_app(Settings(), engine_factory=lambda _: engine)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            client = openai.AsyncOpenAI(base_url="http://test/v1", api_key="x", http_client=http, max_retries=0)
            extra = {"rsa": rsa} if rsa else {}
            out = await client.responses.create(model="fake-model", input="What is 6 * 7?", extra_body=extra)
            stream = await client.responses.create(model="fake-model", input="What is 6 * 7?", stream=True,
                                                   extra_body=extra)
            events = [e async for e in stream]
    assert [item.type for item in out.output] == ["reasoning", "message"]
    assert out.output_text == "The answer is \\boxed{42}."
    thought = out.output[0].summary[0].text
    assert thought.strip() and "answer" not in thought
    assert "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta") == thought
    assert events[-1].response.output_text == out.output_text
