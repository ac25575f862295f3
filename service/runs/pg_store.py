"""Durable runs in PostgreSQL: the store several API replicas share.

The same tables and the same methods as the SQLite :class:`~mrsa.service.runs.store.Store`
(runs, node checkpoints, the event log, stored responses; one transaction per method), plus what
sharing needs:

* **Leases.** A run belongs to the replica named in ``lease_owner`` until ``lease_expires``. The
  replica that creates a run holds its lease; it renews it with :meth:`PgStore.heartbeat` while
  it executes the run. A replica that dies stops renewing, and once the lease expired another
  one takes the run with :meth:`PgStore.claim` (``SELECT ... FOR UPDATE SKIP LOCKED``: two
  replicas claiming at once never take the same run, and neither waits on the other) and
  resumes it from its last checkpoint. Lease times are the database's clock
  (``clock_timestamp()``), so clock skew between replicas cannot hand a run out early.
* **Fencing.** Every write a run's executor makes (status, checkpoint, event, the end) checks in
  the same transaction that this replica still holds the lease and the run has not ended; a
  replica that lost its lease (stalled past it, then woke up) gets :class:`LeaseLost` and
  writes nothing, so a run completes once, with one ``run_completed`` event. Cancelling is the
  exception: any replica may end a run as ``cancelled``; its executor sees the run gone at its
  next heartbeat and stops.
* **Followers on every replica.** Each appended event sends ``NOTIFY mrsa_events, '<run id>'``
  in its own transaction (PostgreSQL delivers it at commit, after the rows are visible);
  :meth:`PgStore.subscribe` runs one ``LISTEN`` connection per replica that wakes that
  replica's followers. A follower reads the log by sequence number after the last one it sent,
  so it sees every event once and in order whatever the notifications do; a lost notification
  (the listening connection dropped) costs latency, not events: the replica's followers are
  all woken on reconnect, and they re-read every heartbeat anyway.
* **Schema versions.** :data:`MIGRATIONS` is the schema's history; the service applies the
  missing ones at start-up under an advisory lock (replicas starting together apply each once)
  and refuses a database migrated by a newer server.

Why psycopg 3: the maintained PostgreSQL driver for Python, with server-side parameter binding,
``LISTEN``/``NOTIFY`` as a plain generator (``Connection.notifies``), and a binary wheel that
carries its own libpq (no compiler, no system library). Why psycopg_pool: the same authors'
pool checks a connection before lending it and replaces a broken one, so a Postgres restart or
failover costs the calls in flight, not the replica.

Like :class:`~mrsa.service.runs.store.Store` this class is synchronous and thread-safe; the
manager drives it through :class:`~mrsa.service.runs.store.AsyncStore` (one thread, calls in
order).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from mrsa.rsa.events import NodeRecord
from mrsa.service.runs.store import (
    RUN_COLUMNS,
    TERMINAL,
    Idempotent,
    Progress,
    StoredRun,
    StoreError,
    _dumps,
    _loads,
    _storable,
    records_from_rows,
    run_from_row,
    runs_from_rows,
)

log = logging.getLogger(__name__)

CHANNEL = "mrsa_events"
# pg_advisory_xact_lock key of the migration: any constant the application owns.
MIGRATION_LOCK = 0x6D727361  # "mrsa"
UNFINISHED = "status IN ('queued', 'running')"
NOW = "EXTRACT(EPOCH FROM clock_timestamp())"

# The schema's history, oldest first: (version, SQL). Append, never edit a released one.
MIGRATIONS: list[tuple[int, str]] = [
    (1, """
