"""The HTTP service end to end: real server process, real embedded vLLM engine, default model,
the real ``openai`` SDK as the client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import openai
import pytest

from tests.e2e.server import MAX_MODEL_LEN, MAX_POPULATION, MAX_ROUNDS, Server
from tests.waits import eventually

QUESTION = [{"role": "user", "content": "What is 7 + 5? Put the answer in \\boxed{}."}]
SMALL_RSA = {"population": 3, "k": 2, "rounds": 2, "tail_tokens": 24, "trace_max_tokens": 40}


def rsa_create(server: Server, rsa: dict, **kw):
    return server.client().chat.completions.create(
        model=server.model, messages=QUESTION, extra_body={"rsa": rsa}, **kw
    )


def wait_idle(server: Server) -> None:
    """Until the engine has no request in flight. The bound only turns a leak into a failure;
    that a hang-up aborts the run's requests at once is pinned in process
    (tests/unit/test_rsa_disconnect.py)."""
    eventually(lambda: server.in_flight() == 0, "the engine has no request in flight")


# ----------------------------------------------------------------------------- discovery


def test_models_lists_the_served_model(server: Server) -> None:
    models = server.client().models.list()
    assert [m.id for m in models.data] == [server.model]
    assert models.data[0].model_extra["max_model_len"] == MAX_MODEL_LEN


def test_health_reports_an_idle_engine(server: Server) -> None:
    body = httpx.get(f"{server.url}/health").json()
    assert body["status"] == "ok" and body["model"] == server.model


# ----------------------------------------------------------------------------- plain


def test_plain_completion_is_seeded_and_bounded(server: Server) -> None:
    client = server.client()
    kw = dict(model=server.model, messages=QUESTION, max_tokens=16, seed=123, temperature=1.0)
    first = client.chat.completions.create(**kw)
    again = client.chat.completions.create(**kw)
    assert first.choices[0].message.content
    assert first.choices[0].message.content == again.choices[0].message.content
    assert 0 < first.usage.completion_tokens <= 16
    assert first.choices[0].finish_reason in ("stop", "length")
    assert not hasattr(first, "rsa") or first.model_extra.get("rsa") is None


def test_plain_stream_matches_non_stream(server: Server) -> None:
    client = server.client()
    kw = dict(model=server.model, messages=QUESTION, max_tokens=16, seed=7)
    whole = client.chat.completions.create(**kw).choices[0].message.content
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_plain_n_gives_n_distinct_seeded_choices(server: Server) -> None:
    out = server.client().chat.completions.create(
        model=server.model, messages=QUESTION, max_tokens=12, n=3, seed=5
    )
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert len({c.message.content for c in out.choices}) > 1


def test_plain_stop_sequence_is_honoured(server: Server) -> None:
    out = server.client().chat.completions.create(
        model=server.model, messages=QUESTION, max_tokens=40, seed=3, stop=[" "]
    )
    assert " " not in out.choices[0].message.content.strip()


# ----------------------------------------------------------------------------- RSA


@pytest.mark.parametrize(
    ("selection", "final_calls"), [("aggregate", 1), ("majority", 0)]
)
def test_rsa_usage_and_calls_match_the_trace(server: Server, selection: str, final_calls: int) -> None:
    rsa = {**SMALL_RSA, "selection": selection, "seed": 11, "return_trace": True}
    out = rsa_create(server, rsa)
    block = out.model_extra["rsa"]
    n, t = rsa["population"], rsa["rounds"]
    assert block["calls"] == n * t + final_calls == len(block["trace"])
    assert block["rounds_completed"] == t and block["stop_reason"] == "rounds"
    trace = block["trace"]
    assert out.usage.prompt_tokens == sum(node["prompt_tokens"] for node in trace)
    assert out.usage.completion_tokens == sum(node["completion_tokens"] for node in trace)
    reasoning = sum(node["completion_tokens"] for node in trace if node["kind"] != "final")
    assert out.usage.completion_tokens_details.reasoning_tokens == reasoning
    # vLLM's prefix-cache hits, call by call (how many depends on vLLM's scheduling)
    cached = out.usage.prompt_tokens_details.cached_tokens
    assert cached == sum(node["cached_tokens"] for node in trace) and 0 <= cached < out.usage.prompt_tokens
    assert all(node["completion_tokens"] <= rsa["trace_max_tokens"] for node in trace)
    # Aggregation nodes of round 1 were built from K tails of round 0.
    assert all(len(node["parents"]) == rsa["k"] for node in trace if node["round"] == 1 and node["kind"] == "trace")
    if selection == "aggregate":
        assert out.choices[0].message.content == trace[-1]["text"]
        assert trace[-1]["kind"] == "final"
    assert len(block["answers"]) == t


def test_rsa_same_seed_same_run(server: Server) -> None:
    rsa = {**SMALL_RSA, "selection": "aggregate", "seed": 99, "return_trace": True}
    a, b = rsa_create(server, rsa), rsa_create(server, rsa)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert [n["text"] for n in a.model_extra["rsa"]["trace"]] == [n["text"] for n in b.model_extra["rsa"]["trace"]]


def test_rsa_budget_is_never_exceeded(server: Server) -> None:
    rsa = {**SMALL_RSA, "rounds": 4, "budget_tokens": 200, "selection": "aggregate", "seed": 4}
    out = rsa_create(server, rsa)
    assert out.usage.completion_tokens <= 200
    assert out.model_extra["rsa"]["stop_reason"] == "budget"


def test_rsa_stream_sends_progress_then_the_final_answer(server: Server) -> None:
    rsa = {**SMALL_RSA, "selection": "aggregate", "seed": 21, "return_trace": True}
    stream = rsa_create(server, rsa, stream=True, stream_options={"include_usage": True})
    kinds, content, summary, usage = [], "", None, None
    for chunk in stream:
        event = (chunk.model_extra or {}).get("rsa")
        if chunk.choices and chunk.choices[0].delta.content:
            kinds.append("content")
            content += chunk.choices[0].delta.content
        elif event and event["event"] in ("node_finished", "round_completed"):
            kinds.append("progress")
        if event and event["event"] == "run_completed":
            summary = event
        if chunk.usage:
            usage = chunk.usage
    assert kinds.count("progress") >= rsa["population"] * rsa["rounds"]
    assert "content" in kinds and kinds.index("content") > max(i for i, k in enumerate(kinds) if k == "progress")
    assert summary is not None and content == summary["trace"][-1]["text"]
    assert usage.completion_tokens == sum(n["completion_tokens"] for n in summary["trace"])


def _first_progress_then_hang_up(server: Server, rsa: dict) -> None:
    body = {"model": server.model, "messages": QUESTION, "stream": True, "rsa": rsa}
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", f"{server.url}/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            # Hold the iterator: a dropped httpx line iterator closes the connection itself.
            lines = response.iter_lines()
            for line in lines:
                if line.startswith("data: ") and '"rsa"' in line:
                    break
            # Between rounds there can be an instant with nothing in flight: wait until the
            # engine is busy with this run, so the hang-up really happens mid-generation.
            deadline = time.monotonic() + 10
            while server.in_flight() == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert server.in_flight() > 0
    # leaving the block closes the connection mid-run


LONG_RSA = {"population": 6, "k": 2, "rounds": 4, "tail_tokens": 64, "trace_max_tokens": 400, "seed": 1}


def test_stream_disconnect_aborts_every_engine_request(server: Server) -> None:
    _first_progress_then_hang_up(server, {**LONG_RSA, "trace_max_tokens": 30})
    wait_idle(server)


def test_non_stream_disconnect_aborts_every_engine_request(server: Server) -> None:
    body = {"model": server.model, "messages": QUESTION, "rsa": LONG_RSA}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=httpx.Timeout(30, read=2.0))
    wait_idle(server)


# ----------------------------------------------------------------------------- errors


def _error(server: Server, status: int, **request) -> dict:
    response = httpx.post(f"{server.url}/v1/chat/completions", timeout=30, **request)
    assert response.status_code == status, response.text
    err = response.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


@pytest.mark.parametrize(
    ("rsa", "param"),
    [
        ({"population": 2, "k": 3}, "rsa"),
        ({"population": MAX_POPULATION + 1, "k": 2}, "rsa.population"),
        ({"rounds": MAX_ROUNDS + 1}, "rsa.rounds"),
        ({"tail_tokens": 0}, "rsa.tail_tokens"),
        ({"population": "many"}, "rsa.population"),
        ({"selection": "best"}, "rsa.selection"),
        ({"schedule": "eager"}, "rsa.schedule"),
        ({"popullation": 4}, "rsa.popullation"),
    ],
)
def test_invalid_rsa_values_get_a_400_envelope(server: Server, rsa: dict, param: str) -> None:
    err = _error(server, 400, json={"model": server.model, "messages": QUESTION, "rsa": rsa})
    assert err["param"] == param and err["type"] == "invalid_request_error"


def test_openai_sdk_raises_bad_request_for_k_over_n(server: Server) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        rsa_create(server, {"population": 2, "k": 4})
    assert "k (4) must not exceed population (2)" in info.value.message


def test_unknown_model_is_404(server: Server) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        server.client().chat.completions.create(model="gpt-nonexistent", messages=QUESTION)
    assert info.value.body["param"] == "model" and info.value.body["code"] == "model_not_found"


def test_prompt_too_long_is_400_with_the_numbers(server: Server) -> None:
    long = [{"role": "user", "content": "word " * (MAX_MODEL_LEN + 100)}]
    err = _error(server, 400, json={"model": server.model, "messages": long, "max_tokens": 10})
    assert err["code"] == "context_length_exceeded" and str(MAX_MODEL_LEN) in err["message"]
    err = _error(server, 400, json={"model": server.model, "messages": long, "rsa": {}})
    assert err["code"] == "context_length_exceeded" and str(MAX_MODEL_LEN) in err["message"]


def test_rsa_that_cannot_fit_the_context_shows_the_numbers(server: Server) -> None:
    rsa = {"population": 4, "k": 4, "tail_tokens": 600, "trace_max_tokens": 600}
    err = _error(server, 400, json={"model": server.model, "messages": QUESTION, "rsa": rsa})
    assert err["code"] == "context_length_exceeded"
    assert str(MAX_MODEL_LEN) in err["message"] and "600" in err["message"]


def test_malformed_json_is_400(server: Server) -> None:
    err = _error(server, 400, content=b'{"model": "x", "messages": [', headers={"content-type": "application/json"})
    assert err["code"] == "invalid_json"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": QUESTION}, "model"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": QUESTION, "temperature": 5}, "temperature"),
        ({"model": "m", "messages": QUESTION, "max_tokens": 0}, "max_tokens"),
    ],
)
def test_invalid_openai_fields_get_a_400_envelope(server: Server, body: dict, param: str) -> None:
    # With rsa: our request model (plain requests are vLLM's to validate: tests/e2e/test_openai_plain.py).
    assert _error(server, 400, json={**body, "rsa": {}})["param"] == param


def test_n_with_rsa_is_rejected(server: Server) -> None:
    err = _error(server, 400, json={"model": server.model, "messages": QUESTION, "n": 2, "rsa": {}})
    assert err["param"] == "n"


def test_unknown_route_is_404_envelope(server: Server) -> None:
    response = httpx.get(f"{server.url}/v1/nothing")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_server_is_healthy_and_idle_after_all_of_that(server: Server) -> None:
    wait_idle(server)
    out = server.client().chat.completions.create(model=server.model, messages=QUESTION, max_tokens=4)
    assert out.usage.completion_tokens > 0
    metrics = httpx.get(f"{server.url}/metrics").text
    assert "mrsa_rsa_runs_total" in metrics
    assert json.loads(httpx.get(f"{server.url}/health").text)["in_flight"] == 0


# ----------------------------------------------------------------------------- CLI


def _ask(server: Server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mrsa", "ask", "What is 7 + 5?", "--url", server.url, *args],
        capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "120"},
    )


def test_mrsa_ask_shows_progress_answer_and_usage(server: Server) -> None:
    # population left to the server's default (4): the bars learn it from the first round
    out = _ask(server, "--k", "2", "--rounds", "2", "--tail-tokens", "16",
               "--trace-max-tokens", "24", "--selection", "aggregate", "--seed", "3")
    assert out.returncode == 0, out.stderr
    assert "round 0" in out.stdout and "round 1" in out.stdout and "4/4" in out.stdout
    assert "final (aggregate)" in out.stdout
    assert "'stop_reason': 'rounds'" in out.stdout and "'calls': 9" in out.stdout
    assert "usage:" in out.stdout and "completion_tokens" in out.stdout


def test_mrsa_ask_reports_a_bad_request(server: Server) -> None:
    out = _ask(server, "--population", "2", "--k", "3")
    assert out.returncode == 1
    assert "400" in out.stdout and "must not exceed population" in out.stdout
