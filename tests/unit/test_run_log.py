"""The run store's log under races and crashes: a terminal event is a run's last, a crash
between a round's last checkpoint and its completion loses no ``round_completed``, a resumed
final call logs ``final_started`` once, a run resumed onto another model fails naming both, an
unreadable record is quarantined instead of failing the start-up, and an expiry is a fixed
number of statements that leaves no write-ahead log behind."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mrsa.rsa.events import NodeRecord
from mrsa.service.admission import Admission
from mrsa.service.runs import RunManager
from mrsa.service.runs.store import Store
from tests.fakes import FakeEngine
from tests.serving import serving, submit, wait_status

ROOT = Path(__file__).resolve().parents[2]

RSA = {"population": 3, "k": 2, "rounds": 3, "tail_tokens": 8, "trace_max_tokens": 24, "seed": 9,
       "selection": "aggregate"}


def test_nothing_is_logged_after_a_terminal_event(tmp_path: Path) -> None:
    """Regression: a cancel raced a checkpoint and a ``node_finished`` was committed after
    ``run_cancelled``, so a Responses replay sent ``rsa.progress`` after ``response.cancelled``."""
    store = Store(tmp_path / "runs.sqlite3")
    store.create("run_a", "", {"params": {}}, {"event": "run_started"})
    store.set_status("run_a", "running", {"event": "run_running"})
    assert store.finish("run_a", "cancelled", {"event": "run_cancelled"}) is not None
    record = NodeRecord(round=0, index=0, text="late")
    assert store.checkpoint("run_a", record, {"event": "node_finished"}, 1.0) is None
    assert store.append("run_a", {"event": "round_completed", "round": 0}) is None
    assert store.set_status("run_a", "running", {"event": "run_running"}) is None
    assert store.finish("run_a", "failed", {"event": "run_failed"}) is None
    assert [e["event"] for _, e in store.events("run_a")] == ["run_started", "run_running", "run_cancelled"]
    assert store.records("run_a") == []  # the late checkpoint is not kept either
    store.close()


CRASHER = """
import asyncio, os, signal, sys
from mrsa.service.admission import Admission
from mrsa.service.runs import RunManager
from mrsa.service.runs.store import Store
from mrsa.rsa import RsaParams, RsaRun
from tests.fakes import FakeEngine

path, when = sys.argv[1], sys.argv[2]
checkpoint, append = Store.checkpoint, Store.append

def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)

def checkpointed(self, run_id, record, *args, **kw):
    out = checkpoint(self, run_id, record, *args, **kw)
    done = [r for r in self.records(run_id) if r.round == 0]
    if when == "round" and record.round == 0 and len(done) == 3:
        die()  # right after the checkpoint that completed round 0
    return out

def appended(self, run_id, event, *args, **kw):
    out = append(self, run_id, event, *args, **kw)
    if when == "final" and event.get("event") == "final_started":
        die()  # the final call began
    return out

Store.checkpoint, Store.append = checkpointed, appended

async def main() -> None:
    engine = FakeEngine(answer=lambda r: str((r.params.seed or 0) % 3))
    runs = RunManager(__import__("pathlib").Path(path), Admission("runs", 4, 4))
    await runs.start(engine)
    params = RsaParams(**RSA_PARAMS)
    run = RsaRun(engine, [{"role": "user", "content": "What is 6 * 7?"}], params, run_id="run_x-a1")
    await runs.submit("", engine.model_name, "run_x", run, runs.admission.admit())
    await asyncio.sleep(30)

