"""The Responses API on the real server and engine (the small model), through the real openai
Python SDK and, in one script, the JS SDK: plain and ``reasoning.effort`` responses, the event
stream, background responses polled, cancelled (the engine freed) and surviving a
``kill -9`` of the server with their usage and their event numbers; foreign ids are 404."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.e2e.server import Server, crash, start_server, stop_server
from tests.waits import eventually

HERE = Path(__file__).resolve().parent
INPUT = "What is 7 + 5? Put the answer in \\boxed{}."
# Exact-length traces (ignore_eos): 3 rounds of 3 traces of 24 tokens, then a final aggregation
# of 24 tokens, which hits its limit: such a response ends `incomplete` (max_output_tokens).
RUN = {"population": 3, "k": 2, "rounds": 3, "tail_tokens": 16, "trace_max_tokens": 24, "seed": 7,
       "selection": "aggregate", "final_max_tokens": 24, "ignore_eos": True}
# Small server defaults, so that reasoning.effort presets run quickly on a CPU.
ENV = {"MRSA_RSA__TRACE_MAX_TOKENS": "32", "MRSA_RSA__TAIL_TOKENS": "16", "MRSA_API_KEYS": "alice,bob"}
ENDED = {"completed", "failed", "cancelled", "incomplete"}


def client(server: Server, key: str = "alice") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=300)


def until(c: openai.OpenAI, resp_id: str, done, within: float = 300):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        response = c.responses.retrieve(resp_id)
        if done(response):
            return response
        time.sleep(0.05)
    pytest.fail(f"response did not get there in {within}s: {response.status}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("responses")
    proc, server = start_server(tmp, {**ENV, "MRSA_STORE_PATH": str(tmp / "runs.sqlite3")})
    try:
        yield server
    finally:
        stop_server(proc)


def test_plain_effort_and_stream(served: Server) -> None:
    c = client(served)
    plain = c.responses.create(model=served.model, input=INPUT, max_output_tokens=32)
    assert plain.status in ("completed", "incomplete") and plain.output_text.strip()
    assert 0 < plain.usage.output_tokens <= 32 and plain.usage.output_tokens_details.reasoning_tokens == 0
    assert plain.usage.input_tokens > 0

    low = c.responses.create(model=served.model, input=INPUT, reasoning={"effort": "low"})
    assert low.status in ("completed", "incomplete") and low.output_text.strip()
    assert low.usage.output_tokens_details.reasoning_tokens > 0  # the traces of an RSA run
    assert low.usage.output_tokens >= low.usage.output_tokens_details.reasoning_tokens  # + a final call, if any

    events = list(c.responses.create(model=served.model, input=INPUT, stream=True, extra_body={"rsa": RUN}))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.incomplete"
    assert sum(e.type == "rsa.progress" and e.rsa["event"] == "node_finished" for e in events) == 9
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == events[-1].response.output_text
    assert events[-1].response.usage.output_tokens_details.reasoning_tokens == 9 * 24


def test_background_cancel_and_foreign_ids(served: Server) -> None:
    alice, bob = client(served), client(served, "bob")
    job = alice.responses.create(model=served.model, input=INPUT, background=True, extra_body={"rsa": RUN})
    assert job.status in ("queued", "in_progress")
    done = until(alice, job.id, lambda r: r.status in ENDED)
    assert done.status == "incomplete" and done.output_text.strip()
    assert done.usage.output_tokens >= 9 * 24

    for call in (lambda: bob.responses.retrieve(job.id), lambda: bob.responses.cancel(job.id),
                 lambda: bob.responses.delete(job.id), lambda: alice.responses.retrieve("resp_unknown")):
        with pytest.raises(openai.NotFoundError) as missing:
            call()
        assert missing.value.body["code"] == "response_not_found"

    long_run = {**RUN, "population": 4, "trace_max_tokens": 400, "final_max_tokens": 16, "seed": 8}
    job = alice.responses.create(model=served.model, input=INPUT, background=True, extra_body={"rsa": long_run})
    until(alice, job.id, lambda r: served.in_flight() > 0 or r.status in ENDED)
    assert served.in_flight() > 0
    assert alice.responses.cancel(job.id).status == "cancelled"
    # The bound only turns a leak into a failure: the abort's promptness is pinned in process
    # (tests/unit/test_store.py: the cancel frees the engine before it answers).
    eventually(lambda: served.in_flight() == 0, "the cancelled run's engine requests have ended")
    assert alice.responses.cancel(job.id).status == "cancelled"  # idempotent


def test_the_js_sdk_parses_responses_and_their_stream(served: Server, tmp_path: Path) -> None:
    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.skip("node and npm are needed to install and run OpenAI's JS SDK")
    install = subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund", "openai@6"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    env = {**os.environ, "OPENAI_BASE_URL": f"{served.url}/v1", "OPENAI_API_KEY": "alice", "MODEL": served.model,
           "RSA": json.dumps(RUN), "NODE_PATH": str(tmp_path / "node_modules")}
    script = tmp_path / "responses_sdk.mjs"  # ESM resolves packages from the script's folder
    shutil.copy(HERE / "responses_sdk.mjs", script)
    out = subprocess.run(["node", str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr + out.stdout
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["progress"] > 0 and summary["background"] == "incomplete"


def test_a_background_response_survives_kill_9(tmp_path: Path) -> None:
    env = {**ENV, "MRSA_STORE_PATH": str(tmp_path / "runs.sqlite3")}
    proc, server = start_server(tmp_path, env)
    try:
        c = client(server)
        job = c.responses.create(model=server.model, input=INPUT, background=True, extra_body={"rsa": RUN})
        before = []
        for event in c.responses.retrieve(job.id, stream=True):  # a client reading the live stream
            before.append(event)
            if event.type == "rsa.progress" and event.rsa["event"] == "node_finished" and \
                    sum(e.type == "rsa.progress" and e.rsa["event"] == "node_finished" for e in before) >= 3:
                break
        partial = c.responses.retrieve(job.id)
        assert partial.status == "in_progress", partial.status  # crashed mid-run, not after
    finally:
        crash(proc)

    proc, server = start_server(tmp_path, env)
    try:
        c = client(server)
        done = until(c, job.id, lambda r: r.status in ENDED)
        assert done.status == "incomplete" and done.output_text.strip()
        # every trace, pre-crash ones included: 9 traces of exactly 24 tokens, then the final
        assert done.usage.output_tokens_details.reasoning_tokens == 9 * 24
        assert done.usage.output_tokens >= 9 * 24
        after = list(c.responses.retrieve(job.id, stream=True, starting_after=before[-1].sequence_number))
        whole = list(c.responses.retrieve(job.id, stream=True))
    finally:
        stop_server(proc)
    numbers = [e.sequence_number for e in before + after]
    assert numbers == list(range(len(numbers)))  # no gap, no duplicate across the crash
    assert [e.to_dict() for e in before + after] == [e.to_dict() for e in whole]
    assert "run_resumed" in [e.rsa["event"] for e in after if e.type == "rsa.progress"]
    assert whole[-1].type == "response.incomplete" and whole[-1].response.output_text == done.output_text
