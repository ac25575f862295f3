"""One pipeline for every API that runs RSA, and one error envelope.

Chat completions (answered, streamed, in the background), ``/v1/responses`` (answered,
streamed, in the background) and ``POST /v1/rsa/runs`` merge a request's parameters through
the one merge, live runs through the one executor, and a failure reads the same in all of
them. The fake engine stands in for the model; the rest is the service as it runs."""

from __future__ import annotations

import ast
import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from mrsa.engine.base import EngineError
from mrsa.service import pipeline
from mrsa.service.errors import APIError, ErrorBody
from mrsa.service.pipeline import Failure, failure, wants_rsa
from mrsa.service.settings import Settings
from tests.fakes import FakeEngine
from tests.serving import QUESTION, serving, wait_status

RSA = {"population": 2, "k": 1, "rounds": 2, "tail_tokens": 8, "trace_max_tokens": 48, "seed": 3,
       "selection": "majority"}
CHAT = {"model": "fake-model", "messages": QUESTION}
RESPONSE = {"model": "fake-model", "input": "What is 6 * 7?"}


class Gone(EngineError):
    status = 503
    code = "upstream_unavailable"


# ------------------------------------------------------------------------------ the envelope


def test_the_envelope_is_one_shape_whoever_builds_it() -> None:
    assert json.dumps(APIError("bad value", param="rsa.k", code="invalid_value").body()) == (
        '{"error": {"message": "bad value", "type": "invalid_request_error", "param": "rsa.k", '
        '"code": "invalid_value"}}'
    )
    refused = APIError.for_status(404, "no such run", code="run_not_found", param="run_id")
    assert (refused.status, refused.type, refused.param) == (404, "invalid_request_error", "run_id")
    down = APIError.for_status(503, "no replica")
    assert (down.status, down.type, down.code) == (503, "server_error", None)
    assert APIError.for_status(499, "x").type == "invalid_request_error"
    assert APIError.for_status(500, "x").type == "server_error"
    bug = APIError.internal(KeyError("secret detail"))
    assert bug.status == 500 and bug.body() == {"error": {
        "message": "Internal error: KeyError", "type": "server_error", "param": None, "code": "internal_error"}}
    assert bug.error_body() == ErrorBody(message="Internal error: KeyError", type="server_error", code="internal_error")


def test_failure_maps_engine_errors_and_bugs() -> None:
    lost = failure(Gone("no replica"))
    assert lost.usage is None and lost.body() == {"error": {
        "message": "no replica", "type": "server_error", "param": None, "code": "upstream_unavailable"}}
    refused = failure(type("Refused", (EngineError,), {"status": 400, "code": "bad_prompt"})(""))
    assert refused.error.type == "invalid_request_error" and refused.error.message == "Refused"  # never empty
    assert failure(ValueError("bug")).error.body() == APIError.internal(ValueError()).body()
    already = Failure(APIError("x"))
    assert failure(already) is already


def test_rsa_or_plain_is_one_decision() -> None:
    settings = Settings()
    assert not wants_rsa(settings, None, None) and not wants_rsa(settings, None, "none")
    assert wants_rsa(settings, None, "low") and wants_rsa(settings, {}, "none")
    assert wants_rsa(settings, 5, None)  # a raw body's rsa of the wrong type: RSA, whose validation says no
    assert not wants_rsa(settings, None, ["low"])  # an effort of the wrong type: none, validation says no
    assert wants_rsa(Settings(default_effort="low"), None, None)
    assert not wants_rsa(Settings(default_effort="low"), None, "minimal")


# ------------------------------------------------------------------------------ one way through


def _runs_started() -> float:
    return REGISTRY.get_sample_value("mrsa_rsa_runs_total") or 0.0


