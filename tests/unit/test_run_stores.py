"""The run store's contract, one suite over both stores: the embedded SQLite file and a real
PostgreSQL server (tests/postgres.py starts one on 127.0.0.1). Then what only a shared store
has: schema migrations, leases (claim, heartbeat, expiry, release), fencing of a replica that
lost its lease, and notifications of appended events to the other replicas."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from mrsa.rsa.events import NodeRecord
from mrsa.service.runs import pg_store
from mrsa.service.runs.pg_store import LeaseLost, PgStore, SchemaTooNew
from mrsa.service.runs.stores import RunStore, SqliteStore, open_store

SPEC = {"model": "m", "messages": [{"role": "user", "content": "q"}], "params": {"seed": 1}}


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'runs.sqlite3'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(store_url: str, tmp_path: Path) -> Iterator[RunStore]:
    opened = open_store(store_url, tmp_path / "unused.sqlite3", lease_s=30)
    yield opened
    opened.close()


def _record(round_: int, index: int, tokens: int = 5) -> NodeRecord:
    return NodeRecord(round=round_, index=index, text=f"r{round_}i{index}", prompt_tokens=10,
                      completion_tokens=tokens, cached_tokens=2)


def test_the_url_picks_the_store(store: RunStore, store_url: str) -> None:
    assert isinstance(store, SqliteStore if store_url.startswith("sqlite") else PgStore)
    assert store.shared is store_url.startswith("postgresql")
    assert store.integrity() == "ok"


def test_a_run_lives_queued_running_completed(store: RunStore) -> None:
    store.create("run_a", "alice", SPEC, {"event": "run_started"})
    run = store.get("run_a")
    assert run is not None and run.status == "queued" and run.owner == "alice" and run.spec == SPEC
    assert run.attempts == 0 and not run.terminal
    assert store.set_status("run_a", "running", {"event": "run_running"}) == 2
    assert store.checkpoint("run_a", _record(0, 0), {"event": "node_finished", "i": 0}, 1.5) == 3
    assert store.checkpoint("run_a", _record(0, 1, tokens=7), {"event": "node_finished", "i": 1}, 1.0) == 4
    assert store.append("run_a", {"event": "round_completed"}) == 5
    assert store.finish("run_a", "completed", {"event": "run_completed"}, result={"answer": "42"}) == 6
    run = store.get("run_a")
    assert run is not None and run.status == "completed" and run.terminal
    assert run.result == {"answer": "42"} and run.error is None
    assert run.attempts == 1 and run.elapsed_s == 1.5  # the largest age any checkpoint reported
    assert [r.text for r in store.records("run_a")] == ["r0i0", "r0i1"]
    progress = store.progress("run_a")
    assert (progress.nodes, progress.prompt_tokens, progress.completion_tokens, progress.cached_tokens) == (2, 20, 12, 4)
    assert [seq for seq, _ in store.events("run_a")] == [1, 2, 3, 4, 5, 6]
    assert [e["event"] for _, e in store.events("run_a", after=4)] == ["round_completed", "run_completed"]
    assert len(store.events("run_a", after=1, limit=2)) == 2
    assert store.unfinished() == ([], [])


def test_an_ended_run_ends_once(store: RunStore) -> None:
    store.create("run_a", "", SPEC, {"event": "run_started"})
    assert store.finish("run_a", "failed", {"event": "run_failed"}, error={"error": {"message": "x"}}) == 2
    assert store.finish("run_a", "completed", {"event": "run_completed"}, result={}) is None
    assert store.finish("run_a", "cancelled", {"event": "run_cancelled"}) is None
    assert store.set_status("run_a", "running", {"event": "run_running"}) is None
    run = store.get("run_a")
    assert run is not None and run.status == "failed" and run.error == {"error": {"message": "x"}}
    assert [e["event"] for _, e in store.events("run_a")] == ["run_started", "run_failed"]


def test_unfinished_and_claim_list_runs_oldest_first(store: RunStore) -> None:
    for name in ("run_1", "run_2", "run_3"):
        store.create(name, "", SPEC, {"event": "run_started"})
    store.finish("run_2", "cancelled", {"event": "run_cancelled"})
    assert [r.id for r in store.unfinished()[0]] == ["run_1", "run_3"]
    if not store.shared:  # the single server claims every run its last life left
        assert [r.id for r in store.claim()[0]] == ["run_1", "run_3"]
        assert store.heartbeat(["run_1"]) == {"run_1"}


def test_responses_keep_their_creation_time_and_take_their_run_along(store: RunStore) -> None:
    store.put_response("resp_1", "alice", {"v": 1})
    owner, created, run_id, data = store.get_response("resp_1")  # type: ignore[misc]
    assert (owner, run_id, data) == ("alice", None, {"v": 1})
    store.create("run_b", "alice", SPEC, {"event": "run_started"})
    store.put_response("resp_1", "alice", {"v": 2}, run_id="run_b")
    again = store.get_response("resp_1")
    assert again is not None and again[1] == created and again[2:] == ("run_b", {"v": 2})
    assert store.get_response("resp_x") is None
    assert store.delete_response("resp_1") is True
    assert store.get_response("resp_1") is None and store.get("run_b") is None
    assert store.events("run_b") == [] and store.delete_response("resp_1") is False


def test_expire_removes_what_ended_before_the_cutoff(store: RunStore) -> None:
    store.create("run_old", "", SPEC, {"event": "run_started"})
    store.checkpoint("run_old", _record(0, 0), {"event": "node_finished"}, 1.0)
    store.finish("run_old", "completed", {"event": "run_completed"}, result={})
    store.create("run_live", "", SPEC, {"event": "run_started"})
    store.put_response("resp_old", "", {}, run_id="run_old")
    store.put_response("resp_live", "", {}, run_id="run_live")  # its run still runs: kept
    store.put_response("resp_plain", "", {})
    cutoff = time.time() + 1
    assert store.expire(cutoff) == 3  # run_old with resp_old, and resp_plain
    assert store.get("run_old") is None and store.records("run_old") == [] and store.events("run_old") == []
    assert store.get_response("resp_old") is None and store.get_response("resp_plain") is None
    assert store.get_response("resp_live") is not None and store.get("run_live") is not None
    assert store.expire(cutoff) == 0


def test_a_checkpoint_again_replaces_the_node(store: RunStore) -> None:
    store.create("run_a", "", SPEC, {"event": "run_started"})
    store.checkpoint("run_a", _record(1, 0, tokens=3), {"event": "node_finished"}, 1.0)
    store.checkpoint("run_a", _record(1, 0, tokens=9), {"event": "node_finished"}, 2.0)
    assert [r.completion_tokens for r in store.records("run_a")] == [9]


def test_an_idempotency_key_creates_once_per_owner(store: RunStore) -> None:
    assert store.create("run_1", "alice", SPEC, {"event": "run_started"}, idempotency=("k1", "d1")) is None
    again = store.create("run_2", "alice", SPEC, {"event": "run_started"}, idempotency=("k1", "d1"))
    assert again is not None and (again.object_id, again.same_body) == ("run_1", True)
    assert store.get("run_2") is None  # nothing written
    other = store.create("run_3", "alice", SPEC, {"event": "run_started"}, idempotency=("k1", "d2"))
    assert other is not None and (other.object_id, other.same_body) == ("run_1", False)
    assert store.create("run_4", "bob", SPEC, {"event": "run_started"}, idempotency=("k1", "d1")) is None
    found = store.idempotent("alice", "k1", "d1")
    assert found is not None and found.object_id == "run_1"
    assert store.idempotent("alice", "k2", "d1") is None
    assert store.idempotent("alice", "k\ud800", "d1") is None  # a key no store can hold names nothing


def test_a_background_response_is_written_with_its_run_and_goes_with_it(store: RunStore) -> None:
    store.create("resp_r", "alice", SPEC, {"event": "run_started"}, response={"status": "queued"},
                 idempotency=("k", "d"))
    found = store.get_response("resp_r")
    assert found is not None and found[2:] == ("resp_r", {"status": "queued"})
    assert store.delete_response("resp_r") is True
    assert store.get("resp_r") is None and store.idempotent("alice", "k", "d") is None


def test_nothing_is_logged_after_the_terminal_event(store: RunStore) -> None:
    store.create("run_a", "", SPEC, {"event": "run_started"})
    done = {"event": "round_completed", "round": 0}
    assert store.checkpoint("run_a", _record(0, 0), {"event": "node_finished"}, 1.0, then=done) == 3
    assert store.checkpoint("run_a", _record(0, 1), {"event": "node_finished"}, 1.0, then=done) == 4  # once
    assert store.append("run_a", {"event": "final_started"}, once=True) == 5
    assert store.append("run_a", {"event": "final_started"}, once=True) is None
    store.finish("run_a", "cancelled", {"event": "run_cancelled"})
    assert store.checkpoint("run_a", _record(1, 0), {"event": "node_finished"}, 2.0) is None
    assert store.append("run_a", {"event": "round_completed"}) is None
    assert [e["event"] for _, e in store.events("run_a")] == [
        "run_started", "node_finished", "round_completed", "node_finished", "final_started", "run_cancelled"]
    assert len(store.records("run_a")) == 2


def test_a_quarantined_run_ends_failed(store: RunStore) -> None:
    store.create("run_q", "", SPEC, {"event": "run_started"})
    assert store.quarantine("run_q", "bad JSON") == 2
    run = store.get("run_q")
    assert run is not None and run.status == "failed" and run.error["error"]["code"] == "store_corrupt"
    assert store.quarantine("run_q", "again") is None


def _corrupt_node(store: RunStore, run_id: str) -> None:
    """A checkpoint row that does not parse, written behind the store's back."""
    sql = "INSERT INTO nodes (run_id, round, idx, record) VALUES ('{}', 9, 9, '{{not json')".format(run_id)
    if isinstance(store, PgStore):
        with psycopg.connect(store.url) as conn:
            conn.execute(sql)
    else:
        store._db.execute(sql)  # type: ignore[attr-defined]


