"""reasoning_effort selects the compute: none/minimal are plain, low..xhigh RSA presets, and an
explicit rsa object wins over the preset field by field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mrsa.service.settings import EFFORT_PRESETS, Settings
from tests.fakes import FakeEngine
from tests.serving import QUESTION, serving

BODY = {"model": "fake-model", "messages": QUESTION, "max_tokens": 16}


async def _rsa_block(effort: str | None, rsa: dict | None = None, **settings: object) -> dict | None:
    async with serving(FakeEngine(), **settings) as http:
        body = {**BODY, **({"reasoning_effort": effort} if effort else {}), **({"rsa": rsa} if rsa is not None else {})}
        r = await http.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        return r.json().get("rsa")


@pytest.mark.parametrize("effort", ["none", "minimal", None])
async def test_no_effort_and_the_lowest_efforts_are_plain(effort: str | None) -> None:
    assert await _rsa_block(effort) is None


@pytest.mark.parametrize("effort", ["low", "medium", "high"])
async def test_each_effort_runs_its_preset(effort: str) -> None:
    block = await _rsa_block(effort, limits={"max_population": 16})
    expected = {**Settings().rsa.model_dump(), **EFFORT_PRESETS[effort]}
    assert block is not None and block["rounds_completed"] == expected["rounds"]
    assert block["calls"] == expected["population"] * expected["rounds"] + (block["final_mode"] == "aggregate")


async def test_the_rsa_object_wins_field_by_field() -> None:
    block = await _rsa_block("high", {"rounds": 1})  # high: population 8, rounds 3
    assert block["rounds_completed"] == 1 and block["calls"] == 8 + (block["final_mode"] == "aggregate")


async def test_an_rsa_object_with_effort_none_is_still_rsa() -> None:
    block = await _rsa_block("none", {"population": 2, "rounds": 1})
    assert block is not None and block["calls"] == 2 + (block["final_mode"] == "aggregate")


async def test_the_server_default_effort_applies_when_the_client_sends_none() -> None:
    assert (await _rsa_block(None, default_effort="low"))["calls"] >= 4
    assert await _rsa_block("none", default_effort="low") is None


async def test_a_preset_over_the_limits_is_a_400_that_names_the_field() -> None:
    async with serving(FakeEngine(), limits={"max_population": 8}) as http:
        r = await http.post("/v1/chat/completions", json={**BODY, "reasoning_effort": "xhigh"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "rsa.population"


async def test_an_unknown_effort_is_a_400() -> None:
    async with serving(FakeEngine()) as http:
        r = await http.post("/v1/chat/completions", json={**BODY, "reasoning_effort": "extreme"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "reasoning_effort"


async def test_background_runs_take_the_preset_too() -> None:
    async with serving(FakeEngine()) as http:
        r = await http.post("/v1/rsa/runs", json={**BODY, "reasoning_effort": "low"})
    assert r.status_code == 202 and r.json()["progress"]["nodes_total"] == 2 * 2


def test_a_bad_preset_stops_the_server_at_start() -> None:
    with pytest.raises(ValidationError, match="population"):
        Settings(effort_presets={"low": {"population": 0}})
    with pytest.raises(ValidationError, match="selection"):
        Settings(effort_presets={"high": {"selection": "bogus"}})
    with pytest.raises(ValidationError, match="seed"):
        Settings(effort_presets={"low": {"seed": 1}})


async def test_models_lists_the_efforts_it_runs_as_rsa() -> None:
    async with serving(FakeEngine()) as http:
        (card,) = (await http.get("/v1/models")).json()["data"]
    assert card["reasoning_efforts"] == ["low", "medium", "high", "xhigh", "auto"]


async def test_rsa_usage_reports_cached_prompt_tokens() -> None:
    """usage.prompt_tokens_details.cached_tokens: the run's prefix-cache hits, as OpenAI bills them."""
    async with serving(FakeEngine()) as http:
        r = await http.post("/v1/chat/completions", json={**BODY, "rsa": {"population": 4, "rounds": 2, "seed": 1}})
    usage = r.json()["usage"]
    assert 0 < usage["prompt_tokens_details"]["cached_tokens"] < usage["prompt_tokens"]
