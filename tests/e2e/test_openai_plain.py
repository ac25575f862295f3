"""Plain requests are vLLM's own: the real ``openai`` SDK against a real ``mrsa serve`` (small
model), then the same requests against a real ``vllm serve`` of the same model, and through
``mrsa serve --upstream`` to that replica. Every answer has the same shape (keys and types)
on all three, and on ours the protocol did its work: a forced tool call with arguments that
parse, a JSON-schema answer that parses, logprobs, text completions, a tokenize round trip.

One engine at a time (the machine is small): ours is queried and stopped before the replica
starts; the answers are kept and compared afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from mrsa.engine.provision import SMALL_MODEL, ensure_model
from tests.e2e.server import MAX_MODEL_LEN, ROOT, WEATHER, free_port, start_server, stop_server

QUESTION = [{"role": "user", "content": "What is 7 + 5?"}]
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "integer", "minimum": 0, "maximum": 100}},
    "required": ["answer"],
    "additionalProperties": False,
}
# Same context and precision for both servers, so their answers agree in shape.
VLLM_FLAGS = ["--max-model-len", str(MAX_MODEL_LEN), "--dtype", "float32", "--enforce-eager",
              "--gpu-memory-utilization", "0.15"]
# vLLM 0.32 loads a tool-call parser only with --enable-auto-tool-choice, and wants one even for a
# named tool_choice (any parser will do for that).
PARSER = ("--tool-call-parser", "hermes", "--enable-auto-tool-choice")

Answers = dict[str, Any]


def _requests(client: openai.OpenAI, base: str, model: str) -> Answers:
    """Every request of the module; the raw JSON of each (streams: their chunks)."""
    raw = lambda call: call.http_response.json()  # noqa: E731
    chat = client.chat.completions.with_raw_response
    out: Answers = {
        "tool": raw(chat.create(
            model=model, messages=[{"role": "user", "content": "What is the weather in Paris?"}],
            tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}},
            max_tokens=48, temperature=0,
        )),
        "schema": raw(chat.create(
            model=model, messages=QUESTION, max_tokens=48, temperature=0,
            response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA}},
        )),
        "logprobs": raw(chat.create(model=model, messages=QUESTION, max_tokens=6, temperature=0,
                                    logprobs=True, top_logprobs=2)),
        "completion": raw(client.completions.with_raw_response.create(
            model=model, prompt="The capital of France is", max_tokens=8, temperature=0, logprobs=1)),
    }
    stream = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=8, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    out["stream"] = [chunk.model_dump() for chunk in stream]
    ids = httpx.post(f"{base}/tokenize", json={"model": model, "prompt": "Hello world, again"}, timeout=30).json()
    out["tokenize"] = ids
    out["detokenize"] = httpx.post(f"{base}/detokenize", json={"model": model, "tokens": ids["tokens"]},
                                   timeout=30).json()
    out["models"] = httpx.get(f"{base}/v1/models", timeout=30).json()
    # Last: several seeded samples of one request, what the RSA path never asks of vLLM's CPU sampler.
    out["n"] = raw(chat.create(model=model, messages=QUESTION, max_tokens=6, n=2, seed=1, stop=["\n\n"]))
    return out


def shape(value: Any) -> Any:
    """Keys and types, not values: dicts by key, lists by their first item."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


