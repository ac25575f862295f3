"""Bad input, generated: schemathesis drives our own OpenAPI schema (the rsa object included)
against the app in-process over the fake engine, valid and invalid cases alike; hypothesis
draws rsa parameters directly. Whatever arrives: never a 5xx, and every error is the OpenAI
envelope with a message."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from starlette.testclient import TestClient

from mrsa.service.app import create_app
from mrsa.service.settings import Settings
from tests.fakes import FakeEngine

QUESTION = [{"role": "user", "content": "What is 6 * 7?"}]
# The server's rsa defaults (N=4, T=2, tau=448, 448 trace tokens) fit; more does not.
LIMITS = {"max_population": 8, "max_rounds": 4, "max_tail_tokens": 512, "max_trace_tokens": 512}
# Cases per (operation, mode); the total must reach MIN_CASES.
EXAMPLES = {
    ("POST", "/v1/chat/completions"): 500,
    ("POST", "/v1/rsa/runs"): 400,
    ("GET", "/v1/rsa/runs/{run_id}"): 60,
    ("DELETE", "/v1/rsa/runs/{run_id}"): 60,
    ("GET", "/v1/rsa/runs/{run_id}/events"): 60,
    ("POST", "/v1/responses"): 400,
    ("GET", "/v1/responses/{response_id}"): 60,
    ("POST", "/v1/responses/{response_id}/cancel"): 40,
    ("DELETE", "/v1/responses/{response_id}"): 40,
    ("GET", "/v1/responses/{response_id}/input_items"): 40,
    ("GET", "/v1/models"): 10,
    ("GET", "/health"): 10,
}
MIN_CASES = 1000
FUZZ = settings(
    deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck), print_blob=True
)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    engine = FakeEngine(max_model_len=4096)
    app = create_app(
        Settings(limits=LIMITS, store_path=Path(tmp_path_factory.mktemp("fuzz")) / "runs.sqlite3"),
        engine_factory=lambda _: engine,
    )
    with TestClient(app, raise_server_exceptions=False) as http:  # lifespan and requests share one loop
        yield http


def assert_well_formed(response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert isinstance(error["message"], str) and error["message"]
        assert error["type"] in ("invalid_request_error", "rate_limit_error")


def _operations(client: TestClient):
    schema = schemathesis.openapi.from_dict(client.app.openapi())
    found = {}
    for result in schema.get_all_operations():
        op = result.ok()
        found[(op.method.upper(), op.path)] = op
    return found


def _served_model(case):
    """Valid bodies for the served model; for background runs also without the fields that
    cannot go with them (else hardly a generated run would start)."""
    if isinstance(case.body, dict):
        case.body["model"] = "fake-model"
        if case.operation.path == "/v1/rsa/runs":
            for name in ("stream", "n", "stop"):
                case.body.pop(name, None)
        if case.operation.path == "/v1/responses":
            case.body.pop("previous_response_id", None)  # else nearly every one is a 404
    return case


def test_generated_requests_never_get_a_5xx_and_errors_are_enveloped(client: TestClient) -> None:
    operations = _operations(client)
    rsa_props = client.app.openapi()["components"]["schemas"]["ChatCompletionRequest"]["properties"]["rsa"]
    assert "population" in json.dumps(rsa_props)  # the rsa object is in the schema, field by field
    assert set(EXAMPLES) <= set(operations)
    seen = {"cases": 0, "rsa": 0, "statuses": set()}

    for key, examples in EXAMPLES.items():
        op = operations[key]
        modes = [(GenerationMode.POSITIVE, 0.6), (GenerationMode.NEGATIVE, 0.4)]
        if not op.body:  # a string path parameter cannot be made invalid
            modes = [(GenerationMode.POSITIVE, 1.0)]
        for mode, share in modes:

            strategy = op.as_strategy(generation_mode=mode)
            if mode is GenerationMode.POSITIVE and op.body:
                strategy = strategy.map(_served_model)  # else nearly every valid body is a 404

            @settings(FUZZ, max_examples=max(5, int(examples * share)))
            @given(case=strategy)
            def check(case) -> None:
                kwargs = case.as_transport_kwargs(base_url="http://testserver")
                kwargs.pop("cookies", None)
                response = client.request(**kwargs)
                seen["cases"] += 1
                seen["statuses"].add(response.status_code)
                if isinstance(case.body, dict) and isinstance(case.body.get("rsa"), dict):
                    seen["rsa"] += 1
                assert_well_formed(response)

            check()
    assert seen["cases"] >= MIN_CASES, seen
    assert seen["rsa"] >= 100, seen
    assert {200, 202, 400, 404} <= seen["statuses"], seen


RSA_VALUES = st.fixed_dictionaries(
    {},
    optional={
        "population": st.one_of(st.integers(-2, 9), st.just("4"), st.none()),
        "k": st.integers(-1, 7),
        "rounds": st.integers(0, 5),
        "tail_tokens": st.integers(0, 80),
        "trace_max_tokens": st.integers(0, 80),
        "final_max_tokens": st.integers(0, 80),
        "budget_tokens": st.one_of(st.integers(-5, 600), st.none()),
        "deadline_s": st.one_of(st.floats(-1, 5), st.just(float("nan")), st.none()),
        "selection": st.sampled_from(["aggregate", "majority", "auto", "best", ""]),
        "schedule": st.sampled_from(["dataflow", "rounds", "async"]),
        "temperature": st.one_of(st.floats(-1, 3), st.sampled_from([float("nan"), float("inf")])),
        "top_p": st.floats(-0.5, 1.5),
        "seed": st.integers(-3, 2**40),
        "early_stop": st.sampled_from(["consensus", None, "never"]),
        "return_trace": st.booleans(),
        "unknown_field": st.integers(),
    },
)


@settings(FUZZ, max_examples=250)
@given(rsa=RSA_VALUES, stream=st.booleans())
def test_rsa_parameters_run_within_their_bounds_or_are_refused_by_name(
    client: TestClient, rsa: dict, stream: bool
) -> None:
    body = {"model": "fake-model", "messages": QUESTION, "rsa": rsa, "stream": stream}
    response = client.post("/v1/chat/completions", content=json.dumps(body, allow_nan=True),
                           headers={"Content-Type": "application/json"})
    assert_well_formed(response)
    if response.status_code == 400:
        error = response.json()["error"]
        assert error["param"] is not None and (error["param"].startswith("rsa") or error["param"] == "messages"), error
        return
    if response.status_code == 429:
        return
    assert response.status_code == 200
    if stream:
        lines = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
        assert lines[-1] == "[DONE]"
        chunks = [json.loads(line) for line in lines[:-1]]
        assert not any("error" in c for c in chunks), chunks[-1]
        block = next(c["rsa"] for c in chunks if c.get("rsa", {}).get("event") == "run_completed")
    else:
        out = response.json()
        block = out["rsa"]
        usage = out["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        if rsa.get("budget_tokens") is not None:
            assert usage["completion_tokens"] <= rsa["budget_tokens"]
    population = rsa.get("population") if isinstance(rsa.get("population"), int) else 8
    rounds = rsa.get("rounds", 3)
    assert block["calls"] <= population * rounds + 1
    assert block["rounds_completed"] <= rounds
