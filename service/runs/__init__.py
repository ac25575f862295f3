"""Background RSA runs: the manager (submit, observe, cancel, resume) over a SQLite store."""

from mrsa.service.runs.manager import RunManager, Submitted, new_run_id
from mrsa.service.runs.store import AsyncStore, Store, StoredRun, StoreError, StoreLocked

__all__ = ["AsyncStore", "RunManager", "Store", "StoreError", "StoreLocked", "StoredRun", "Submitted", "new_run_id"]
