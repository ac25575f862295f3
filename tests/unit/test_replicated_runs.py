"""Background runs through the HTTP API over both stores (SQLite, a real PostgreSQL), then API
replicas sharing one PostgreSQL store in one process (fake engines): a follower on one replica
sees the events another replica's run logs, a cancel on one stops the run on the other, and a
replica that stops hands its runs to the other, which resumes them from their checkpoints.
Killing a replica (kill -9) is tests/e2e/test_replicas.py's."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from tests.fakes import FakeEngine
from tests.serving import QUESTION, RSA, events, serving, submit, wait_status

LEASE_S = 0.6  # renewed every 0.2 s; short, so a stopped replica's runs move on quickly


def _engine(delay: float = 0.0) -> FakeEngine:
    return FakeEngine(answer=lambda r: str((r.params.seed or 0) % 3), delay=delay)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> dict:
    """The settings that pick a store: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return {"store_path": tmp_path / "runs.sqlite3"}
    return {"store_url": request.getfixturevalue("postgres_url"), "store_lease_s": LEASE_S}


def _same_outcome(run: dict, reference: dict) -> None:
    assert run["result"]["choices"] == reference["result"]["choices"]
    assert run["result"]["rsa"]["answers"] == reference["result"]["rsa"]["answers"]
    # every token the run generated, before and after the restart, counted once
    assert {**run["usage"], "prompt_tokens_details": None} == {**reference["usage"], "prompt_tokens_details": None}


async def test_a_background_run_and_its_event_stream(store: dict) -> None:
    async with serving(_engine(), **store) as http:
        run_id = (await submit(http))["id"]
        whole = await events(http, run_id)
        run = await wait_status(http, run_id, {"completed"})
        assert await events(http, run_id, last=5) == whole[5:]
    assert [seq for seq, _ in whole] == list(range(1, len(whole) + 1))
    kinds = [e["event"] for _, e in whole]
    assert kinds[0] == "run_started" and kinds[-1] == "run_completed" and kinds.count("run_completed") == 1
    assert kinds.count("node_finished") == 12
    assert run["progress"] == {"nodes_finished": 12, "nodes_total": 12, "rounds": 3, "attempts": 1}


async def test_a_restarted_server_resumes_from_checkpoints(store: dict, tmp_path: Path) -> None:
    async with serving(_engine(), store_path=tmp_path / "reference.sqlite3") as http:
        reference = await wait_status(http, (await submit(http))["id"], {"completed"})
    first = _engine(delay=0.01)
    async with serving(first, **store) as http:
        run_id = (await submit(http))["id"]
        partial = await wait_status(http, run_id, set(), nodes=5)
    assert partial["status"] == "running"
    second = _engine()
    async with serving(second, **store) as http:
        run = await wait_status(http, run_id, {"completed"})
        log = [e["event"] for _, e in await events(http, run_id)]
    assert run["progress"]["attempts"] == 2 and log.count("run_resumed") == 1 and log.count("run_completed") == 1
    assert len(second.requests) <= 13 - partial["progress"]["nodes_finished"]
    _same_outcome(run, reference)


# ------------------------------------------------------------------ replicas on one database


async def test_a_follower_on_another_replica_sees_every_event_once_in_order(postgres_url: str) -> None:
    shared = {"store_url": postgres_url, "store_lease_s": LEASE_S}
    async with serving(_engine(delay=0.01), **shared) as a, serving(_engine(), **shared) as b:
        run_id = (await submit(a))["id"]
        followed = await events(b, run_id)  # B executes nothing: every wake-up is A's NOTIFY
        on_a = await events(a, run_id)
    assert followed == on_a
    assert [seq for seq, _ in followed] == list(range(1, len(followed) + 1))
    assert followed[-1][1]["event"] == "run_completed"


async def test_a_cancel_on_one_replica_stops_the_run_on_the_other(postgres_url: str) -> None:
    shared = {"store_url": postgres_url, "store_lease_s": LEASE_S}
    engine = _engine(delay=0.2)  # a trace takes over a second: the cancel lands mid-trace
    async with serving(engine, **shared) as a, serving(_engine(), **shared) as b:
        run_id = (await submit(a))["id"]
        while engine.num_in_flight() == 0:
            await asyncio.sleep(0.01)
        r = await b.delete(f"/v1/rsa/runs/{run_id}")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        for _ in range(3000):  # A learns at its next lease renewal and aborts its engine requests
            if engine.num_in_flight() == 0:
                break
            await asyncio.sleep(0.01)
        assert engine.num_in_flight() == 0
        log = [e["event"] for _, e in await events(a, run_id)]
    assert log[-1] == "run_cancelled" and log.count("run_cancelled") == 1
    # A stopped the run instead of finishing it unseen: its traces were aborted, no final call
    assert any(req.finish_reason == "abort" for req in engine.requests) and len(engine.requests) < 13


async def test_a_replica_that_stops_hands_its_runs_to_another(postgres_url: str, tmp_path: Path) -> None:
    async with serving(_engine(), store_path=tmp_path / "reference.sqlite3") as http:
        reference = await wait_status(http, (await submit(http))["id"], {"completed"})
    shared = {"store_url": postgres_url, "store_lease_s": LEASE_S}
    survivor = _engine()
    async with serving(survivor, **shared) as b:
        async with AsyncExitStack() as stack:
            a = await stack.enter_async_context(serving(_engine(delay=0.01), **shared))
            run_id = (await submit(a))["id"]
            partial = await wait_status(a, run_id, set(), nodes=5)
        assert partial["status"] == "running"  # A stopped: its lease given back, not its run ended
        run = await wait_status(b, run_id, {"completed"})
        log = [e["event"] for _, e in await events(b, run_id)]
    assert run["progress"]["attempts"] == 2 and log.count("run_resumed") == 1 and log.count("run_completed") == 1
    assert 0 < len(survivor.requests) <= 13 - partial["progress"]["nodes_finished"]
    _same_outcome(run, reference)


async def test_an_idempotency_key_holds_across_replicas(postgres_url: str) -> None:
    """A client that retries on another replica with the same key gets the run the first one
    accepted (racing repeats on both replicas make one run); another body is a 409."""
    shared = {"store_url": postgres_url, "store_lease_s": LEASE_S}
    body = {"model": "fake-model", "messages": QUESTION, "rsa": RSA}
    async with serving(_engine(delay=0.01), **shared) as a, serving(_engine(delay=0.01), **shared) as b:
        answers = await asyncio.gather(*(http.post("/v1/rsa/runs", json=body, headers={"Idempotency-Key": "k"})
                                         for http in (a, b, a, b)))
        assert {r.status_code for r in answers} == {202}
        assert len({r.json()["id"] for r in answers}) == 1
        assert sum(r.headers.get("idempotent-replayed") == "true" for r in answers) == 3
        other = await b.post("/v1/rsa/runs", json={**body, "rsa": {**RSA, "seed": 12}}, headers={"Idempotency-Key": "k"})
        assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
        run = await wait_status(b, answers[0].json()["id"], {"completed"})
    assert run["progress"]["attempts"] == 1
