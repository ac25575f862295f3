"""Durable runs on disk: one SQLite file (WAL) with every background run, the checkpoint of each
finished node and the run's event log.

Why SQLite: the Markovian state of a run is small (N tails), so a checkpoint per finished node is
a few kilobytes and one transaction; SQLite gives atomic, crash-safe writes in one file with the
standard library. Each write is one ``BEGIN IMMEDIATE ... COMMIT`` with ``synchronous=FULL``:
after a crash (even ``kill -9`` in the middle of a write) the file holds exactly the committed
transactions. A node's checkpoint and its progress event are written in the same transaction,
so the event log and the checkpoints never disagree.

Tables:

* ``runs``: id, owner (a hash of the API key, never the key), status (``queued``, ``running``,
  ``completed``, ``failed``, ``cancelled``), the spec to (re)start it (messages, parameters
  with the seed fixed), the result or error body once it ended, the run's age (``elapsed_s``).
* ``nodes``: the :class:`~rsa.events.NodeRecord` of every finished (or failed) trace.
* ``events``: the run's progress events, numbered from 1 per run: the ids of the SSE stream,
  so a client resumes it with ``Last-Event-ID``.
* ``responses``: what ``/v1/responses`` keeps of a stored response (its request, its
  conversation, its body once delivered); a background response also names its run.

Retention: :meth:`Store.expire` removes the runs that ended before a cutoff (with their nodes
and events) and the responses created before it; SQLite reuses the freed pages, so a server
under constant load keeps a file of constant size.

:class:`Store` is synchronous and thread-safe; :class:`AsyncStore` runs its calls on one
dedicated thread, which keeps them off the event loop and in submission order.

One server owns a file: opening takes an exclusive ``flock`` on ``<path>.lock`` for the life of
the store, so a second server pointed at the same file refuses to start instead of resuming the
first one's runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mrsa.rsa.events import NodeRecord

T = TypeVar("T")

TERMINAL = frozenset({"completed", "failed", "cancelled"})

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id        TEXT PRIMARY KEY,
    owner     TEXT NOT NULL,
    status    TEXT NOT NULL,
    created   REAL NOT NULL,
    updated   REAL NOT NULL,
    spec      TEXT NOT NULL,
    result    TEXT,
    error     TEXT,
    elapsed_s REAL NOT NULL DEFAULT 0,
    attempts  INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS nodes (
    run_id TEXT NOT NULL,
    round  INTEGER NOT NULL,
    idx    INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (run_id, round, idx)
);
CREATE TABLE IF NOT EXISTS events (
    run_id TEXT NOT NULL,
    seq    INTEGER NOT NULL,
    data   TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status);
CREATE TABLE IF NOT EXISTS responses (
    id      TEXT PRIMARY KEY,
    owner   TEXT NOT NULL,
    created REAL NOT NULL,
    run_id  TEXT,
    data    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_updated ON runs (updated);
CREATE INDEX IF NOT EXISTS responses_by_created ON responses (created);
"""


class StoreLocked(RuntimeError):
    """Another process holds this store file."""


