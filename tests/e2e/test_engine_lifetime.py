"""kill -9 of a real ``mrsa serve`` (small model): none of its vLLM engine processes remains."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil

from tests.e2e.server import kill_group, start_server


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    left = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(p)
        except psutil.NoSuchProcess:
            pass
    return left


def test_kill_9_of_the_server_leaves_no_engine_process(tmp_path: Path) -> None:
    proc, _ = start_server(tmp_path)
    try:
        engine = psutil.Process(proc.pid).children(recursive=True)
        assert engine, "the embedded engine runs in processes of its own"
        records = list((Path("~/.cache/markovian-rsa/engines").expanduser()).glob(f"{proc.pid}.json"))
        assert records, "the server recorded its engine processes"
        os.kill(proc.pid, signal.SIGKILL)  # the server only, as the OOM killer would
        proc.wait()
        deadline = time.monotonic() + 120  # generous: the watchdog polls, vLLM shuts down
        while _alive(engine) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = _alive(engine)
        assert not left, f"engine processes outlived the server: {[(p.pid, p.name()) for p in left]}"
    finally:
        kill_group(proc)