def test_a_corrupt_checkpoint_counts_as_none_and_its_records_say_so(store: RunStore) -> None:
    from mrsa.service.runs.store import StoreError

    store.create("run_c", "", SPEC, {"event": "run_started"})
    store.checkpoint("run_c", _record(0, 0), {"event": "node_finished"}, 1.0)
    _corrupt_node(store, "run_c")
    progress = store.progress("run_c")
    assert (progress.nodes, progress.completion_tokens) == (1, 5)
    with pytest.raises(StoreError) as info:
        store.records("run_c")
    assert info.value.status == 500 and info.value.code == "store_corrupt"


# ------------------------------------------------------------------------- PostgreSQL only


def _pg(url: str, replica: str, lease_s: float = 30) -> PgStore:
    return PgStore(url, replica=replica, lease_s=lease_s)


def test_the_schema_is_migrated_once_and_a_newer_one_is_refused(postgres_url: str) -> None:
    stores = []
    errors: list[BaseException] = []

    def open_one(i: int) -> None:
        try:
            stores.append(_pg(postgres_url, f"r{i}"))
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=open_one, args=(i,)) for i in range(4)]  # replicas starting together
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(stores) == 4
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(pg_store.SCHEMA_VERSION,)]
        conn.execute("INSERT INTO schema_version VALUES (%s)", (pg_store.SCHEMA_VERSION + 1,))
    for s in stores:
        s.close()
    with pytest.raises(SchemaTooNew):
        _pg(postgres_url, "old-server")


