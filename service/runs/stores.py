"""Which run store a server uses, and what the manager may ask of any of them.

``store_url`` picks it: unset or ``sqlite:///<path>`` is the embedded SQLite file (one server
owns it); ``postgresql://...`` (or ``postgres://``) is a database that several API replicas share,
each run leased to the replica executing it (:mod:`mrsa.service.runs.pg_store`).

Both stores have the same methods (:class:`RunStore`); the lease methods are trivial for SQLite,
whose single server holds every run: it claims all unfinished runs when it starts and never
loses one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from mrsa.rsa.events import NodeRecord
from mrsa.service.runs.pg_store import LeaseLost, PgStore
from mrsa.service.runs.store import Idempotent, Progress, Store, StoredRun

__all__ = ["LeaseLost", "PgStore", "RunStore", "SqliteStore", "is_postgres", "open_store"]

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class RunStore(Protocol):
    """What :class:`~mrsa.service.runs.manager.RunManager` uses; every call is one transaction."""

    shared: bool  # True: other replicas use the same store (leases matter)

    def create(self, run_id: str, owner: str, spec: dict[str, Any], first_event: dict[str, Any], *,
               response: dict[str, Any] | None = None,
               idempotency: tuple[str, str] | None = None) -> Idempotent | None: ...
    def idempotent(self, owner: str, key: str, digest: str) -> Idempotent | None: ...
    def set_status(self, run_id: str, status: str, event: dict[str, Any] | None = None) -> int | None: ...
    def checkpoint(self, run_id: str, record: NodeRecord, event: dict[str, Any], elapsed_s: float,
                   then: dict[str, Any] | None = None) -> int | None: ...
    def append(self, run_id: str, event: dict[str, Any], *, once: bool = False) -> int | None: ...
    def finish(self, run_id: str, status: str, event: dict[str, Any], *,
               result: dict[str, Any] | None = None, error: dict[str, Any] | None = None) -> int | None: ...
    def quarantine(self, run_id: str, why: str) -> int | None: ...
    def put_response(self, response_id: str, owner: str, data: dict[str, Any], run_id: str | None = None) -> None: ...
    def delete_response(self, response_id: str) -> bool: ...
    def expire(self, cutoff: float) -> int: ...
    def get_response(self, response_id: str) -> tuple[str, float, str | None, dict[str, Any]] | None: ...
    def get(self, run_id: str) -> StoredRun | None: ...
    def unfinished(self) -> tuple[list[StoredRun], list[tuple[str, str]]]: ...
    def records(self, run_id: str) -> list[NodeRecord]: ...
    def progress(self, run_id: str) -> Progress: ...
    def events(self, run_id: str, after: int = 0, limit: int = 1000) -> list[tuple[int, dict[str, Any]]]: ...
    def integrity(self) -> str: ...
    # Leases: trivial for a store one server owns.
    def claim(self, limit: int = 100) -> tuple[list[StoredRun], list[tuple[str, str]]]: ...
    def heartbeat(self, run_ids: list[str]) -> set[str]: ...
    def release(self, run_ids: list[str]) -> None: ...
    def subscribe(self, wake: Callable[[str | None], None]) -> None: ...
    def close(self) -> None: ...


class SqliteStore(Store):
    """The SQLite file with the lease methods of a store nobody else uses: its ``flock`` is the
    one lease, held for the life of the server."""

    shared = False

    def __str__(self) -> str:
        return str(self.path)

    def claim(self, limit: int = 100) -> tuple[list[StoredRun], list[tuple[str, str]]]:
        """Every unfinished run (the last server's): this server is the only one."""
        return self.unfinished()

    def heartbeat(self, run_ids: list[str]) -> set[str]:
        return set(run_ids)

    def release(self, run_ids: list[str]) -> None:
        pass

    def subscribe(self, wake: Callable[[str | None], None]) -> None:
        pass  # every writer is in this process, which wakes its followers itself


def is_postgres(url: str | None) -> bool:
    return url is not None and url.startswith(POSTGRES_SCHEMES)


def sqlite_path(url: str) -> Path:
    """``sqlite:///abs/path`` or ``sqlite://rel/path`` -> the file."""
    if not url.startswith("sqlite://"):
        raise ValueError(f"unsupported run store URL {url!r}: sqlite:///<path> or postgresql://...")
    return Path(url.removeprefix("sqlite://"))


def open_store(url: str | None, path: Path, *, lease_s: float = 15.0, replica: str | None = None) -> RunStore:
    """The store ``url`` names; without one, the SQLite file at ``path``."""
    if is_postgres(url):
        assert url is not None
        return PgStore(url, replica=replica, lease_s=lease_s)
    return SqliteStore(path if url is None else sqlite_path(url))
