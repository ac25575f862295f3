"""High availability end to end: two ``mrsa serve`` replicas (processes) over one real
PostgreSQL run store; background runs submitted to both; one replica ``kill -9``'d mid-run.

Engines: each replica has its own fake engine (tests/replicas.py says why: the store is what
is under test, and the fake is deterministic for a seed, so "usage exact" is checkable against
runs never interrupted). Nothing here needs the engine lock.

What must hold: every run completes exactly once (one ``run_completed``, the last event of a
gap-free log), the killed replica's runs on the survivor from their checkpoints (attempt 2),
with the answer and usage of an uninterrupted run; a follower on the survivor sees every event
once, in order; a follower of the dead replica picks up on the survivor with ``Last-Event-ID``
and misses nothing.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.replicas import ApiReplica, follow, get_run, log_of, submit

RSA = {"population": 4, "k": 2, "rounds": 3, "tail_tokens": 16, "trace_max_tokens": 64, "selection": "aggregate"}
LEASE_S = 2.0
FAKE = {"FAKE_DELAY": "0.3"}  # a trace takes about two seconds: the kill lands mid-run


def _wait(condition, timeout: float, what: str, interval: float = 0.1):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def replicas(postgres_url: str, tmp_path: Path):  # noqa: ANN201
    pair = [ApiReplica(name, postgres_url, tmp_path, lease_s=LEASE_S, env=FAKE) for name in ("a", "b")]
    try:
        for replica in pair:
            replica.start()
        yield pair
    finally:
        for replica in pair:
            replica.stop()


def test_a_replica_killed_mid_run_loses_nothing(replicas: list[ApiReplica], postgres_url: str) -> None:
    a, b = replicas
    http = httpx.Client()
    runs = {}
    for i in range(6):
        on = a if i % 2 == 0 else b
        created = submit(http, on.url, {**RSA, "seed": 100 + i}, f"What is {i} + 1?")
        runs[created["id"]] = (on.name, 100 + i, i)
    on_a = [run_id for run_id, (name, _, _) in runs.items() if name == "a"]

    # Followers: one on the survivor-to-be from the start, one on the replica about to die.
    on_survivor: list[tuple[int, dict]] = []
    on_victim: list[tuple[int, dict]] = []
    watched = on_a[0]
    survivor_thread = threading.Thread(target=follow, args=(b.url, watched, on_survivor))

    def follow_victim() -> None:
        try:
            follow(a.url, watched, on_victim)
        except httpx.HTTPError:
            pass  # the replica died under the stream

    victim_thread = threading.Thread(target=follow_victim)
    survivor_thread.start()
    victim_thread.start()

    def all_a_runs_midway() -> bool:
        states = [get_run(http, [b.url], run_id) for run_id in on_a]
        return all(s is not None and s["progress"]["nodes_finished"] >= 1 for s in states)

    _wait(all_a_runs_midway, 60, "a checkpoint of every run on replica a")
    a.kill()
    midway = {run_id: get_run(http, [b.url], run_id) for run_id in on_a}
    assert all(run["status"] != "completed" for run in midway.values()), midway  # killed mid-run

    def all_completed() -> dict | None:
        states = {run_id: get_run(http, [b.url], run_id) for run_id in runs}
        return states if all(s is not None and s["status"] == "completed" for s in states.values()) else None

    final = _wait(all_completed, 120, "every run to complete on replica b", interval=0.5)
    survivor_thread.join(60)
    victim_thread.join(60)
    assert not survivor_thread.is_alive() and not victim_thread.is_alive()

    for run_id, (name, _, _) in runs.items():
        log = [e["event"] for e in log_of(postgres_url, run_id)]  # gap-free, checked there
        assert log.count("run_completed") == 1 and log[-1] == "run_completed", (run_id, log)
        assert log.count("run_started") == 1 and "run_failed" not in log
        expected_attempts = 2 if name == "a" else 1
        assert final[run_id]["progress"]["attempts"] == expected_attempts, (run_id, final[run_id])
        assert log.count("run_resumed") == expected_attempts - 1

    # Followers: the survivor's saw the whole log once, in order; the victim's follower takes
    # up on the survivor after the last event it got and misses nothing.
    whole = log_of(postgres_url, watched)
    assert [e for _, e in on_survivor] == whole
    assert [seq for seq, _ in on_survivor] == list(range(1, len(whole) + 1))
    last = on_victim[-1][0] if on_victim else 0
    assert last < len(whole)  # the victim's stream was cut before the end
    rest: list[tuple[int, dict]] = []
    follow(b.url, watched, rest, after=last)
    assert [e for _, e in on_victim + rest] == whole

    # Usage exact: the same requests (same seeds) on the survivor, never interrupted.
    references = {run_id: submit(http, b.url, {**RSA, "seed": seed}, f"What is {i} + 1?")["id"]
                  for run_id, (_, seed, i) in runs.items()}
    for run_id, reference_id in references.items():
        reference = _wait(lambda r=reference_id: (s := get_run(http, [b.url], r)) and s["status"] == "completed" and s,
                          120, f"reference run {reference_id}", interval=0.5)
        run = final[run_id]
        assert run["result"]["choices"] == reference["result"]["choices"]
        assert {**run["usage"], "prompt_tokens_details": None} == {**reference["usage"], "prompt_tokens_details": None}
