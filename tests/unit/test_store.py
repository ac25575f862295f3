"""Background runs over the fake engine: submitted at once, checkpointed node by node in the
SQLite store, resumable event stream, cancellation that frees the engine, resume after a
restart; and the store file surviving a writer killed inside a transaction."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mrsa.service.app import create_app
from mrsa.service.settings import Settings
from mrsa.service.runs.store import Store, StoreLocked
from tests.fakes import FakeEngine
from tests.serving import QUESTION, RSA, events, serving, submit, wait_status

ROOT = Path(__file__).resolve().parents[2]


def _engine(delay: float = 0.0) -> FakeEngine:
    return FakeEngine(answer=lambda r: str((r.params.seed or 0) % 3), delay=delay)


async def test_background_run_gives_the_same_result_as_a_direct_one() -> None:
    engine = _engine()
    async with serving(engine) as http:
        direct = (await http.post("/v1/chat/completions", json={"model": "fake-model", "messages": QUESTION, "rsa": RSA})).json()
        created = await submit(http)
        assert created["object"] == "rsa.run" and created["status"] in ("queued", "running")
        run = await wait_status(http, created["id"], {"completed"})
    result = run["result"]
    assert result["choices"][0]["message"]["content"] == direct["choices"][0]["message"]["content"]
    assert result["usage"] == run["usage"]
    # the background run re-reads the prompts the direct one computed: more prefix-cache hits
    cached = result["usage"].pop("prompt_tokens_details")["cached_tokens"]
    assert cached > direct["usage"].pop("prompt_tokens_details")["cached_tokens"]
    assert result["usage"] == direct["usage"]
    assert run["progress"] == {"nodes_finished": 12, "nodes_total": 12, "rounds": 3, "attempts": 1}


async def test_chat_completions_background_flag_returns_a_run() -> None:
    async with serving(_engine()) as http:
        r = await http.post("/v1/chat/completions", json={"model": "fake-model", "messages": QUESTION, "rsa": RSA, "background": True})
        assert r.status_code == 202 and r.json()["id"].startswith("run_")
        run = await wait_status(http, r.json()["id"], {"completed"})
        assert run["result"]["rsa"]["calls"] == 13
        bad = await http.post("/v1/chat/completions", json={"model": "fake-model", "messages": QUESTION, "background": True})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "background"


async def test_event_stream_resumes_after_last_event_id() -> None:
    async with serving(_engine()) as http:
        run_id = (await submit(http))["id"]
        whole = await events(http, run_id)
        assert [seq for seq, _ in whole] == list(range(1, len(whole) + 1))
        kinds = [e["event"] for _, e in whole]
        assert kinds[0] == "run_started" and kinds[-1] == "run_completed"
        assert kinds.count("node_finished") == 12 and kinds.count("round_completed") == 3
        assert whole[-1][1]["usage"]["completion_tokens"] > 0
        assert await events(http, run_id, last=5) == whole[5:]
        assert await events(http, run_id, last=len(whole)) == []


async def test_cancel_frees_the_engine_before_answering() -> None:
    engine = _engine(delay=0.05)
    async with serving(engine) as http:
        run_id = (await submit(http))["id"]
        while engine.num_in_flight() == 0:
            await asyncio.sleep(0.005)
        r = await http.delete(f"/v1/rsa/runs/{run_id}")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        assert engine.num_in_flight() == 0
        assert all(req.finish_reason == "abort" for req in engine.requests)
        assert (await events(http, run_id))[-1][1]["event"] == "run_cancelled"
        again = await http.delete(f"/v1/rsa/runs/{run_id}")
        assert again.json()["status"] == "cancelled"


async def test_unknown_run_is_404_in_the_envelope() -> None:
    async with serving(_engine()) as http:
        for method, path in [("GET", "/v1/rsa/runs/run_x"), ("DELETE", "/v1/rsa/runs/run_x"),
                             ("GET", "/v1/rsa/runs/run_x/events")]:
            r = await http.request(method, path)
            assert r.status_code == 404 and r.json()["error"]["code"] == "run_not_found"


async def test_a_restarted_server_resumes_from_checkpoints(tmp_path: Path) -> None:
    db = tmp_path / "runs.sqlite3"
    async with serving(_engine()) as http:  # the uninterrupted reference
        reference = await wait_status(http, (await submit(http))["id"], {"completed"})

    first = _engine(delay=0.01)
    async with serving(first, store_path=db) as http:
        run_id = (await submit(http))["id"]
        partial = await wait_status(http, run_id, set(), nodes=5)
    assert partial["status"] == "running"  # stopping the server does not end the run
    done = partial["progress"]["nodes_finished"]

    second = _engine()
    async with serving(second, store_path=db) as http:
        run = await wait_status(http, run_id, {"completed"})
        log = [e["event"] for _, e in await events(http, run_id)]
    assert run["progress"]["attempts"] == 2 and "run_resumed" in log
    assert len(second.requests) <= 13 - done  # only unfinished nodes and the final call are redone
    ref = reference["result"]
    assert run["result"]["choices"] == ref["choices"] and run["result"]["rsa"]["answers"] == ref["rsa"]["answers"]
    # includes what the first server generated (prefix-cache hits depend on each server's history)
    assert {**run["usage"], "prompt_tokens_details": None} == {**ref["usage"], "prompt_tokens_details": None}


def test_a_store_file_is_owned_by_one_server(tmp_path: Path) -> None:
    store = Store(tmp_path / "runs.sqlite3")
    with pytest.raises(StoreLocked):
        Store(tmp_path / "runs.sqlite3")
    store.close()
    Store(tmp_path / "runs.sqlite3").close()


async def test_a_second_server_on_the_same_store_refuses_to_start(tmp_path: Path) -> None:
    """Regression: the store used to open with the first background run, so a second server
    started and its first background POST failed with a 500. The lock is taken at start."""
    path = tmp_path / "runs.sqlite3"
    first = create_app(Settings(store_path=path), engine_factory=lambda _: _engine())
    second = create_app(Settings(store_path=path), engine_factory=lambda _: _engine())
    async with first.router.lifespan_context(first):
        assert path.exists()  # no run was ever submitted
        with pytest.raises(StoreLocked):
            async with second.router.lifespan_context(second):
                pass
    async with second.router.lifespan_context(second):  # free once the first has stopped
        pass


WRITER = """
import sys, time
from mrsa.service.runs.store import Store
from mrsa.rsa.events import NodeRecord
store = Store(sys.argv[1])
store.create("run_a", "", {"params": {}}, {"event": "run_started"})
store.checkpoint("run_a", NodeRecord(round=0, index=0, text="committed"), {"event": "node_finished"}, 1.0)
db = store._db
db.execute("PRAGMA cache_size=1")  # spill uncommitted pages into the WAL
db.execute("BEGIN IMMEDIATE")
for i in range(1, 2000):
    db.execute("INSERT INTO nodes (run_id, round, idx, record) VALUES ('run_a', 1, ?, ?)", (i, "x" * 2000))
db.execute("UPDATE runs SET status = 'completed' WHERE id = 'run_a'")
print("in transaction", flush=True)
time.sleep(60)
"""


def test_the_store_survives_a_writer_killed_inside_a_transaction(tmp_path: Path) -> None:
    db = tmp_path / "runs.sqlite3"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], cwd=ROOT, stdout=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert writer.stdout is not None and writer.stdout.readline() == b"in transaction\n"
    assert Path(f"{db}-wal").stat().st_size > 1_000_000  # uncommitted pages did reach the file
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()

    store = Store(db)  # the lock died with the writer
    assert store.integrity() == "ok"
    run = store.get("run_a")
    assert run is not None and run.status == "queued"  # the uncommitted update is gone
    assert [r.text for r in store.records("run_a")] == ["committed"]
    assert [e["event"] for _, e in store.events("run_a")] == ["run_started", "node_finished"]
    store.append("run_a", {"event": "still writable"})
    store.close()
