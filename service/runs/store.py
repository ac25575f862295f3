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

* ``idempotency``: the ``Idempotency-Key`` of a creating request, per owner, with a digest of
  its body and the run (or background response) it created; written in the run's own
  transaction, so a crash between accepting a run and answering leaves both or neither.

A run's terminal event (``run_completed``, ``run_failed``, ``run_cancelled``) is its last: every
write checks the run's status in its own transaction and writes nothing once it ended, so a
checkpoint that races a cancel is dropped, never logged after ``run_cancelled``.

Strings are stored as UTF-8; a lone surrogate (legal in JSON, and so in a Python string, but
not in UTF-8) is stored as U+FFFD, the replacement character. Requests with one are refused at
the door (:mod:`~mrsa.service.json_body`); what reaches the store this way is model output.

Errors: a failed write or read raises :class:`StoreError`, an envelope of its own: 503
``store_unavailable`` when SQLite cannot write now (disk full, file locked, I/O), 500
``store_corrupt`` for a row that does not parse. :meth:`Store.unfinished` leaves such a row aside
so one bad record never stops a start-up; :meth:`Store.quarantine` ends its run as failed.

Retention: :meth:`Store.expire` removes the runs that ended before a cutoff (with their nodes,
events and idempotency keys) and the responses created before it, in a few set-wise statements
whatever the batch's size; SQLite reuses the freed pages, and the write-ahead log is truncated
after an expiry that removed something (and kept under ``journal_size_limit`` otherwise), so a
server under constant load keeps files of constant size.

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
from mrsa.service.errors import APIError
from mrsa.service.json_body import repaired_json

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
CREATE INDEX IF NOT EXISTS responses_by_run ON responses (run_id);
CREATE TABLE IF NOT EXISTS idempotency (
    owner     TEXT NOT NULL,
    key       TEXT NOT NULL,
    digest    TEXT NOT NULL,
    object_id TEXT NOT NULL,
    created   REAL NOT NULL,
    PRIMARY KEY (owner, key)
);
CREATE INDEX IF NOT EXISTS idempotency_by_object ON idempotency (object_id);
"""

WAL_LIMIT_BYTES = 16 << 20
"""``journal_size_limit``: what the write-ahead log is cut back to after a checkpoint."""


class StoreLocked(RuntimeError):
    """Another process holds this store file."""


class StoreError(APIError):
    """The store could not read or write: the request's envelope (503 or 500)."""

    @classmethod
    def of(cls, exc: Exception) -> StoreError:
        if isinstance(exc, sqlite3.OperationalError):  # disk full, database locked, I/O error
            return cls(f"The run store cannot be written now ({exc}); retry later.", status=503,
                       type="server_error", code="store_unavailable", headers={"Retry-After": "5"})
        return cls(f"The run store failed: {type(exc).__name__}", status=500, type="server_error",
                   code="store_error")

    @classmethod
    def corrupt(cls, what: str, exc: Exception) -> StoreError:
        return cls(f"A stored record of {what} cannot be read ({type(exc).__name__}).", status=500,
                   type="server_error", code="store_corrupt")


