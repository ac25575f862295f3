"""No engine outlives its server (engine/lifetime.py), with real processes and no model: the
watchdog a vLLM plugin starts in each engine process, and the start-up that ends what a killed
server left behind."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

import psutil
import pytest

from mrsa.engine import lifetime

# A "server" that starts an "engine" the way vLLM does (multiprocessing), the engine running the
# plugin, then prints the engine's pid and waits.
SERVER = """
import multiprocessing, sys, time
def engine(plugin):
    if plugin:
        from mrsa.engine.lifetime import register
        register()
    time.sleep(600)
if __name__ == "__main__":
    p = multiprocessing.get_context("spawn").Process(target=engine, args=(sys.argv[1] == "1",))
    p.start()
    print(p.pid, flush=True)
    time.sleep(600)
"""


def _gone(pid: int, bound_s: float = 60) -> bool:
    """Whether ``pid`` ends (or is left a zombie) within ``bound_s``."""
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.2)
    return False


def _server(tmp_path: Path, plugin: bool) -> tuple[subprocess.Popen, int]:
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    proc = subprocess.Popen([sys.executable, str(script), "1" if plugin else "0"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def test_the_plugin_is_registered_with_vllm() -> None:
    names = {ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert "mrsa.engine.lifetime:register" in names


def test_an_engine_process_ends_when_its_server_is_killed(tmp_path: Path) -> None:
    proc, engine = _server(tmp_path, plugin=True)
    proc.kill()  # kill -9: no shutdown code runs in the server
    proc.wait()
    assert _gone(engine), "the engine process outlived its server"


def test_the_next_start_ends_what_a_killed_server_left(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Without the plugin (a stopped process, an older release), the engine stays behind...
    proc, engine = _server(tmp_path, plugin=False)
    try:
        lifetime.record(tmp_path, server_pid=proc.pid, engine_pids=[engine])
        assert lifetime.end_leftovers(tmp_path) == 0  # its server is alive: not ours to end
        proc.kill()
        proc.wait()
        assert not _gone(engine, bound_s=1)  # an orphan now (the state this guards against)
        # ...until the next start finds the record and ends it, saying so.
        with caplog.at_level(logging.WARNING, logger="mrsa.engine.lifetime"):
            assert lifetime.end_leftovers(tmp_path) == 1
        assert _gone(engine)
        assert f"left by server pid {proc.pid}" in caplog.text
        assert list(lifetime.records_dir(tmp_path).glob("*.json")) == []
    finally:
        with __import__("contextlib").suppress(ProcessLookupError):
            os.kill(engine, signal.SIGKILL)


def test_a_reused_pid_is_never_taken_for_a_leftover(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "600"])
    try:
        path = lifetime.record(tmp_path, server_pid=sleeper.pid, engine_pids=[sleeper.pid])
        text = path.read_text().replace('"started": ', '"started": 1')  # another process's start time
        path.write_text(text)
        assert lifetime.end_leftovers(tmp_path) == 0
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()