asyncio.run(main())
""".replace("RSA_PARAMS", repr(RSA))


async def _crash_then_resume(tmp_path: Path, when: str) -> list[dict]:
    path = tmp_path / "runs.sqlite3"
    crashed = subprocess.run([sys.executable, "-c", CRASHER, str(path), when], cwd=ROOT, timeout=120,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True)
    assert crashed.returncode == -9, crashed.stderr.decode()[-3000:]
    runs = RunManager(path, Admission("runs", 4, 4))
    await runs.start(FakeEngine(answer=lambda r: str((r.params.seed or 0) % 3)))
    try:
        for _ in range(4000):
            run = await runs.get("", "run_x")
            if run is not None and run.terminal:
                break
            await asyncio.sleep(0.005)
        assert run is not None and run.status == "completed", run
        return [e for _, e in await runs._open().events("run_x")]
    finally:
        await runs.close()


async def test_a_crash_after_a_rounds_last_checkpoint_keeps_its_round_completed(tmp_path: Path) -> None:
    """Regression: the checkpoint and the ``round_completed`` it caused were two transactions;
    a crash between them restored the round on resume and never logged its completion."""
    log = await _crash_then_resume(tmp_path, "round")
    rounds = [e["round"] for e in log if e["event"] == "round_completed"]
    assert rounds == [0, 1, 2]
    assert [e["event"] for e in log].count("run_resumed") == 1


async def test_a_final_call_redone_after_a_crash_logs_final_started_once(tmp_path: Path) -> None:
    """Regression: each attempt of the final call logged its own ``final_started``."""
    log = await _crash_then_resume(tmp_path, "final")
    names = [e["event"] for e in log]
    assert names.count("final_started") == 1 and names.count("run_resumed") == 1
    assert names[-1] == "run_completed"


async def test_a_run_resumed_onto_another_model_fails_naming_both(tmp_path: Path) -> None:
    """Regression: a restart onto another model completed the run there, labelled with the old."""
    path = tmp_path / "runs.sqlite3"
    async with serving(FakeEngine(delay=1.0), store_path=path) as http:
        run = await submit(http, RSA)
    other = FakeEngine(model_name="other-model", served_names=["other-model"])
    async with serving(other, store_path=path) as http:
        ended = await wait_status(http, run["id"], {"completed", "failed"})
    assert ended["status"] == "failed" and ended["error"]["code"] == "model_changed"
    assert "`fake-model`" in ended["error"]["message"] and "`other-model`" in ended["error"]["message"]
    assert other.requests == []  # nothing of it ran on the new model


async def test_an_unreadable_record_is_quarantined_and_the_start_goes_on(tmp_path: Path, caplog) -> None:
    """Regression: one stored run whose spec did not parse failed every start-up (a crash loop)."""
    path = tmp_path / "runs.sqlite3"
    async with serving(FakeEngine(delay=1.0), store_path=path, admission={"max_running_runs": 4}) as http:
        bad_spec, bad_node, good = [await submit(http, RSA) for _ in range(3)]
    store = Store(path)
    store._db.execute("UPDATE runs SET spec = '{\"model\": ' WHERE id = ?", (bad_spec["id"],))
    store._db.execute("INSERT INTO nodes (run_id, round, idx, record) VALUES (?, 0, 0, 'not json')", (bad_node["id"],))
    store.close()
    async with serving(FakeEngine(), store_path=path) as http:
        assert (await wait_status(http, good["id"], {"completed"}))["status"] == "completed"
        broken = await http.get(f"/v1/rsa/runs/{bad_node['id']}")
        assert broken.json()["status"] == "failed" and broken.json()["error"]["code"] == "store_corrupt"
        unreadable = await http.get(f"/v1/rsa/runs/{bad_spec['id']}")
        assert unreadable.status_code == 500 and unreadable.json()["error"]["code"] == "store_corrupt"
        assert http._transport.app.state.runs.quarantined == 2  # type: ignore[attr-defined]
    assert "quarantined 2 stored runs" in caplog.text
    store = Store(path)
    assert store.unfinished() == ([], [])  # the next start-up finds nothing to resume or set aside
    store.close()


def _fill(store: Store, n: int) -> None:
    for i in range(n):
        run_id = f"run_{i}"
        store.create(run_id, "", {"params": {}}, {"event": "run_started"}, idempotency=(f"key{i}", "d"),
                     response={"r": i} if i % 2 else None)
        store.checkpoint(run_id, NodeRecord(round=0, index=0, text="x" * 200), {"event": "node_finished"}, 1.0)
        store.finish(run_id, "completed", {"event": "run_completed"})


@pytest.mark.parametrize("n", [50, 1000])
def test_expiry_is_a_fixed_number_of_statements_and_truncates_the_log(tmp_path: Path, n: int) -> None:
    """Regression: ``expire()`` deleted row by row with list lookups (quadratic in the batch),
    and the write-ahead log was never truncated."""
    store = Store(tmp_path / "runs.sqlite3")
    _fill(store, n)
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    assert store.expire(cutoff=4e9) == n + n // 2  # every run, and the responses among them
    store._db.set_trace_callback(None)
    assert len(statements) <= 20, statements[:30]
    for table in ("runs", "nodes", "events", "responses", "idempotency"):
        assert store._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone() == (0,)
    assert Path(f"{store.path}-wal").stat().st_size == 0
    store.close()
