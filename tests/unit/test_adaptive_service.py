"""The adaptive methods through the service: the rsa block, stream and background run say which
method ran and why it stopped; Responses streams say it too; preset files map reasoning_effort."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from mrsa.service import presets as presets_module
from mrsa.service.presets import PresetFile
from mrsa.service.settings import Settings
from tests.fakes import FakeEngine
from tests.serving import QUESTION, serving, submit, wait_status

VOTE = {"method": "adaptive_vote", "population": 4, "wave": 4, "max_population": 12, "seed": 3,
        "trace_max_tokens": 64, "tail_tokens": 16}
BODY = {"model": "fake-model", "messages": QUESTION}


async def test_a_completion_says_which_method_ran_and_why_it_stopped() -> None:
    async with serving(FakeEngine(answer="42")) as http:
        r = await http.post("/v1/chat/completions", json={**BODY, "rsa": VOTE})
    assert r.status_code == 200, r.text
    block = r.json()["rsa"]
    assert (block["method"], block["stop_reason"], block["samples"], block["calls"]) == ("adaptive_vote", "settled", 4, 4)


async def test_a_stream_announces_the_method_and_ends_with_the_stop_reason() -> None:
    engine = FakeEngine(answer=lambda r: str(int(r.request_id.rsplit("-i", 1)[1]) % 2))
    async with serving(engine) as http:
        async with http.stream("POST", "/v1/chat/completions", json={**BODY, "rsa": VOTE, "stream": True}) as s:
            chunks = [json.loads(line[6:]) async for line in s.aiter_lines()
                      if line.startswith("data: ") and line != "data: [DONE]"]
    started = chunks[0]["rsa"]
    assert started["event"] == "run_started" and (started["method"], started["rounds"]) == ("adaptive_vote", 1)
    (summary,) = [c["rsa"] for c in chunks if c.get("rsa", {}).get("event") == "run_completed"]
    assert summary["stop_reason"] == "max_population" and summary["samples"] == 12


async def test_a_background_run_reports_the_method_and_its_largest_size() -> None:
    async with serving(FakeEngine(answer="42")) as http:
        run = await submit(http, VOTE)
        assert run["progress"]["nodes_total"] == 12 and run["progress"]["rounds"] == 1
        done = await wait_status(http, run["id"], {"completed", "failed"})
    assert done["result"]["rsa"]["method"] == "adaptive_vote"
    assert done["result"]["rsa"]["stop_reason"] == "settled"


async def test_a_responses_stream_carries_the_run_summary() -> None:
    async with serving(FakeEngine(answer="42")) as http:
        body = {"model": "fake-model", "input": "What is 6 * 7?", "stream": True, "rsa": VOTE}
        async with http.stream("POST", "/v1/responses", json=body) as s:
            events = [json.loads(line[6:]) async for line in s.aiter_lines() if line.startswith("data: ")]
    summaries = [e["rsa"] for e in events if e.get("type") == "rsa.progress" and e["rsa"]["event"] == "run_completed"]
    assert [(s["method"], s["stop_reason"]) for s in summaries] == [("adaptive_vote", "settled")]


@pytest.mark.parametrize(
    ("rsa", "param"),
    [({"population": 4, "max_population": 2}, "rsa.max_population"), ({"method": "vote"}, "rsa.method"),
     ({"method": "adaptive_vote", "max_population": 128}, "rsa.max_population"),
     ({"stop_threshold": 1.5}, "rsa.stop_threshold"), ({"stop_rule": "unanimity"}, "rsa.stop_rule")],
)
async def test_bad_adaptive_fields_are_400s_that_name_them(rsa: dict, param: str) -> None:
    async with serving(FakeEngine()) as http:
        r = await http.post("/v1/chat/completions", json={**BODY, "rsa": rsa})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


# ------------------------------------------------------------------------ presets


def _file(tmp_path: Path, model: str, efforts: dict) -> Path:
    path = tmp_path / f"{model}.json"
    PresetFile(model=model, measured={"problems": 150}, efforts=efforts).dump(path)
    return path


async def _block(http: httpx.AsyncClient, effort: str) -> dict:
    r = await http.post("/v1/chat/completions", json={**BODY, "reasoning_effort": effort})
    assert r.status_code == 200, r.text
    return r.json()["rsa"]


async def test_a_preset_file_maps_the_efforts_it_names(tmp_path: Path) -> None:
    path = _file(tmp_path, "fake-model", {"low": {k: v for k, v in VOTE.items() if k != "seed"},
                                          "auto": {"method": "adaptive_rsa", "population": 2, "max_population": 4,
                                                   "rounds": 2}})
    async with serving(FakeEngine(answer="42"), presets=path) as http:
        low, auto, high = await _block(http, "low"), await _block(http, "auto"), await _block(http, "high")
        cards = (await http.get("/v1/models")).json()["data"]
    assert low["method"] == "adaptive_vote" and low["samples"] == 4
    assert auto["method"] == "adaptive_rsa" and (auto["stop_reason"], auto["calls"]) == ("settled", 4)
    assert high["method"] == "rsa" and high["calls"] >= 8 * 3  # not in the file: the server's own preset
    assert cards[0]["reasoning_efforts"] == ["low", "medium", "high", "xhigh", "auto"]


def test_a_bad_preset_file_stops_the_start(tmp_path: Path) -> None:
    path = _file(tmp_path, "m", {"low": {"population": 0}})
    with pytest.raises(ValueError, match="population"):
        Settings(presets=path)
    (tmp_path / "seeded.json").write_text(json.dumps({"model": "m", "efforts": {"low": {"seed": 1}}}))
    with pytest.raises(ValueError, match="seed"):
        Settings(presets=tmp_path / "seeded.json")


async def test_the_served_models_shipped_presets_apply_unless_a_file_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(presets_module, "SHIPPED", tmp_path)
    _file(tmp_path, "fake-model", {"low": {"method": "adaptive_vote", "population": 2, "max_population": 2}})
    async with serving(FakeEngine(answer="42")) as http:
        assert (await _block(http, "low"))["method"] == "adaptive_vote"
    other = _file(tmp_path / "..", "given", {"medium": {"population": 2}})
    async with serving(FakeEngine(answer="42"), presets=other) as http:
        assert (await _block(http, "low"))["method"] == "rsa"
    async with serving(FakeEngine(answer="42", model_name="another-model")) as http:
        assert (await _block(http, "low"))["method"] == "rsa"


@pytest.mark.parametrize("background", [False, True])
async def test_a_response_object_carries_the_run_summary(background: bool) -> None:
    async with serving(FakeEngine(answer="42")) as http:
        body = {"model": "fake-model", "input": "What is 6 * 7?", "rsa": VOTE, "background": background}
        response = (await http.post("/v1/responses", json=body)).json()
        for _ in range(2000):
            if response["status"] == "completed":
                break
            await asyncio.sleep(0.005)
            response = (await http.get(f"/v1/responses/{response['id']}")).json()
        stored = (await http.get(f"/v1/responses/{response['id']}")).json()
        plain = (await http.post("/v1/responses", json={"model": "fake-model", "input": "Hi"})).json()
    for r in (response, stored):
        assert (r["rsa"]["method"], r["rsa"]["stop_reason"], r["rsa"]["samples"]) == ("adaptive_vote", "settled", 4)
        assert "trace" not in r["rsa"]
    assert "rsa" not in plain


async def test_the_evaluations_engine_backend_reports_method_and_samples_too() -> None:
    from mrsa.evals.backends import EngineBackend
    from mrsa.rsa import RsaParams

    events = [e async for e in EngineBackend(FakeEngine(answer="42")).run(QUESTION, RsaParams(**VOTE), "run")]
    assert events[0]["method"] == "adaptive_vote"
    assert (events[-1]["method"], events[-1]["stop_reason"], events[-1]["samples"]) == ("adaptive_vote", "settled", 4)


def test_a_missing_or_malformed_preset_file_is_a_settings_error_naming_it(tmp_path: Path) -> None:
    from pydantic import ValidationError

    for path in (tmp_path / "absent.json", tmp_path / "bad.json"):
        (tmp_path / "bad.json").write_text("{not json")
        with pytest.raises(ValidationError, match=str(path.name)):
            Settings(presets=path)