def _start_vllm(model: str, name: str, tmp: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = tmp / f"vllm-{port}.log"
    vllm = Path(sys.executable).parent / "vllm"  # as docs/operations.md says to run it
    proc = subprocess.Popen(
        [str(vllm), "serve", model, "--served-model-name", name, "--host", "127.0.0.1", "--port", str(port),
         *VLLM_FLAGS, *PARSER],
        cwd=ROOT, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"},
        stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 420
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vllm serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        time.sleep(1)
    raise RuntimeError(f"vllm serve did not start:\n{log.read_text()[-4000:]}")


def _stop_vllm(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Answers]:
    """``ours`` (embedded engine), ``vllm`` (vllm serve) and ``remote`` (ours over that replica)."""
    tmp = tmp_path_factory.mktemp("plain")
    proc, server = start_server(tmp, args=("--dtype", "float32", *PARSER))
    try:
        got = {"ours": _requests(server.client(timeout=120), server.url, server.model)}
    finally:
        stop_server(proc)
    checkpoint = str(ensure_model(SMALL_MODEL))
    vllm, url = _start_vllm(checkpoint, server.model, tmp)
    try:
        got["vllm"] = _requests(openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=120),
                                url, server.model)
        proc, remote = start_server(tmp, args=("--model", checkpoint, "--served-model-name", server.model,
                                               "--upstream", url))
        try:
            got["remote"] = _requests(remote.client(timeout=120), remote.url, remote.model)
        finally:
            stop_server(proc)
    finally:
        _stop_vllm(vllm)
    return got


def test_a_forced_tool_call_is_made_with_arguments_that_parse(answers: dict[str, Answers]) -> None:
    message = answers["ours"]["tool"]["choices"][0]["message"]
    (call,) = message["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    # The protocol, not the model: the arguments are JSON that vLLM constrained to the schema.
    # (vLLM 0.32 answered this single-property tool with the bare value, '"Paris"'.)
    arguments = json.loads(call["function"]["arguments"])
    city = arguments["city"] if isinstance(arguments, dict) else arguments
    assert city in ("Paris", "Rome"), call


def test_a_json_schema_answer_parses(answers: dict[str, Answers]) -> None:
    content = answers["ours"]["schema"]["choices"][0]["message"]["content"]
    assert isinstance(json.loads(content)["answer"], int)


def test_logprobs_are_returned(answers: dict[str, Answers]) -> None:
    content = answers["ours"]["logprobs"]["choices"][0]["logprobs"]["content"]
    assert len(content) == answers["ours"]["logprobs"]["usage"]["completion_tokens"] > 0
    assert all(len(t["top_logprobs"]) == 2 and t["logprob"] <= 0 for t in content)


def test_n_choices_and_text_completions(answers: dict[str, Answers]) -> None:
    ours = answers["ours"]
    assert [c["index"] for c in ours["n"]["choices"]] == [0, 1]
    completion = ours["completion"]
    assert completion["object"] == "text_completion" and completion["choices"][0]["text"]
    assert len(completion["choices"][0]["logprobs"]["tokens"]) == completion["usage"]["completion_tokens"]


def test_a_stream_ends_with_its_usage(answers: dict[str, Answers]) -> None:
    chunks = answers["ours"]["stream"]
    text = "".join(c["choices"][0]["delta"]["content"] or "" for c in chunks if c["choices"])
    assert text and chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0


def test_tokenize_and_detokenize_round_trip(answers: dict[str, Answers]) -> None:
    ours = answers["ours"]
    assert ours["tokenize"]["count"] == len(ours["tokenize"]["tokens"]) > 0
    assert ours["detokenize"]["prompt"] == "Hello world, again"


def test_models_are_vllms_cards_with_our_efforts(answers: dict[str, Answers]) -> None:
    (card,) = answers["ours"]["models"]["data"]
    assert card["max_model_len"] == MAX_MODEL_LEN and "root" in card and "reasoning_efforts" in card


NAMES = ["tool", "schema", "logprobs", "n", "completion", "stream", "tokenize", "detokenize"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("server", ["ours", "remote"])
def test_vllm_serve_answers_the_same_requests_in_the_same_shape(
    answers: dict[str, Answers], server: str, name: str
) -> None:
    ours, theirs = answers[server][name], answers["vllm"][name]
    assert shape(ours) == shape(theirs), (json.dumps(ours)[:2000], json.dumps(theirs)[:2000])


def test_model_cards_have_vllms_keys_and_ours(answers: dict[str, Answers]) -> None:
    theirs = shape(answers["vllm"]["models"]["data"][0])
    for server in ("ours", "remote"):
        card = shape(answers[server]["models"]["data"][0])
        assert {k: v for k, v in card.items() if k != "reasoning_efforts"} == theirs

