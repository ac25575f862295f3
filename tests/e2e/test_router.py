"""Engines behind an existing router, end to end: two real ``vllm serve`` CPU replicas of the
small model, vLLM's own router (``vllm-router`` from PyPI, policy ``power_of_two``) in front of
them, and ``mrsa serve`` pointed at the router as its one upstream, its runs in a real
PostgreSQL store. Needs the engine lock (real vLLM engines).

What must hold: an RSA run's fan-out is spread over both engines by the router (a consistent
hash would stack a run's traces on one); one engine ``kill -9``'d mid-run does not fail the
run: the router stops sending to it and our own retry of a failed trace continues each broken
stream elsewhere, so every trace still delivers exactly its ``max_tokens`` (``ignore_eos``)
and usage is their exact sum. Then two API replicas over that store and router: one killed
mid-run, the other completes its run from the checkpoints.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from mrsa.engine.provision import SMALL_MODEL, ensure_model
from tests.e2e.conftest import ROOT, Server, free_port, start_server, stop_server
from tests.e2e.test_remote import Replica, _start_replica, _wait_healthy, eventually
from tests.replicas import get_run, log_of

QUESTION = [{"role": "user", "content": "What is 7 + 5? Put the answer in \\boxed{}."}]
ROUTER_FLAGS = [
    "--policy", "power_of_two",  # least loaded of two: a run's N traces spread over the engines
    "--health-check-interval-secs", "1", "--health-failure-threshold", "1",
    "--worker-startup-timeout-secs", "600", "--log-level", "warning",
]


@dataclass
class Topology:
    engines: list[Replica]
    router: str
    model: str
    store_url: str
    tmp: Path


def _start_router(workers: list[str], tmp: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = tmp / f"router-{port}.log"
    router = Path(sys.executable).parent / "vllm-router"
    proc = subprocess.Popen(
        [str(router), "--host", "127.0.0.1", "--port", str(port), "--worker-urls", *workers, *ROUTER_FLAGS,
         "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port())],  # its default port is fixed
        cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vllm-router exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                return proc, url
        time.sleep(0.5)
    raise RuntimeError(f"vllm-router did not start:\n{log.read_text()[-4000:]}")


def _start_api(topology: Topology) -> tuple[subprocess.Popen, Server]:
    env = {
        "MRSA_STORE_URL": topology.store_url, "MRSA_STORE_LEASE_S": "3",
        "MRSA_ENGINE__UPSTREAM_HEALTH_INTERVAL_S": "1", "MRSA_ENGINE__UPSTREAM_READ_TIMEOUT_S": "60",
    }
    return start_server(topology.tmp, extra_env=env, timeout=180,
                        args=("--model", topology.model, "--upstream", topology.router))


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory, postgres_server_url: str) -> Iterator[Topology]:
    from tests.postgres import fresh_database

    tmp = tmp_path_factory.mktemp("router")
    model = str(ensure_model(SMALL_MODEL))
    engines: list[Replica] = []
    router = None
    try:
        engines = [_start_replica(model, tmp, i) for i in range(2)]
        deadline = time.monotonic() + 420
        for engine in engines:
            _wait_healthy(engine, deadline)
        router, url = _start_router([e.url for e in engines], tmp)
        yield Topology(engines, url, model, fresh_database(postgres_server_url), tmp)
    finally:
        if router is not None:
            _kill_group(router)
        for engine in engines:
            engine.kill()


def _submit(server: Server, rsa: dict) -> str:
    body = {"model": server.model, "messages": QUESTION, "ignore_eos": True,
            "rsa": {"selection": "aggregate", "return_trace": True, **rsa}}
    r = httpx.post(f"{server.url}/v1/rsa/runs", json=body, timeout=30)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def _assert_exact_usage(run: dict, rsa: dict) -> None:
    result = run["result"]
    trace = result["rsa"]["trace"]
    assert len(trace) == rsa["population"] * rsa["rounds"] + 1
    for node in trace:
        assert node["status"] == "finished" and node["finish_reason"] == "length", node
        assert node["completion_tokens"] == node["max_tokens"], node
    assert result["usage"]["completion_tokens"] == sum(n["completion_tokens"] for n in trace)
    assert result["usage"]["prompt_tokens"] == sum(n["prompt_tokens"] for n in trace)
    assert result["choices"][0]["message"]["content"]


def test_an_engine_killed_mid_run_does_not_fail_the_run(topology: Topology) -> None:
    a, b = topology.engines
    proc, server = _start_api(topology)
    try:
        before = (a.successes(), b.successes())
        warm = {"population": 4, "k": 2, "rounds": 1, "tail_tokens": 16, "trace_max_tokens": 16, "seed": 1}
        run_id = _submit(server, warm)
        assert eventually(lambda: get_run(httpx.Client(), [server.url], run_id)["status"] == "completed", 240, 0.5)
        served = (a.successes() - before[0], b.successes() - before[1])
        assert served[0] >= 1 and served[1] >= 1, f"the router sent a run's fan-out to one engine: {served}"

        rsa = {"population": 4, "k": 2, "rounds": 2, "tail_tokens": 24, "trace_max_tokens": 64, "seed": 7}
        start = a.generated()
        run_id = _submit(server, rsa)
        assert eventually(lambda: a.generated() > start + 8, 120, 0.2), "engine a got no trace of the run"
        a.kill()  # mid-run: its traces break mid-stream
        http = httpx.Client()
        assert eventually(lambda: get_run(http, [server.url], run_id)["status"] in ("completed", "failed"), 400, 1)
        run = get_run(http, [server.url], run_id)
        assert run["status"] == "completed", run
        _assert_exact_usage(run, rsa)
        log = [e["event"] for e in log_of(topology.store_url, run_id)]
        assert log.count("run_completed") == 1 and log[-1] == "run_completed"
    finally:
        stop_server(proc)


def test_an_api_replica_killed_mid_run_is_taken_over(topology: Topology) -> None:
    """Runs after the engine test: one engine left behind the router, enough for two replicas."""
    first, second = _start_api(topology), _start_api(topology)
    (proc_a, api_a), (proc_b, api_b) = first, second
    try:
        rsa = {"population": 2, "k": 2, "rounds": 3, "tail_tokens": 24, "trace_max_tokens": 48, "seed": 9}
        run_id = _submit(api_a, rsa)
        http = httpx.Client()
        assert eventually(lambda: get_run(http, [api_b.url], run_id)["progress"]["nodes_finished"] >= 1, 300, 0.5)
        _kill_group(proc_a)  # kill -9: no lease given back
        assert eventually(lambda: get_run(http, [api_b.url], run_id)["status"] in ("completed", "failed"), 400, 1)
        run = get_run(http, [api_b.url], run_id)
        assert run["status"] == "completed" and run["progress"]["attempts"] == 2, run
        _assert_exact_usage(run, rsa)
        log = [e["event"] for e in log_of(topology.store_url, run_id)]
        assert log.count("run_completed") == 1 and log.count("run_resumed") == 1 and log[-1] == "run_completed"
    finally:
        stop_server(proc_b)
        with contextlib.suppress(Exception):
            stop_server(proc_a)