CREATE TABLE runs (
    id            TEXT PRIMARY KEY,
    owner         TEXT NOT NULL,
    status        TEXT NOT NULL,
    created       DOUBLE PRECISION NOT NULL,
    updated       DOUBLE PRECISION NOT NULL,
    spec          TEXT NOT NULL,
    result        TEXT,
    error         TEXT,
    elapsed_s     DOUBLE PRECISION NOT NULL DEFAULT 0,
    attempts      INTEGER NOT NULL DEFAULT 0,
    lease_owner   TEXT,
    lease_expires DOUBLE PRECISION
);
CREATE INDEX runs_unfinished ON runs (created) WHERE status IN ('queued', 'running');
CREATE INDEX runs_by_updated ON runs (updated);
CREATE TABLE nodes (
    run_id TEXT NOT NULL,
    round  INTEGER NOT NULL,
    idx    INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (run_id, round, idx)
);
CREATE TABLE events (
    run_id TEXT NOT NULL,
    seq    INTEGER NOT NULL,
    data   TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE responses (
    id      TEXT PRIMARY KEY,
    owner   TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    run_id  TEXT,
    data    TEXT NOT NULL
);
CREATE INDEX responses_by_created ON responses (created);
CREATE INDEX responses_by_run ON responses (run_id);
CREATE TABLE idempotency (
    owner     TEXT NOT NULL,
    key       TEXT NOT NULL,
    digest    TEXT NOT NULL,
    object_id TEXT NOT NULL,
    created   DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (owner, key)
);
CREATE INDEX idempotency_by_object ON idempotency (object_id);
-- A stored record as JSON, or NULL where it does not parse (a corrupt row counts as none).
CREATE FUNCTION mrsa_json(t TEXT) RETURNS JSON LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN t::json;
EXCEPTION WHEN others THEN
    RETURN NULL;
END
$$;
"""),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


class LeaseLost(RuntimeError):
    """This replica no longer holds the run's lease: another one resumed it."""


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer server than this one."""


def _key(*keys: str) -> bool:
    """Whether PostgreSQL can look these keys up: UTF-8 without NUL (a key that is not names
    nothing; JSON values escape both, so only keys need the check)."""
    return _storable(*keys) and not any("\x00" in key for key in keys)


def _error(exc: psycopg.Error) -> StoreError:
    """The envelope of a failed call: 503 while the database cannot be reached or written
    (restart, failover, disk full), 500 for anything else."""
    if isinstance(exc, psycopg.OperationalError):
        return StoreError(f"The run store cannot be reached now ({type(exc).__name__}); retry later.", status=503,
                          type="server_error", code="store_unavailable", headers={"Retry-After": "5"})
    return StoreError.of(exc)


def default_replica_name() -> str:
    """Unique per process: the host, the pid and a random suffix (a restarted pod may reuse a pid)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def migrate(conn: psycopg.Connection) -> int:
    """Bring the schema to :data:`SCHEMA_VERSION`; returns the version found before."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
        found = int(row[0]) if row else 0
        if found > SCHEMA_VERSION:
            raise SchemaTooNew(f"run store schema is v{found}; this server knows up to v{SCHEMA_VERSION}")
        for version, sql in MIGRATIONS:
            if version > found:
                conn.execute(sql.encode())  # no parameters: several statements in one call
                conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
                log.info("run store schema migrated to v%d", version)
    return found


class PgStore:
    """Runs in a PostgreSQL database shared by replicas. Every method is one transaction."""

    shared = True

    def __init__(self, url: str, *, replica: str | None = None, lease_s: float = 15.0) -> None:
        self.url = url
        self.replica = replica or default_replica_name()
        self.lease_s = lease_s
        # timeout: a call waits at most this long for a connection, then answers 503 (the
        # database is away) instead of holding the request.
        self._pool = ConnectionPool(url, min_size=1, max_size=4, open=False, check=ConnectionPool.check_connection,
                                    name="mrsa-store", timeout=5.0, kwargs={"connect_timeout": 5})
        self._pool.open(wait=True, timeout=30)
        self._stop = threading.Event()
        self._listener: threading.Thread | None = None
        try:
            with self._pool.connection() as conn:
                migrate(conn)
        except BaseException:
            self._pool.close()
            raise

    def __str__(self) -> str:
        """The database, without credentials, and this replica's name (for the log)."""
        info = conninfo_to_dict(self.url)
        return f"postgresql://{info.get('host', '')}:{info.get('port', 5432)}/{info.get('dbname', '')} as {self.replica}"

    def close(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.join(10)
        self._pool.close()

    def _tx(self, fn: Callable[[psycopg.Connection], Any]) -> Any:
        try:
            with self._pool.connection() as conn, conn.transaction():
                return fn(conn)
        except psycopg.Error as exc:
            raise _error(exc) from exc

    def _read(self, sql: str, params: tuple | dict = ()) -> list[tuple]:
        try:
            with self._pool.connection() as conn:
                return conn.execute(sql, params).fetchall()
        except psycopg.Error as exc:
            raise _error(exc) from exc

    # ------------------------------------------------------------------------ events

    @staticmethod
    def _append(conn: psycopg.Connection, run_id: str, event: dict[str, Any]) -> int:
        row = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events WHERE run_id = %s", (run_id,)).fetchone()
        seq = int(row[0]) + 1 if row else 1
        conn.execute("INSERT INTO events (run_id, seq, data) VALUES (%s, %s, %s)", (run_id, seq, _dumps(event)))
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, run_id))
        return seq

    @staticmethod
    def _logged(conn: psycopg.Connection, run_id: str, event: dict[str, Any]) -> bool:
        """Whether the log already holds an event of this name (and round, if it has one)."""
        round_ = event.get("round")
        return conn.execute(
            "SELECT 1 FROM events WHERE run_id = %s AND data::json->>'event' = %s "
            "AND (data::json->>'round') IS NOT DISTINCT FROM %s",
            (run_id, event.get("event"), None if round_ is None else str(round_)),
        ).fetchone() is not None

    def _locked(self, conn: psycopg.Connection, run_id: str) -> tuple[str, str | None] | None:
        """``(status, lease_owner)`` of the run, its row locked for this transaction: one writer
        per run at a time, so event numbers never collide between replicas."""
        row = conn.execute("SELECT status, lease_owner FROM runs WHERE id = %s FOR UPDATE", (run_id,)).fetchone()
        return None if row is None else (row[0], row[1])

    def _fenced(self, conn: psycopg.Connection, run_id: str) -> bool:
        """Lock the run; False if it ended; :class:`LeaseLost` if another replica holds it."""
        found = self._locked(conn, run_id)
        if found is None or found[0] in TERMINAL:
            return False
        if found[1] is not None and found[1] != self.replica:
            raise LeaseLost(f"{run_id} is held by {found[1]}")
        return True

    # ------------------------------------------------------------------------ writes

    def create(
        self, run_id: str, owner: str, spec: dict[str, Any], first_event: dict[str, Any], *,
        response: dict[str, Any] | None = None, idempotency: tuple[str, str] | None = None,
    ) -> Idempotent | None:
        """A new queued run with its first event, its lease held by this replica; with
        ``response``, the record of the background response it is (same id); with
        ``idempotency`` (key, body digest), the key, unless the owner used it before (on any
        replica): then nothing is written and the earlier object is returned."""
        now = time.time()

        def tx(conn: psycopg.Connection) -> Idempotent | None:
            if idempotency is not None:
                key, digest = idempotency
                # ON CONFLICT DO NOTHING: of two replicas racing on one key, one inserts and the
                # other waits for its commit, then finds the key taken.
                inserted = conn.execute(
                    "INSERT INTO idempotency (owner, key, digest, object_id, created) VALUES (%s, %s, %s, %s, %s) "
                    "ON CONFLICT (owner, key) DO NOTHING RETURNING 1", (owner, key, digest, run_id, now),
                ).fetchone()
                if inserted is None:
                    row = conn.execute("SELECT object_id, digest FROM idempotency WHERE owner = %s AND key = %s",
                                       (owner, key)).fetchone()
                    assert row is not None
                    return Idempotent(row[0], row[1] == digest)
            conn.execute(
                "INSERT INTO runs (id, owner, status, created, updated, spec, lease_owner, lease_expires) "
                f"VALUES (%s, %s, 'queued', %s, %s, %s, %s, {NOW} + %s)",
                (run_id, owner, now, now, _dumps(spec), self.replica, self.lease_s),
            )
            self._append(conn, run_id, first_event)
            if response is not None:
                conn.execute("INSERT INTO responses (id, owner, created, run_id, data) VALUES (%s, %s, %s, %s, %s)",
                             (run_id, owner, now, run_id, _dumps(response)))
            return None

        return self._tx(tx)

    def idempotent(self, owner: str, key: str, digest: str) -> Idempotent | None:
        """The object ``key`` of ``owner`` created, if it did."""
        if not _key(owner, key):
            return None
        rows = self._read("SELECT object_id, digest FROM idempotency WHERE owner = %s AND key = %s", (owner, key))
        return Idempotent(rows[0][0], rows[0][1] == digest) if rows else None

    def set_status(self, run_id: str, status: str, event: dict[str, Any] | None = None) -> int | None:
        """Move a run that has not ended to ``status``; None once it ended."""

        def tx(conn: psycopg.Connection) -> int | None:
            if not self._fenced(conn, run_id):
                return None
            conn.execute(
                "UPDATE runs SET status = %s, updated = %s, attempts = attempts + (CASE WHEN %s = 'running' "
                "THEN 1 ELSE 0 END) WHERE id = %s", (status, time.time(), status, run_id),
            )
            return self._append(conn, run_id, event) if event is not None else 0

        return self._tx(tx)

    def checkpoint(self, run_id: str, record: NodeRecord, event: dict[str, Any], elapsed_s: float,
                   then: dict[str, Any] | None = None) -> int | None:
        """A finished node: its record and its progress event (and ``then``, the event it
        caused, such as its round's ``round_completed``), in one transaction; None (nothing
        written) once the run ended."""

        def tx(conn: psycopg.Connection) -> int | None:
            if not self._fenced(conn, run_id):
                return None
            conn.execute(
                "INSERT INTO nodes (run_id, round, idx, record) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (run_id, round, idx) DO UPDATE SET record = EXCLUDED.record",
                (run_id, record.round, record.index, _dumps(dataclasses.asdict(record))),
            )
            conn.execute("UPDATE runs SET elapsed_s = GREATEST(elapsed_s, %s), updated = %s WHERE id = %s",
                         (elapsed_s, time.time(), run_id))
            seq = self._append(conn, run_id, event)
            if then is not None and not self._logged(conn, run_id, then):
                seq = self._append(conn, run_id, then)
            return seq

        return self._tx(tx)

    def append(self, run_id: str, event: dict[str, Any], *, once: bool = False) -> int | None:
        """Log a progress event of a run that has not ended (None, nothing written, once it
        did); ``once``: not if the log holds one of its name (and round) already."""

        def tx(conn: psycopg.Connection) -> int | None:
            if not self._fenced(conn, run_id) or (once and self._logged(conn, run_id, event)):
                return None
            return self._append(conn, run_id, event)

        return self._tx(tx)

    def finish(
        self, run_id: str, status: str, event: dict[str, Any], *,
        result: dict[str, Any] | None = None, error: dict[str, Any] | None = None,
    ) -> int | None:
        """End a run with its last event; None if it had ended. Only the lease holder completes
        or fails a run (:class:`LeaseLost` otherwise); any replica may cancel one."""
        assert status in TERMINAL

        def tx(conn: psycopg.Connection) -> int | None:
            if status == "cancelled":
                found = self._locked(conn, run_id)
                if found is None or found[0] in TERMINAL:
                    return None
            elif not self._fenced(conn, run_id):
                return None
            conn.execute(
                "UPDATE runs SET status = %s, updated = %s, result = %s, error = %s, lease_expires = NULL "
                "WHERE id = %s",
                (status, time.time(), None if result is None else _dumps(result),
                 None if error is None else _dumps(error), run_id),
            )
            return self._append(conn, run_id, event)

        return self._tx(tx)

    def quarantine(self, run_id: str, why: str) -> int | None:
        """End a run whose stored record cannot be read as failed (``store_corrupt``), whoever
        held it, so no replica tries it again; its rows stay until they expire."""
        error = {"error": {"message": f"This run's stored record cannot be read: {why}", "type": "server_error",
                           "param": None, "code": "store_corrupt"}}

        def tx(conn: psycopg.Connection) -> int | None:
            found = self._locked(conn, run_id)
            if found is None or found[0] in TERMINAL:
                return None
            conn.execute("UPDATE runs SET status = 'failed', updated = %s, error = %s, lease_expires = NULL "
                         "WHERE id = %s", (time.time(), _dumps(error), run_id))
            return self._append(conn, run_id, {"event": "run_failed", **error})

        return self._tx(tx)

    def put_response(self, response_id: str, owner: str, data: dict[str, Any], run_id: str | None = None) -> None:
        """Keep (or replace) a stored response of ``/v1/responses``; its creation time stays."""
        self._tx(lambda conn: conn.execute(
            "INSERT INTO responses (id, owner, created, run_id, data) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (id) DO UPDATE SET owner = EXCLUDED.owner, run_id = EXCLUDED.run_id, data = EXCLUDED.data",
            (response_id, owner, time.time(), run_id, _dumps(data)),
        ))

    def delete_response(self, response_id: str) -> bool:
        """Remove a response and the run behind it; False if there was none."""

        def tx(conn: psycopg.Connection) -> bool:
            row = conn.execute("DELETE FROM responses WHERE id = %s RETURNING run_id", (response_id,)).fetchone()
            if row is None:
                return False
            conn.execute("DELETE FROM idempotency WHERE object_id = %s", (response_id,))
            if row[0] is not None:
                self._delete_runs(conn, [row[0]])
            return True

        return self._tx(tx)

    @staticmethod
    def _delete_runs(conn: psycopg.Connection, run_ids: list[str]) -> None:
        conn.execute("DELETE FROM nodes WHERE run_id = ANY(%s)", (run_ids,))
        conn.execute("DELETE FROM events WHERE run_id = ANY(%s)", (run_ids,))
        conn.execute("DELETE FROM idempotency WHERE object_id = ANY(%s)", (run_ids,))
        conn.execute("DELETE FROM runs WHERE id = ANY(%s)", (run_ids,))

    def expire(self, cutoff: float) -> int:
        """Remove runs that ended before ``cutoff`` (unix time) and responses created before it
        (but not one whose run still runs), with everything they own; returns how many went."""

        def tx(conn: psycopg.Connection) -> int:
            runs = [r for (r,) in conn.execute(
                "SELECT id FROM runs WHERE updated < %s AND status IN ('completed', 'failed', 'cancelled') "
                "FOR UPDATE SKIP LOCKED", (cutoff,))]
            responses = conn.execute(
                "SELECT id, run_id FROM responses AS r WHERE created < %s AND NOT EXISTS "
                f"(SELECT 1 FROM runs WHERE id = r.run_id AND {UNFINISHED})", (cutoff,)).fetchall()
            # A response's run goes with it, and a run's response with its run.
            runs += [run for _, run in responses if run is not None and run not in runs]
            ids = [r for r, _ in responses] + runs
            conn.execute("DELETE FROM responses WHERE id = ANY(%s) OR run_id = ANY(%s)", (ids, ids))
            conn.execute("DELETE FROM idempotency WHERE object_id = ANY(%s)", (ids,))
            self._delete_runs(conn, runs)
            return len(runs) + len(responses)

        return self._tx(tx)

    # ------------------------------------------------------------------------ leases

    def claim(self, limit: int = 100) -> tuple[list[StoredRun], list[tuple[str, str]]]:
        """Take up to ``limit`` unfinished runs nobody holds (their lease expired or was
        released), oldest first; the claimed runs' leases are this replica's. Like
        :meth:`unfinished`, the unreadable ones come apart, as ``(id, why)``."""
        rows = self._tx(lambda conn: conn.execute(
            f"UPDATE runs SET lease_owner = %s, lease_expires = {NOW} + %s WHERE id IN ("
            f"SELECT id FROM runs WHERE {UNFINISHED} AND (lease_expires IS NULL OR lease_expires < {NOW}) "
            f"ORDER BY created LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING {RUN_COLUMNS}",
            (self.replica, self.lease_s, limit),
        ).fetchall())
        return runs_from_rows(rows)

    def heartbeat(self, run_ids: list[str]) -> set[str]:
        """Renew this replica's leases on ``run_ids``; returns the ones it still holds (a run
        another replica took over, or that ended, is not among them)."""
        if not run_ids:
            return set()
        rows = self._tx(lambda conn: conn.execute(
            f"UPDATE runs SET lease_expires = {NOW} + %s WHERE id = ANY(%s) AND lease_owner = %s AND {UNFINISHED} "
            "RETURNING id", (self.lease_s, run_ids, self.replica),
        ).fetchall())
        return {r for (r,) in rows}

    def release(self, run_ids: list[str]) -> None:
        """Give up leases (a replica stopping cleanly): another replica claims them at once."""
        if run_ids:
            self._tx(lambda conn: conn.execute(
                "UPDATE runs SET lease_expires = NULL WHERE id = ANY(%s) AND lease_owner = %s",
                (run_ids, self.replica)))

    def subscribe(self, wake: Callable[[str | None], None]) -> None:
        """Call ``wake(run_id)`` (on a thread of its own) after a replica appended an event to
        that run; ``wake(None)`` after the listening connection was re-established, when
        notifications may have been missed."""
        if self._listener is not None:
            raise RuntimeError("already subscribed")
        self._listener = threading.Thread(target=self._listen, args=(wake,), name="mrsa-store-listen", daemon=True)
        self._listener.start()

    def _listen(self, wake: Callable[[str | None], None]) -> None:
        first = True
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    if not first:
                        wake(None)
                    first = False
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            wake(note.payload)
            except psycopg.Error as exc:
                log.warning("run store listener: %s; reconnecting", exc)
                self._stop.wait(1.0)

    # ------------------------------------------------------------------------ reads

    def get_response(self, response_id: str) -> tuple[str, float, str | None, dict[str, Any]] | None:
        """``(owner, created, run_id, data)`` of a stored response."""
        if not _key(response_id):
            return None
        rows = self._read("SELECT owner, created, run_id, data FROM responses WHERE id = %s", (response_id,))
        if not rows:
            return None
        owner, created, run_id, data = rows[0]
        return owner, created, run_id, _loads(data, f"response {response_id}")

    def get(self, run_id: str) -> StoredRun | None:
        if not _key(run_id):
            return None
        rows = self._read(f"SELECT {RUN_COLUMNS} FROM runs WHERE id = %s", (run_id,))
        return run_from_row(rows[0]) if rows else None

    def unfinished(self) -> tuple[list[StoredRun], list[tuple[str, str]]]:
        """Runs queued or running (on any replica), oldest first; and ``(id, why)`` of those
        among them whose stored row cannot be read (for :meth:`quarantine`)."""
        return runs_from_rows(self._read(f"SELECT {RUN_COLUMNS} FROM runs WHERE {UNFINISHED}"))

    def records(self, run_id: str) -> list[NodeRecord]:
        return records_from_rows(
            run_id, self._read("SELECT record FROM nodes WHERE run_id = %s ORDER BY round, idx", (run_id,))
        )

    def progress(self, run_id: str) -> Progress:
        (row,) = self._read(
            "SELECT COUNT(*), "
            "COALESCE(SUM((mrsa_json(record)->>'prompt_tokens')::bigint), 0), "
            "COALESCE(SUM((mrsa_json(record)->>'completion_tokens')::bigint), 0), "
            "COALESCE(SUM((mrsa_json(record)->>'cached_tokens')::bigint), 0) "  # absent in older records
            "FROM nodes WHERE run_id = %s AND mrsa_json(record) IS NOT NULL", (run_id,),  # a corrupt one counts as none
        )
        return Progress(nodes=row[0], prompt_tokens=int(row[1]), completion_tokens=int(row[2]),
                        reasoning_tokens=int(row[2]), cached_tokens=int(row[3]))

    def events(self, run_id: str, after: int = 0, limit: int = 1000) -> list[tuple[int, dict[str, Any]]]:
        rows = self._read("SELECT seq, data FROM events WHERE run_id = %s AND seq > %s ORDER BY seq LIMIT %s",
                          (run_id, after, limit))
        return [(seq, _loads(data, f"run {run_id}'s event {seq}")) for seq, data in rows]

    def integrity(self) -> str:
        """``ok`` when the schema is this server's version (PostgreSQL checks its own pages)."""
        (row,) = self._read("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        return "ok" if row[0] == SCHEMA_VERSION else f"schema v{row[0]}, expected v{SCHEMA_VERSION}"

    def truncate_wal(self) -> None:
        """Nothing to do: PostgreSQL recycles its own write-ahead log."""