def test_a_run_is_leased_to_its_creator_until_its_lease_expires(postgres_url: str) -> None:
    a, b = _pg(postgres_url, "a", lease_s=1.0), _pg(postgres_url, "b", lease_s=30)
    try:
        a.create("run_x", "", SPEC, {"event": "run_started"})
        a.set_status("run_x", "running", {"event": "run_running"})
        a.checkpoint("run_x", _record(0, 0), {"event": "node_finished"}, 1.0)
        assert b.claim() == ([], [])  # a holds it
        assert a.heartbeat(["run_x"]) == {"run_x"}
        deadline = time.monotonic() + 30
        claimed = []
        while not claimed and time.monotonic() < deadline:  # a stops renewing: it "died"
            claimed = b.claim()[0]
            time.sleep(0.1)
        assert [r.id for r in claimed] == ["run_x"] and claimed[0].status == "running"
        assert b.claim() == ([], [])  # claimed once
        # a wakes up: it holds nothing any more and every write of its executor is refused.
        assert a.heartbeat(["run_x"]) == set()
        with pytest.raises(LeaseLost):
            a.checkpoint("run_x", _record(0, 1), {"event": "node_finished"}, 2.0)
        with pytest.raises(LeaseLost):
            a.append("run_x", {"event": "round_completed"})
        with pytest.raises(LeaseLost):
            a.finish("run_x", "completed", {"event": "run_completed"}, result={})
        assert b.append("run_x", {"event": "run_resumed"}) == 4
        assert b.finish("run_x", "completed", {"event": "run_completed"}, result={"by": "b"}) == 5
        assert [e["event"] for _, e in b.events("run_x")] == [
            "run_started", "run_running", "node_finished", "run_resumed", "run_completed"]
        assert [r.index for r in b.records("run_x")] == [0]
        assert b.heartbeat(["run_x"]) == set()  # ended: no lease to renew
    finally:
        a.close()
        b.close()


