"""``Idempotency-Key`` on the creating POSTs: a repeat with the same key and body returns the
first object (no second run), another body is a 409; keys are per API key, survive a restart
(a retry after a crash makes no duplicate) and expire with their object."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from mrsa.service.runs.store import Store
from tests.fakes import FakeEngine
from tests.serving import QUESTION, serving, wait_status

SMALL = {"population": 2, "k": 2, "rounds": 1, "tail_tokens": 8, "trace_max_tokens": 24, "seed": 3}
RUN = {"model": "fake-model", "messages": QUESTION, "rsa": SMALL}
KEYS = "key-a,key-b"


def _headers(idempotency: str, api_key: str | None = None) -> dict[str, str]:
    headers = {"Idempotency-Key": idempotency}
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


async def _runs_in_store(http: httpx.AsyncClient) -> int:
    store = http._transport.app.state.runs._open()  # type: ignore[attr-defined]
    return len(await store.call(lambda s: s._db.execute("SELECT id FROM runs").fetchall(), store.store))


async def test_a_repeated_key_returns_the_first_run_and_starts_no_second() -> None:
    engine = FakeEngine()
    async with serving(engine) as http:
        first = await http.post("/v1/rsa/runs", json=RUN, headers=_headers("k1"))
        assert first.status_code == 202 and "idempotent-replayed" not in first.headers
        await wait_status(http, first.json()["id"], {"completed"})
        calls = len(engine.requests)
        # the same JSON, spaced and ordered otherwise, is the same body
        again = await http.post("/v1/rsa/runs", content=json.dumps(dict(reversed(list(RUN.items()))), indent=2),
                                headers={**_headers("k1"), "Content-Type": "application/json"})
        assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
        assert again.json()["id"] == first.json()["id"] and again.json()["status"] == "completed"
        assert len(engine.requests) == calls and await _runs_in_store(http) == 1

        other = await http.post("/v1/rsa/runs", json={**RUN, "rsa": {**SMALL, "seed": 4}}, headers=_headers("k1"))
        assert other.status_code == 409
        assert other.json()["error"]["code"] == "idempotency_key_reused"
        assert other.json()["error"]["param"] == "Idempotency-Key"
        # the same key on another creating route is another request: 409 too
        chat = await http.post("/v1/chat/completions", json={**RUN, "background": True}, headers=_headers("k1"))
        assert chat.status_code == 409

        fresh = await http.post("/v1/rsa/runs", json=RUN, headers=_headers("k2"))
        assert fresh.status_code == 202 and fresh.json()["id"] != first.json()["id"]
        for bad in ("", "x" * 256):
            r = await http.post("/v1/rsa/runs", json=RUN, headers=_headers(bad))
            assert r.status_code == 400 and r.json()["error"]["param"] == "Idempotency-Key"


async def test_concurrent_repeats_make_one_run() -> None:
    import asyncio

    engine = FakeEngine(delay=0.01)
    async with serving(engine, admission={"max_running_runs": 8, "max_queued_runs": 8}) as http:
        answers = await asyncio.gather(*(http.post("/v1/rsa/runs", json=RUN, headers=_headers("same"))
                                         for _ in range(6)))
        assert {r.status_code for r in answers} == {202}
        assert len({r.json()["id"] for r in answers}) == 1
        assert sum(r.headers.get("idempotent-replayed") == "true" for r in answers) == 5
        assert await _runs_in_store(http) == 1
        admission = http._transport.app.state.runs.admission  # type: ignore[attr-defined]
        await wait_status(http, answers[0].json()["id"], {"completed"})
        assert (admission.running, admission.queued) == (0, 0)  # the repeats' tickets went back


async def test_background_responses_honour_the_key_per_api_key() -> None:
    engine = FakeEngine()
    body = {"model": "fake-model", "input": "What is 6 * 7?", "background": True}
    async with serving(engine, api_keys=KEYS) as http:
        a1 = await http.post("/v1/responses", json=body, headers=_headers("r1", "key-a"))
        a2 = await http.post("/v1/responses", json=body, headers=_headers("r1", "key-a"))
        b1 = await http.post("/v1/responses", json=body, headers=_headers("r1", "key-b"))
        assert a1.status_code == a2.status_code == b1.status_code == 200
        assert a2.json()["id"] == a1.json()["id"] and a2.headers["idempotent-replayed"] == "true"
        assert b1.json()["id"] != a1.json()["id"]  # another tenant's key is its own
        conflict = await http.post("/v1/responses", json={**body, "input": "other"}, headers=_headers("r1", "key-a"))
        assert conflict.status_code == 409
        # a live response keeps nothing to return again: the key changes nothing there
        live = {**body, "background": False}
        l1 = await http.post("/v1/responses", json=live, headers=_headers("l1", "key-a"))
        l2 = await http.post("/v1/responses", json=live, headers=_headers("l1", "key-a"))
        assert l1.status_code == l2.status_code == 200 and l1.json()["id"] != l2.json()["id"]


async def test_a_retry_after_a_restart_returns_the_run_accepted_before_it(tmp_path: Path) -> None:
    """Regression: clients whose submission was cut by a crash retried and made a second run
    (43 runs for 30 specs). The key is committed with the run, so the retry finds it."""
    path = tmp_path / "runs.sqlite3"
    async with serving(FakeEngine(delay=1.0), store_path=path) as http:
        first = await http.post("/v1/rsa/runs", json=RUN, headers=_headers("crash"))
        assert first.status_code == 202
    engine = FakeEngine()
    async with serving(engine, store_path=path) as http:  # the server came back; the client retries
        retry = await http.post("/v1/rsa/runs", json=RUN, headers=_headers("crash"))
        assert retry.status_code == 202 and retry.json()["id"] == first.json()["id"]
        await wait_status(http, first.json()["id"], {"completed"})
        assert await _runs_in_store(http) == 1


def test_keys_expire_with_their_run(tmp_path: Path) -> None:
    store = Store(tmp_path / "runs.sqlite3")
    assert store.create("run_a", "", {"params": {}}, {"event": "run_started"}, idempotency=("k", "d")) is None
    earlier = store.create("run_b", "", {"params": {}}, {"event": "run_started"}, idempotency=("k", "d"))
    assert earlier is not None and earlier.object_id == "run_a" and earlier.same_body
    assert store.get("run_b") is None  # nothing was written
    store.finish("run_a", "completed", {"event": "run_completed"})
    assert store.expire(cutoff=4e9) == 1
    assert store.idempotent("", "k", "d") is None
    assert store.create("run_c", "", {"params": {}}, {"event": "run_started"}, idempotency=("k", "d")) is None
    store.close()
