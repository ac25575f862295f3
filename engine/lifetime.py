"""No engine outlives its server.

vLLM runs its engine core (and, with more than one, its workers) in processes of their own. A
``kill -9`` of the server (a crash, the OOM killer, an impatient operator) left them running
with parent 1, gigabytes resident, and a restart loaded a second engine beside the orphan. Two
guards:

- :func:`register`, a vLLM general plugin (the ``lifetime`` entry point, pyproject.toml), runs
  in every process vLLM starts. In one that multiprocessing started (engine core, worker) it
  starts a watchdog thread that ends the process once its parent is gone (SIGTERM, so vLLM
  shuts down its own children, then SIGKILL). A watchdog rather than ``PR_SET_PDEATHSIG``: that
  signal fires when the parent *thread* that started the child ends, which an engine created
  from a short-lived thread would not survive. The top process (``mrsa serve``, ``vllm serve``)
  is left alone: its parent is a shell or a supervisor.
- :func:`record` writes, once the engine is up, which processes belong to this server
  (``<cache_dir>/engines/<server pid>.json``, with each process's start time so a reused pid is
  never taken for one of ours); :func:`end_leftovers`, at the next start, ends the processes of
  every record whose server is gone, and says so in the log. It catches what the watchdog
  cannot (a process stopped with SIGSTOP, a record of an older release).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

POLL_S = 0.5
TERM_GRACE_S = 5.0
_started = False


# ---------------------------------------------------------------------- the watchdog (plugin)

def register() -> None:
    """vLLM general plugin: in a process multiprocessing started, end it when its parent ends.
    Idempotent; never raises (vLLM does not guard general plugins)."""
    global _started
    try:
        parent = multiprocessing.parent_process()
        if _started or parent is None or parent.pid is None:
            return
        _started = True
        threading.Thread(target=_watch, args=(parent.pid,), name="mrsa-parent-watch", daemon=True).start()
    except Exception:
        log.exception("could not start the parent watchdog")


def _watch(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(POLL_S)
    log.warning("parent process %d is gone; ending engine process %d", parent_pid, os.getpid())
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(TERM_GRACE_S)
    os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------- the record (start-up)

def records_dir(cache_dir: Path | str | None) -> Path:
    from mrsa.engine.provision import default_cache_root

    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    return root / "engines"


def _identity(pid: int) -> dict[str, float | int] | None:
    import psutil

    try:
        return {"pid": pid, "started": psutil.Process(pid).create_time()}
    except psutil.Error:
        return None


def _alive(entry: dict) -> object | None:
    """The process of a recorded ``{"pid", "started"}`` if it still runs (not a zombie, not a
    newer process under a reused pid)."""
    import psutil

    try:
        proc = psutil.Process(int(entry["pid"]))
        if abs(proc.create_time() - float(entry["started"])) > 0.01 or proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except (psutil.Error, KeyError, TypeError, ValueError):
        return None


def record(cache_dir: Path | str | None, server_pid: int | None = None, engine_pids: list[int] | None = None) -> Path:
    """Record this server (``server_pid``, default this process) and its engine processes
    (``engine_pids``, default every descendant of the server now)."""
    import psutil

    server_pid = server_pid or os.getpid()
    if engine_pids is None:
        engine_pids = [p.pid for p in psutil.Process(server_pid).children(recursive=True)]
    entries = [e for e in map(_identity, engine_pids) if e is not None]
    path = records_dir(cache_dir) / f"{server_pid}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"server": _identity(server_pid), "engine": entries}))
    tmp.replace(path)
    return path


def forget(cache_dir: Path | str | None, server_pid: int | None = None) -> None:
    """The server shut its engine down itself: nothing of it is left to end."""
    (records_dir(cache_dir) / f"{server_pid or os.getpid()}.json").unlink(missing_ok=True)


def end_leftovers(cache_dir: Path | str | None) -> int:
    """End the engine processes of every recorded server that is gone; how many were ended."""
    import psutil

    folder = records_dir(cache_dir)
    ended = 0
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        try:
            data = json.loads(path.read_text())
            server = data["server"]
        except (OSError, ValueError, KeyError):
            log.warning("unreadable engine record %s removed", path)
            path.unlink(missing_ok=True)
            continue
        if server is not None and _alive(server) is not None:
            continue  # a running server's engine (this one, or another port's): not ours to end
        left = [p for p in map(_alive, data.get("engine", [])) if p is not None]
        for proc in left:
            proc.terminate()
        _, still = psutil.wait_procs(left, timeout=TERM_GRACE_S)
        for proc in still:
            proc.kill()
        psutil.wait_procs(still, timeout=TERM_GRACE_S)
        if left:
            log.warning("ended %d engine process(es) left by server pid %s: %s",
                        len(left), (server or {}).get("pid"), ", ".join(str(p.pid) for p in left))
        ended += len(left)
        path.unlink(missing_ok=True)
    return ended
