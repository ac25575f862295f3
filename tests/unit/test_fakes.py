"""The fake engine honours the engine contract the runner and the service rely on."""

from __future__ import annotations

import asyncio

import pytest

from mrsa.engine.base import Completion, Engine, EngineError, SamplingParams, Tokenizer
from tests.fakes import FakeEngine, FakeTokenizer


def test_fakes_satisfy_the_protocols() -> None:
    assert isinstance(FakeEngine(), Engine) and isinstance(FakeTokenizer(), Tokenizer)


def test_tokenizer_round_trips_any_text() -> None:
    tok = FakeTokenizer()
    text = "<|user|>\nx² = 4?  <think>so</think>\t\\boxed{2}\n"
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode("a b") == tok.encode("a b") and tok.decode([0]) == ""


async def _complete(engine: FakeEngine, params: SamplingParams, rid: str = "r") -> Completion:
    out = Completion()
    async for delta in engine.generate(engine.tokenizer.encode("question"), params, rid):
        out.add(delta)
    return out


@pytest.mark.asyncio
async def test_output_depends_on_prompt_and_seed_and_honours_max_tokens() -> None:
    engine = FakeEngine(answer="7", length=20)
    a = await _complete(engine, SamplingParams(max_tokens=500, seed=1))
    b = await _complete(engine, SamplingParams(max_tokens=500, seed=1))
    c = await _complete(engine, SamplingParams(max_tokens=500, seed=2))
    assert a.text == b.text != c.text and a.text.endswith("\\boxed{7}.")
    assert a.finish_reason == "stop" and a.prompt_tokens == 1
    cut = await _complete(engine, SamplingParams(max_tokens=5, seed=1))
    assert len(cut.token_ids) == 5 and cut.finish_reason == "length" and a.text.startswith(cut.text)
    padded = await _complete(engine, SamplingParams(max_tokens=300, seed=1, ignore_eos=True))
    assert len(padded.token_ids) == 300 and padded.finish_reason == "length"
    with pytest.raises(EngineError):
        await _complete(FakeEngine(max_model_len=10), SamplingParams(max_tokens=10))


@pytest.mark.asyncio
async def test_abort_ends_the_stream_and_closing_counts_as_abort() -> None:
    engine = FakeEngine(delay=0.001, length=200, tokens_per_delta=1)
    task = asyncio.create_task(_complete(engine, SamplingParams(max_tokens=400), "x"))
    await asyncio.sleep(0.02)
    assert engine.num_in_flight() == 1
    await engine.abort("x")
    out = await task
    assert out.finish_reason == "abort" and engine.num_in_flight() == 0
    stream = engine.generate([1], SamplingParams(max_tokens=400), "y")
    await stream.__anext__()
    assert engine.num_in_flight() == 1
    await stream.aclose()
    assert engine.num_in_flight() == 0 and engine.by_id("y").aborted


@pytest.mark.asyncio
async def test_async_with_closes_the_engine_once_and_for_all() -> None:
    async with FakeEngine() as engine:
        assert not engine.closed
        out = await _complete(engine, SamplingParams(max_tokens=5, seed=1))
        assert out.finish_reason == "length"
    assert engine.closed
    await engine.aclose()  # idempotent
    with pytest.raises(EngineError):
        await _complete(engine, SamplingParams(max_tokens=5))