@dataclass
class StoredRun:
    id: str
    owner: str
    status: str
    created: float
    updated: float
    spec: dict[str, Any]
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    elapsed_s: float
    attempts: int

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True)
class Progress:
    """What the checkpoints of a run add up to."""

    nodes: int
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    cached_tokens: int = 0


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class Store:
    """The SQLite file. Every method is one transaction."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(f"{self.path}.lock", "a+b")  # noqa: SIM115 (held for life)
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise StoreLocked(f"{self.path} is in use by another server") from None
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._mutex = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._mutex:
            self._db.close()
        self._lock_file.close()

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._mutex:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                out = fn(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return out

    @staticmethod
    def _append(db: sqlite3.Connection, run_id: str, event: dict[str, Any]) -> int:
        (last,) = db.execute("SELECT COALESCE(MAX(seq), 0) FROM events WHERE run_id = ?", (run_id,)).fetchone()
        db.execute("INSERT INTO events (run_id, seq, data) VALUES (?, ?, ?)", (run_id, last + 1, _dumps(event)))
        return last + 1

    # ------------------------------------------------------------------------ writes

    def create(self, run_id: str, owner: str, spec: dict[str, Any], first_event: dict[str, Any]) -> None:
        now = time.time()

        def tx(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO runs (id, owner, status, created, updated, spec) VALUES (?, ?, 'queued', ?, ?, ?)",
                (run_id, owner, now, now, _dumps(spec)),
            )
            self._append(db, run_id, first_event)

        self._tx(tx)

    def set_status(self, run_id: str, status: str, event: dict[str, Any] | None = None) -> int | None:
        """Move a run that has not ended to ``status``; no-op (None) once it ended."""

        def tx(db: sqlite3.Connection) -> int | None:
            cur = db.execute(
                "UPDATE runs SET status = ?, updated = ?, attempts = attempts + (? = 'running') "
                "WHERE id = ? AND status NOT IN ('completed', 'failed', 'cancelled')",
                (status, time.time(), status, run_id),
            )
            if cur.rowcount == 0:
                return None
            return self._append(db, run_id, event) if event is not None else 0

        return self._tx(tx)

    def checkpoint(self, run_id: str, record: NodeRecord, event: dict[str, Any], elapsed_s: float) -> int:
        """A finished node: its record and its progress event, in one transaction."""

        def tx(db: sqlite3.Connection) -> int:
            db.execute(
                "INSERT OR REPLACE INTO nodes (run_id, round, idx, record) VALUES (?, ?, ?, ?)",
                (run_id, record.round, record.index, _dumps(dataclasses.asdict(record))),
            )
            db.execute(
                "UPDATE runs SET elapsed_s = MAX(elapsed_s, ?), updated = ? WHERE id = ?",
                (elapsed_s, time.time(), run_id),
            )
            return self._append(db, run_id, event)

        return self._tx(tx)

    def append(self, run_id: str, event: dict[str, Any]) -> int:
        return self._tx(lambda db: self._append(db, run_id, event))

    def finish(
        self, run_id: str, status: str, event: dict[str, Any], *,
        result: dict[str, Any] | None = None, error: dict[str, Any] | None = None,
    ) -> int | None:
        """End a run (completed, failed or cancelled) with its last event; None if it had ended."""
        assert status in TERMINAL

        def tx(db: sqlite3.Connection) -> int | None:
            cur = db.execute(
                "UPDATE runs SET status = ?, updated = ?, result = ?, error = ? "
                "WHERE id = ? AND status NOT IN ('completed', 'failed', 'cancelled')",
                (status, time.time(), None if result is None else _dumps(result),
                 None if error is None else _dumps(error), run_id),
            )
            return self._append(db, run_id, event) if cur.rowcount else None

        return self._tx(tx)

    def put_response(self, response_id: str, owner: str, data: dict[str, Any], run_id: str | None = None) -> None:
        """Keep (or replace) a stored response of ``/v1/responses``."""
        self._tx(lambda db: db.execute(
            "INSERT OR REPLACE INTO responses (id, owner, created, run_id, data) VALUES (?, ?, "
            "COALESCE((SELECT created FROM responses WHERE id = ?), ?), ?, ?)",
            (response_id, owner, response_id, time.time(), run_id, _dumps(data)),
        ))

    def delete_response(self, response_id: str) -> bool:
        """Remove a response and the run behind it; False if there was none."""

        def tx(db: sqlite3.Connection) -> bool:
            row = db.execute("SELECT run_id FROM responses WHERE id = ?", (response_id,)).fetchone()
            if row is None:
                return False
            db.execute("DELETE FROM responses WHERE id = ?", (response_id,))
            if row[0] is not None:
                self._delete_runs(db, [row[0]])
            return True

        return self._tx(tx)

    @staticmethod
    def _delete_runs(db: sqlite3.Connection, run_ids: list[str]) -> None:
        for table, column in (("nodes", "run_id"), ("events", "run_id"), ("runs", "id")):
            db.executemany(f"DELETE FROM {table} WHERE {column} = ?", [(r,) for r in run_ids])

    def expire(self, cutoff: float) -> int:
        """Remove runs that ended before ``cutoff`` (unix time) and responses created before it
        (but not one whose run still runs), with everything they own; returns how many went."""

        def tx(db: sqlite3.Connection) -> int:
            runs = [r for (r,) in db.execute(
                "SELECT id FROM runs WHERE updated < ? AND status IN ('completed', 'failed', 'cancelled')",
                (cutoff,),
            )]
            responses = [(r, run) for r, run in db.execute(
                "SELECT id, run_id FROM responses AS r WHERE created < ? AND NOT EXISTS "
                "(SELECT 1 FROM runs WHERE id = r.run_id AND status IN ('queued', 'running'))", (cutoff,))]
            # A response's run goes with it, and a run's response with its run.
            runs += [run for _, run in responses if run is not None and run not in runs]
            db.executemany("DELETE FROM responses WHERE id = ? OR run_id = ?",
                           [(r, r) for r, _ in responses] + [(r, r) for r in runs])
            self._delete_runs(db, runs)
            return len(runs) + len(responses)

        return self._tx(tx)

    # ------------------------------------------------------------------------ reads

    def get_response(self, response_id: str) -> tuple[str, float, str | None, dict[str, Any]] | None:
        """``(owner, created, run_id, data)`` of a stored response."""
        with self._mutex:
            row = self._db.execute(
                "SELECT owner, created, run_id, data FROM responses WHERE id = ?", (response_id,)
            ).fetchone()
        return None if row is None else (row[0], row[1], row[2], json.loads(row[3]))

    def get(self, run_id: str) -> StoredRun | None:
        with self._mutex:
            row = self._db.execute(
                "SELECT id, owner, status, created, updated, spec, result, error, elapsed_s, attempts "
                "FROM runs WHERE id = ?", (run_id,),
            ).fetchone()
        return None if row is None else self._run(row)

    @staticmethod
    def _run(row: tuple) -> StoredRun:
        return StoredRun(
            id=row[0], owner=row[1], status=row[2], created=row[3], updated=row[4],
            spec=json.loads(row[5]),
            result=None if row[6] is None else json.loads(row[6]),
            error=None if row[7] is None else json.loads(row[7]),
            elapsed_s=row[8], attempts=row[9],
        )

    def unfinished(self) -> list[StoredRun]:
        """Runs that were queued or running when the last server stopped, oldest first."""
        with self._mutex:
            rows = self._db.execute(
                "SELECT id, owner, status, created, updated, spec, result, error, elapsed_s, attempts "
                "FROM runs WHERE status IN ('queued', 'running') ORDER BY created"
            ).fetchall()
        return [self._run(r) for r in rows]

    def records(self, run_id: str) -> list[NodeRecord]:
        with self._mutex:
            rows = self._db.execute(
                "SELECT record FROM nodes WHERE run_id = ? ORDER BY round, idx", (run_id,)
            ).fetchall()
        return [NodeRecord(**json.loads(r[0])) for r in rows]

    def progress(self, run_id: str) -> Progress:
        with self._mutex:
            row = self._db.execute(
                "SELECT COUNT(*), "
                "COALESCE(SUM(json_extract(record, '$.prompt_tokens')), 0), "
                "COALESCE(SUM(json_extract(record, '$.completion_tokens')), 0), "
                "COALESCE(SUM(json_extract(record, '$.cached_tokens')), 0) "  # absent in older records
                "FROM nodes WHERE run_id = ?", (run_id,),
            ).fetchone()
        return Progress(nodes=row[0], prompt_tokens=row[1], completion_tokens=row[2], reasoning_tokens=row[2],
                        cached_tokens=row[3])

    def events(self, run_id: str, after: int = 0, limit: int = 1000) -> list[tuple[int, dict[str, Any]]]:
        with self._mutex:
            rows = self._db.execute(
                "SELECT seq, data FROM events WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (run_id, after, limit),
            ).fetchall()
        return [(seq, json.loads(data)) for seq, data in rows]

    def integrity(self) -> str:
        with self._mutex:
            return self._db.execute("PRAGMA integrity_check").fetchone()[0]


class AsyncStore:
    """:class:`Store` for the event loop: every call runs on one dedicated thread, in order."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mrsa-store")

    async def call(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, lambda: fn(*args, **kw))

    def __getattr__(self, name: str) -> Callable[..., Any]:
        fn = getattr(self.store, name)

        async def bound(*args: Any, **kw: Any) -> Any:
            return await self.call(fn, *args, **kw)

        return bound

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self.store.close()