@dataclass(frozen=True)
class Idempotent:
    """What an ``Idempotency-Key`` already names: the object it created, and whether the
    request that did had the same body."""

    object_id: str
    same_body: bool


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
    """Compact JSON as UTF-8 can hold it: a lone surrogate becomes U+FFFD."""
    return repaired_json(json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def _storable(*keys: str) -> bool:
    """Whether SQLite can look these keys up (a key with a lone surrogate names nothing)."""
    try:
        for key in keys:
            key.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _loads(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise StoreError.corrupt(what, exc) from None


RUN_COLUMNS = "id, owner, status, created, updated, spec, result, error, elapsed_s, attempts"


def run_from_row(row: tuple) -> StoredRun:
    """A :class:`StoredRun` from a row of :data:`RUN_COLUMNS` (either store's)."""
    what = f"run {row[0]}"
    return StoredRun(
        id=row[0], owner=row[1], status=row[2], created=row[3], updated=row[4],
        spec=_loads(row[5], what),
        result=None if row[6] is None else _loads(row[6], what),
        error=None if row[7] is None else _loads(row[7], what),
        elapsed_s=row[8], attempts=row[9],
    )


def runs_from_rows(rows: list[tuple]) -> tuple[list[StoredRun], list[tuple[str, str]]]:
    """The readable runs of ``rows``, oldest first, and ``(id, why)`` of the others (for
    ``quarantine``)."""
    runs, bad = [], []
    for row in sorted(rows, key=lambda r: r[3]):
        try:
            runs.append(run_from_row(row))
        except StoreError as exc:
            bad.append((row[0], exc.message))
    return runs, bad


def records_from_rows(run_id: str, rows: list[tuple]) -> list[NodeRecord]:
    """A run's checkpoints from its ``record`` column, as stored (round, index order)."""
    try:
        return [NodeRecord(**json.loads(r[0])) for r in rows]
    except (ValueError, TypeError) as exc:
        raise StoreError.corrupt(f"run {run_id}'s checkpoints", exc) from None


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
        self._db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._mutex:
            self._db.close()
        self._lock_file.close()

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._mutex:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    out = fn(self._db)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:  # a failed COMMIT (disk full) leaves it open
                    self._db.execute("ROLLBACK")
                raise StoreError.of(exc) from exc
            return out

    def _read(self, sql: str, args: tuple) -> list[tuple]:
        with self._mutex:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise StoreError.of(exc) from exc

    @staticmethod
    def _append(db: sqlite3.Connection, run_id: str, event: dict[str, Any]) -> int:
        (last,) = db.execute("SELECT COALESCE(MAX(seq), 0) FROM events WHERE run_id = ?", (run_id,)).fetchone()
        db.execute("INSERT INTO events (run_id, seq, data) VALUES (?, ?, ?)", (run_id, last + 1, _dumps(event)))
        return last + 1

    @staticmethod
    def _live(db: sqlite3.Connection, run_id: str) -> bool:
        """Whether the run exists and has not ended: only then may anything be added to it."""
        row = db.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
        return row is not None and row[0] not in TERMINAL

    @staticmethod
    def _logged(db: sqlite3.Connection, run_id: str, event: dict[str, Any]) -> bool:
        """Whether the log already holds an event of this name (and round, if it has one)."""
        return db.execute(
            "SELECT 1 FROM events WHERE run_id = ? AND json_extract(data, '$.event') = ? "
            "AND json_extract(data, '$.round') IS ?", (run_id, event.get("event"), event.get("round")),
        ).fetchone() is not None

    # ------------------------------------------------------------------------ writes

    def create(
        self, run_id: str, owner: str, spec: dict[str, Any], first_event: dict[str, Any], *,
        response: dict[str, Any] | None = None, idempotency: tuple[str, str] | None = None,
    ) -> Idempotent | None:
        """A new queued run with its first event; with ``response``, the record of the
        background response it is (same id); with ``idempotency`` (key, body digest), the key,
        unless the owner used it before: then nothing is written and the earlier object is
        returned."""
        now = time.time()

        def tx(db: sqlite3.Connection) -> Idempotent | None:
            if idempotency is not None:
                key, digest = idempotency
                row = db.execute("SELECT object_id, digest FROM idempotency WHERE owner = ? AND key = ?",
                                 (owner, key)).fetchone()
                if row is not None:
                    return Idempotent(row[0], row[1] == digest)
                db.execute("INSERT INTO idempotency (owner, key, digest, object_id, created) VALUES (?, ?, ?, ?, ?)",
                           (owner, key, digest, run_id, now))
            db.execute(
                "INSERT INTO runs (id, owner, status, created, updated, spec) VALUES (?, ?, 'queued', ?, ?, ?)",
                (run_id, owner, now, now, _dumps(spec)),
            )
            self._append(db, run_id, first_event)
            if response is not None:
                db.execute("INSERT INTO responses (id, owner, created, run_id, data) VALUES (?, ?, ?, ?, ?)",
                           (run_id, owner, now, run_id, _dumps(response)))
            return None

        return self._tx(tx)

    def idempotent(self, owner: str, key: str, digest: str) -> Idempotent | None:
        """The object ``key`` of ``owner`` created, if it did."""
        if not _storable(key):
            return None
        rows = self._read("SELECT object_id, digest FROM idempotency WHERE owner = ? AND key = ?", (owner, key))
        return Idempotent(rows[0][0], rows[0][1] == digest) if rows else None

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

    def checkpoint(self, run_id: str, record: NodeRecord, event: dict[str, Any], elapsed_s: float,
                   then: dict[str, Any] | None = None) -> int | None:
        """A finished node: its record and its progress event (and ``then``, the event it
        caused, such as its round's ``round_completed``), in one transaction; None (nothing
        written) once the run ended."""

        def tx(db: sqlite3.Connection) -> int | None:
            if not self._live(db, run_id):
                return None
            db.execute(
                "INSERT OR REPLACE INTO nodes (run_id, round, idx, record) VALUES (?, ?, ?, ?)",
                (run_id, record.round, record.index, _dumps(dataclasses.asdict(record))),
            )
            db.execute(
                "UPDATE runs SET elapsed_s = MAX(elapsed_s, ?), updated = ? WHERE id = ?",
                (elapsed_s, time.time(), run_id),
            )
            seq = self._append(db, run_id, event)
            if then is not None and not self._logged(db, run_id, then):
                seq = self._append(db, run_id, then)
            return seq

        return self._tx(tx)

    def append(self, run_id: str, event: dict[str, Any], *, once: bool = False) -> int | None:
        """Log a progress event of a run that has not ended (None, nothing written, once it
        did); ``once``: not if the log holds one of its name (and round) already, as for the
        ``final_started`` of a run resumed after its final call began."""

        def tx(db: sqlite3.Connection) -> int | None:
            if not self._live(db, run_id) or (once and self._logged(db, run_id, event)):
                return None
            return self._append(db, run_id, event)

        return self._tx(tx)

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

    def quarantine(self, run_id: str, why: str) -> int | None:
        """End a run whose stored record cannot be read as failed (``store_corrupt``), so the
        next start-up does not try it again; its rows stay for inspection until they expire."""
        error = {"error": {"message": f"This run's stored record cannot be read: {why}", "type": "server_error",
                           "param": None, "code": "store_corrupt"}}
        return self.finish(run_id, "failed", {"event": "run_failed", **error}, error=error)

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
            db.execute("DELETE FROM idempotency WHERE object_id = ?", (response_id,))
            if row[0] is not None:
                for table, column in (("nodes", "run_id"), ("events", "run_id"), ("idempotency", "object_id"),
                                      ("runs", "id")):
                    db.execute(f"DELETE FROM {table} WHERE {column} = ?", (row[0],))
            return True

        return self._tx(tx)

    def expire(self, cutoff: float) -> int:
        """Remove runs that ended before ``cutoff`` (unix time) and responses created before it
        (but not one whose run still runs), with everything they own; returns how many went.
        Set-wise: a few statements over indexed columns, whatever the batch's size; the
        write-ahead log is truncated after an expiry that removed anything."""

        def tx(db: sqlite3.Connection) -> int:
            db.execute("CREATE TEMP TABLE IF NOT EXISTS doomed_runs (id TEXT PRIMARY KEY)")
            db.execute("CREATE TEMP TABLE IF NOT EXISTS doomed_responses (id TEXT PRIMARY KEY)")
            db.execute("DELETE FROM doomed_runs")
            db.execute("DELETE FROM doomed_responses")
            db.execute(
                "INSERT INTO doomed_runs SELECT id FROM runs WHERE updated < ? "
                "AND status IN ('completed', 'failed', 'cancelled')", (cutoff,))
            db.execute(
                "INSERT OR IGNORE INTO doomed_responses SELECT id FROM responses AS r WHERE created < ? AND NOT EXISTS "
                "(SELECT 1 FROM runs WHERE id = r.run_id AND status IN ('queued', 'running'))", (cutoff,))
            # A response's run goes with it, and a run's response with its run.
            db.execute("INSERT OR IGNORE INTO doomed_runs SELECT run_id FROM responses "
                       "WHERE id IN (SELECT id FROM doomed_responses) AND run_id IS NOT NULL")
            db.execute("INSERT OR IGNORE INTO doomed_responses SELECT id FROM responses "
                       "WHERE run_id IN (SELECT id FROM doomed_runs)")
            (runs,) = db.execute("SELECT COUNT(*) FROM runs WHERE id IN (SELECT id FROM doomed_runs)").fetchone()
            (responses,) = db.execute(
                "SELECT COUNT(*) FROM responses WHERE id IN (SELECT id FROM doomed_responses)").fetchone()
            db.execute("DELETE FROM responses WHERE id IN (SELECT id FROM doomed_responses)")
            for table, column in (("nodes", "run_id"), ("events", "run_id"), ("runs", "id")):
                db.execute(f"DELETE FROM {table} WHERE {column} IN (SELECT id FROM doomed_runs)")
            db.execute("DELETE FROM idempotency WHERE object_id IN (SELECT id FROM doomed_runs) "
                       "OR object_id IN (SELECT id FROM doomed_responses)")
            return runs + responses

        removed = self._tx(tx)
        if removed:
            self.truncate_wal()
        return removed

    def truncate_wal(self) -> None:
        """Copy the write-ahead log into the file and cut it to nothing."""
        with self._mutex:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error as exc:
                raise StoreError.of(exc) from exc

    # ------------------------------------------------------------------------ reads

    def get_response(self, response_id: str) -> tuple[str, float, str | None, dict[str, Any]] | None:
        """``(owner, created, run_id, data)`` of a stored response."""
        if not _storable(response_id):
            return None
        rows = self._read("SELECT owner, created, run_id, data FROM responses WHERE id = ?", (response_id,))
        if not rows:
            return None
        owner, created, run_id, data = rows[0]
        return owner, created, run_id, _loads(data, f"response {response_id}")

    def get(self, run_id: str) -> StoredRun | None:
        if not _storable(run_id):
            return None
        rows = self._read(f"SELECT {RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,))
        return run_from_row(rows[0]) if rows else None

    def unfinished(self) -> tuple[list[StoredRun], list[tuple[str, str]]]:
        """Runs that were queued or running when the last server stopped, oldest first; and
        ``(id, why)`` of those among them whose stored row cannot be read (for
        :meth:`quarantine`), which a start-up sets aside instead of failing on."""
        return runs_from_rows(self._read(f"SELECT {RUN_COLUMNS} FROM runs WHERE status IN ('queued', 'running')", ()))

    def records(self, run_id: str) -> list[NodeRecord]:
        return records_from_rows(
            run_id, self._read("SELECT record FROM nodes WHERE run_id = ? ORDER BY round, idx", (run_id,))
        )

    def progress(self, run_id: str) -> Progress:
        (row,) = self._read(
            "SELECT COUNT(*), "
            "COALESCE(SUM(json_extract(record, '$.prompt_tokens')), 0), "
            "COALESCE(SUM(json_extract(record, '$.completion_tokens')), 0), "
            "COALESCE(SUM(json_extract(record, '$.cached_tokens')), 0) "  # absent in older records
            "FROM nodes WHERE run_id = ? AND json_valid(record)", (run_id,),  # a corrupt one counts as none
        )
        return Progress(nodes=row[0], prompt_tokens=row[1], completion_tokens=row[2], reasoning_tokens=row[2],
                        cached_tokens=row[3])

    def events(self, run_id: str, after: int = 0, limit: int = 1000) -> list[tuple[int, dict[str, Any]]]:
        rows = self._read("SELECT seq, data FROM events WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                          (run_id, after, limit))
        return [(seq, _loads(data, f"run {run_id}'s event {seq}")) for seq, data in rows]

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
