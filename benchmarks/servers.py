"""Server processes for benchmarks: a free loopback port, waiting for health, stopping a tree."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import httpx


def cpu_description() -> str:
    """The CPU model and its bf16 instructions (what decides the engine's dtype), for results."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line for line in text.splitlines() if line.startswith("flags")), "").split())
    native = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return f"{model} ({', '.join(native) or 'no bf16 instructions'})"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 300) -> httpx.Response:
    """``GET url/health`` until it answers 200 (its response), or raise if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            r = httpx.get(f"{url}/health", timeout=2)
            if r.status_code == 200:
                return r
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError("server did not start")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL to the whole process group (started with ``start_new_session``)."""
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
