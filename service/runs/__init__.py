"""Background RSA runs: the manager (submit, observe, cancel, resume) over a SQLite store."""

from mrsa.service.runs.manager import RunManager, new_run_id
from mrsa.service.runs.store import AsyncStore, Store, StoredRun, StoreLocked

__all__ = ["AsyncStore", "RunManager", "Store", "StoreLocked", "StoredRun", "new_run_id"]
