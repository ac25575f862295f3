"""A real ``mrsa serve`` process on 127.0.0.1 with the embedded engine and the small model:
started, stopped, or killed with its engine as a power cut would."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import psutil

from mrsa.engine.provision import SMALL_MODEL

ROOT = Path(__file__).resolve().parents[2]

# Small limits so "over the server's limit" is cheap to provoke.
MAX_POPULATION = 8
MAX_ROUNDS = 4
MAX_MODEL_LEN = 2048

# The function tool the tool-call tests offer a served model (the city is an enum, so a
# schema-valid call is checkable).
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    model: str
    log: Path

    def client(self, **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, **kw)

    def in_flight(self) -> int:
        return httpx.get(f"{self.url}/health", timeout=5).json()["in_flight"]


def start_server(
    tmp: Path,
    extra_env: dict[str, str] | None = None,
    timeout: float = 300,
    args: tuple[str, ...] = (),
) -> tuple[subprocess.Popen, Server]:
    """``mrsa serve`` (plus ``args``) on a free port; returns once /health answers."""
    port = free_port()
    env = {
        **os.environ,
        "MRSA_LIMITS__MAX_POPULATION": str(MAX_POPULATION),
        "MRSA_LIMITS__MAX_ROUNDS": str(MAX_ROUNDS),
        "MRSA_ENGINE__MAX_MODEL_LEN": str(MAX_MODEL_LEN),
        # The small built-in model: the default one is too slow for a test suite on a CPU.
        "MRSA_ENGINE__MODEL": SMALL_MODEL,
        "MRSA_ENGINE__GPU_MEMORY_UTILIZATION": "0.15",
        "MRSA_ENGINE__CPU_KVCACHE_SPACE_GIB": "1",
        # float32 on every host: tests replay seeded runs token for token, and in bf16 (what
        # dtype=auto picks on CPUs with bf16 instructions) a trace's tokens change with the
        # batch it shares (test_rsa_same_seed_same_run failed so on an AVX-512 BF16 host).
        "MRSA_ENGINE__DTYPE": "float32",
        **(extra_env or {}),
    }
    log = tmp / f"server-{port}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mrsa", "serve", "--port", str(port), *args],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: a kill reaches the engine core too
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            health = httpx.get(f"{url}/health", timeout=2)
            if health.status_code == 200:
                return proc, Server(url=url, model=health.json()["model"], log=log)
        except httpx.HTTPError:
            pass
        time.sleep(1)
    kill_group(proc)
    raise RuntimeError(f"server did not start in {timeout}s:\n{log.read_text()[-4000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM (the server shuts its engine down), then SIGKILL whatever of its group is left."""
    proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(30)
    kill_group(proc)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the server's process group, so no engine process outlives it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def crash(proc: subprocess.Popen) -> None:
    """kill -9 the server and every process it started (the engine core), as a power cut would."""
    family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in family:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=30)