class Seams:
    """Counts the one merge (:func:`pipeline.rsa_params`) and the live executor's reader task
    (:func:`pipeline.execute` reads a run in its own task, the only reader in the module)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.merges = self.executions = 0
        merge, own_task = pipeline.rsa_params, pipeline.in_own_task

        def counted_merge(*args: Any, **kw: Any) -> Any:
            self.merges += 1
            return merge(*args, **kw)

        def counted_task(*args: Any, **kw: Any) -> Any:
            self.executions += 1
            return own_task(*args, **kw)

        monkeypatch.setattr(pipeline, "rsa_params", counted_merge)
        monkeypatch.setattr(pipeline, "in_own_task", counted_task)


async def _call(http: httpx.AsyncClient, path: str, body: dict) -> httpx.Response:
    response = await http.post(path, json=body)
    assert response.status_code in (200, 202), response.text
    if "background" in body or path == "/v1/rsa/runs":
        run_id = response.json()["id"]
        if path == "/v1/responses":
            for _ in range(3000):  # a generous bound (30 s)
                if (await http.get(f"/v1/responses/{run_id}")).json()["status"] not in ("queued", "in_progress"):
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError(f"response {run_id} stuck")
        else:
            await wait_status(http, run_id, {"completed", "failed"})
    return response


CASES = [
    ("/v1/chat/completions", {**CHAT, "rsa": RSA}, True),
    ("/v1/chat/completions", {**CHAT, "rsa": RSA, "stream": True}, True),
    ("/v1/chat/completions", {**CHAT, "rsa": RSA, "background": True}, False),
    ("/v1/rsa/runs", {**CHAT, "rsa": RSA}, False),
    ("/v1/responses", {**RESPONSE, "rsa": RSA}, True),
    ("/v1/responses", {**RESPONSE, "rsa": RSA, "stream": True}, True),
    ("/v1/responses", {**RESPONSE, "rsa": RSA, "background": True}, False),
]


@pytest.mark.parametrize(("path", "body", "live"), CASES,
                         ids=["chat", "chat-stream", "chat-background", "runs", "responses", "responses-stream",
                              "responses-background"])
async def test_every_api_merges_once_and_counts_its_run_once(
    monkeypatch: pytest.MonkeyPatch, path: str, body: dict, live: bool,
) -> None:
    seams = Seams(monkeypatch)
    engine = FakeEngine()
    async with serving(engine) as http:
        before = _runs_started()
        await _call(http, path, body)
    assert seams.merges == 1
    assert seams.executions == (1 if live else 0)  # a background run is the manager's to execute
    assert _runs_started() - before == 1
    assert len(engine.requests) == 2 * 2  # the run asked for: population 2, two rounds, no final call


async def test_a_plain_response_takes_no_merge_and_no_run(monkeypatch: pytest.MonkeyPatch) -> None:
    seams = Seams(monkeypatch)
    async with serving(FakeEngine()) as http:
        before = _runs_started()
        await _call(http, "/v1/responses", RESPONSE)
    assert (seams.merges, seams.executions, _runs_started() - before) == (0, 0, 0)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/rsa/runs", "/v1/responses"])
async def test_the_rsa_object_wins_over_top_level_fields_in_every_api(path: str) -> None:
    engine = FakeEngine()
    body = {**(RESPONSE if path == "/v1/responses" else CHAT), "temperature": 0.3, "top_p": 0.5,
            "rsa": {**RSA, "temperature": 0.7}}
    async with serving(engine) as http:
        await _call(http, path, body)
    assert {r.params.temperature for r in engine.requests} == {0.7}
    assert {r.params.top_p for r in engine.requests} == {0.5}


async def test_a_preset_wins_over_top_level_fields_and_the_rsa_object_over_the_preset() -> None:
    """Lowest first: server defaults, top-level fields, the effort's preset, the rsa object. A
    measured preset keeps the sampling it was measured with; the rsa object sets it anyway."""
    engine = FakeEngine()
    preset = {"population": 2, "k": 1, "rounds": 1, "selection": "majority", "trace_max_tokens": 48,
              "temperature": 0.6}
    async with serving(engine, effort_presets={"low": preset}) as http:
        await _call(http, "/v1/chat/completions", {**CHAT, "reasoning_effort": "low", "temperature": 0.2,
                                                   "top_p": 0.5, "seed": 4})
        first = list(engine.requests)
        await _call(http, "/v1/chat/completions", {**CHAT, "reasoning_effort": "low", "temperature": 0.2,
                                                   "rsa": {"temperature": 0.9}})
        second = engine.requests[len(first):]
    assert {r.params.temperature for r in first} == {0.6}  # the preset's, not the top-level 0.2
    assert {r.params.top_p for r in first} == {0.5}  # not in the preset: the top-level field
    assert {r.params.temperature for r in second} == {0.9}


# ------------------------------------------------------------------------------ one failure, one envelope


def _bug(request: Any) -> BaseException | None:
    return ValueError("a bug") if "-r1-" in request.request_id else None


def _lost(request: Any) -> BaseException | None:
    return Gone("no replica is reachable") if "-r1-" in request.request_id else None


async def _errors(engine: FakeEngine) -> dict[str, tuple[int, dict]]:
    """(status, error) as each API answers the same failing run."""
    out: dict[str, tuple[int, dict]] = {}
    async with serving(engine) as http:
        chat = await http.post("/v1/chat/completions", json={**CHAT, "rsa": RSA})
        out["chat"] = chat.status_code, chat.json()["error"]
        streamed = await http.post("/v1/chat/completions", json={**CHAT, "rsa": RSA, "stream": True})
        data = [line[len("data: "):] for line in streamed.text.splitlines() if line.startswith("data: ")]
        assert data[-1] == "[DONE]"
        out["chat-stream"] = streamed.status_code, json.loads(data[-2])["error"]
        response = await http.post("/v1/responses", json={**RESPONSE, "rsa": RSA})
        out["responses"] = response.status_code, response.json()["error"]
        run_id = (await http.post("/v1/rsa/runs", json={**CHAT, "rsa": RSA})).json()["id"]
        run = await wait_status(http, run_id, {"completed", "failed"})
        out["runs"] = 200, run["error"]
    return out


async def test_a_bug_in_a_run_is_the_same_internal_error_in_every_api() -> None:
    errors = await _errors(FakeEngine(error=_bug))
    internal = APIError.internal(ValueError()).body()["error"]
    assert errors == {"chat": (500, internal), "chat-stream": (200, internal), "responses": (500, internal),
                      "runs": (200, internal)}


async def test_a_lost_run_is_the_same_envelope_in_every_api() -> None:
    errors = await _errors(FakeEngine(error=_lost))
    assert {status for status, _ in (errors["chat"], errors["responses"])} == {503}
    for _, error in errors.values():
        assert (error["type"], error["code"], error["param"]) == ("server_error", "upstream_unavailable", None)
        assert "no replica is reachable" in error["message"]


def test_route_modules_do_not_import_each_other() -> None:
    """What two routes share lives in the pipeline (or rsa_chat, responses/), not in a route."""
    routes = Path(pipeline.__file__).parent / "routes"
    for path in routes.glob("*.py"):
        if path.name == "__init__.py":
            continue
        imported = {node.module for node in ast.walk(ast.parse(path.read_text()))
                    if isinstance(node, ast.ImportFrom) and node.module}
        assert not {m for m in imported if m.startswith("mrsa.service.routes")}, f"{path.name} imports a route"


def test_the_envelope_rules_are_written_once() -> None:
    """The status-to-type rule and the 500 body live in errors.py: every other module of the
    service calls APIError.for_status and APIError.internal."""
    service = Path(pipeline.__file__).parent
    for path in service.rglob("*.py"):
        if path.name == "errors.py" and path.parent == service:
            continue
        text = path.read_text()
        assert "Internal error" not in text, f"{path.relative_to(service)} builds the 500 envelope itself"
        assert "< 500" not in text, f"{path.relative_to(service)} maps a status to an error type itself"