def test_concurrent_claims_take_each_run_once(postgres_url: str) -> None:
    dead = _pg(postgres_url, "dead", lease_s=30)
    for i in range(40):
        dead.create(f"run_{i:02d}", "", SPEC, {"event": "run_started"})
    dead.release([f"run_{i:02d}" for i in range(40)])  # as a clean shutdown does
    dead.close()
    replicas = [_pg(postgres_url, f"r{i}") for i in range(4)]
    taken: dict[str, list[str]] = {r.replica: [] for r in replicas}

    def take(store: PgStore) -> None:
        while batch := store.claim(limit=3)[0]:
            taken[store.replica] += [r.id for r in batch]

    threads = [threading.Thread(target=take, args=(r,)) for r in replicas]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [run for runs in taken.values() for run in runs]
    assert sorted(everything) == [f"run_{i:02d}" for i in range(40)]  # every run, none twice
    for r in replicas:
        r.close()


def test_any_replica_cancels_and_the_executor_sees_it_at_its_heartbeat(postgres_url: str) -> None:
    a, b = _pg(postgres_url, "a"), _pg(postgres_url, "b")
    try:
        a.create("run_c", "", SPEC, {"event": "run_started"})
        assert b.finish("run_c", "cancelled", {"event": "run_cancelled"}) == 2
        assert a.heartbeat(["run_c"]) == set()
        assert a.checkpoint("run_c", _record(0, 0), {"event": "node_finished"}, 1.0) is None  # nothing after the end
        assert [e["event"] for _, e in a.events("run_c")] == ["run_started", "run_cancelled"]
    finally:
        a.close()
        b.close()


def test_appended_events_wake_the_other_replicas(postgres_url: str) -> None:
    writer, follower = _pg(postgres_url, "writer"), _pg(postgres_url, "follower")
    woken: list[str | None] = []
    arrived = threading.Event()

    def wake(run_id: str | None) -> None:
        woken.append(run_id)
        arrived.set()

    try:
        follower.subscribe(wake)
        writer.create("run_n", "", SPEC, {"event": "run_started"})
        deadline = time.monotonic() + 30
        while "run_n" not in woken and time.monotonic() < deadline:  # LISTEN may start after the first write
            arrived.wait(0.5)
            arrived.clear()
            writer.append("run_n", {"event": "tick"})
        assert "run_n" in woken
    finally:
        writer.close()
        follower.close()


def test_a_store_whose_database_went_away_answers_503_and_loses_nothing() -> None:
    """The database stops under a replica: calls fail as 503 store_unavailable (never a 500, nor
    a request held for long); once it is back the pool reconnects and what was committed is all
    there."""
    from mrsa.service.runs.store import StoreError
    from tests.postgres import PostgresServer

    with PostgresServer() as server:
        store = _pg(server.url, "r")
        store.create("run_a", "", SPEC, {"event": "run_started"})
        server.stop()
        with pytest.raises(StoreError) as info:
            store.get("run_a")
        assert info.value.status == 503 and info.value.code == "store_unavailable"
        server.start()  # the same data
        deadline = time.monotonic() + 60
        while True:  # the pool replaces its broken connections
            try:
                run = store.get("run_a")
                break
            except StoreError:
                assert time.monotonic() < deadline, "the store did not come back"
                time.sleep(0.5)
        assert run is not None and [e["event"] for _, e in store.events("run_a")] == ["run_started"]
        store.close()
