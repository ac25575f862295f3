"""API replicas over one PostgreSQL run store, as processes to kill and restart (tests and the
replica chaos benchmark).

Each replica is ``python -m tests.fake_serve`` (the real ``mrsa serve`` HTTP stack, run store
and run manager) over its own :class:`tests.fakes.FakeEngine`: what is under test is the run
store shared by the replicas (leases, takeover, followers), and a fake engine per replica lets
two of them and a database share 2 cores with room to kill and restart them dozens of times. The
fake is deterministic for a seed, so a run resumed on another replica must end with the same
answer and usage as one never interrupted. The same replicas over real engines (one shared
``vllm serve`` behind a router) are tests/e2e/test_router.py's.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
MODEL = "fake-model"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ApiReplica:
    """One ``mrsa serve`` process on a fixed port (a restart comes back at the same URL)."""

    name: str
    store_url: str
    folder: Path
    lease_s: float = 2.0
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 120) -> None:
        self.starts += 1
        log = self.folder / f"{self.name}-{self.starts}.log"
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "MRSA_STORE_URL": self.store_url,
            "MRSA_STORE_LEASE_S": str(self.lease_s),
            "MRSA_LOG_FORMAT": "text",
            **self.env,
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fake_serve", "--port", str(self.port)],
            cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{log.read_text()[-4000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"{self.name} did not start in {timeout}s:\n{log.read_text()[-4000:]}")

    def kill(self) -> None:
        """``kill -9``: no shutdown, no lease released; the other replicas wait the lease out."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        """SIGTERM: a clean stop releases this replica's leases."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(30)
        self.kill()


def submit(http: httpx.Client, base: str, rsa: dict, question: str) -> dict:
    body = {"model": MODEL, "messages": [{"role": "user", "content": question}], "rsa": rsa}
    r = http.post(f"{base}/v1/rsa/runs", json=body, timeout=30)
    r.raise_for_status()
    return r.json()


def get_run(http: httpx.Client, bases: list[str], run_id: str) -> dict | None:
    """The run as the first replica that answers shows it (any replica reads the shared store)."""
    for base in bases:
        with contextlib.suppress(httpx.HTTPError):
            r = http.get(f"{base}/v1/rsa/runs/{run_id}", timeout=10)
            if r.status_code == 200:
                return r.json()
    return None


def follow(base: str, run_id: str, out: list[tuple[int, dict]], after: int | None = None) -> None:
    """Read a run's event stream (SSE) until it ends; append ``(seq, event)`` to ``out``."""
    headers = {} if after is None else {"Last-Event-ID": str(after)}
    seq = None
    with httpx.stream("GET", f"{base}/v1/rsa/runs/{run_id}/events", headers=headers,
                      timeout=httpx.Timeout(10, read=120)) as stream:
        stream.raise_for_status()
        for line in stream.iter_lines():
            if line.startswith("id: "):
                seq = int(line[4:])
            elif line.startswith("data: ") and seq is not None:
                out.append((seq, json.loads(line[6:])))


def log_of(store_url: str, run_id: str) -> list[dict]:
    """The run's whole event log, read from the database itself."""
    import psycopg

    with psycopg.connect(store_url) as conn:
        rows = conn.execute("SELECT seq, data FROM events WHERE run_id = %s ORDER BY seq", (run_id,)).fetchall()
    assert [seq for seq, _ in rows] == list(range(1, len(rows) + 1)), f"{run_id}: gaps in {rows}"
    return [json.loads(data) for _, data in rows]
