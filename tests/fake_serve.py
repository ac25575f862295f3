"""``mrsa serve`` over the fake engine, as a process: ``python -m tests.fake_serve [serve flags]``.

The real HTTP stack (mrsa.cli.serve_app: uvicorn, its connection guard and shutdown) with
:class:`tests.fakes.FakeEngine` in place of vLLM, for tests and benchmarks that need a server
process to signal, kill or starve without loading a model. ``FAKE_DELAY`` (seconds between
deltas, default 0.01) and ``FAKE_LENGTH`` (filler words, default 12) shape the fake's output.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from mrsa.cli import build_parser, serve_app, settings_from
from mrsa.service import logs
from mrsa.service.app import create_app
from tests.fakes import FakeEngine


def main(argv: list[str]) -> None:
    args = build_parser().parse_args(["serve", *argv])
    settings = settings_from(args)
    logs.setup(settings.log_level, settings.log_format)
    engine = FakeEngine(delay=float(os.environ.get("FAKE_DELAY", "0.01")),
                        length=int(os.environ.get("FAKE_LENGTH", "12")))
    serve_app(create_app(settings, engine_factory=lambda _config: engine), settings)


ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(tmp: Path, *flags: str, env: dict[str, str] | None = None, port: int | None = None,
          preexec_fn: Callable[[], None] | None = None, timeout: float = 60) -> tuple[subprocess.Popen, str]:
    """This module as a server process on 127.0.0.1 (its log in ``tmp``); returns once /health
    answers. ``--store-path`` defaults to a file in ``tmp``."""
    port = port or free_port()
    if "--store-path" not in flags:
        flags = (*flags, "--store-path", str(tmp / f"runs-{port}.sqlite3"))
    log = tmp / f"fake-serve-{port}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_serve", "--port", str(port), "--log-format", "text", *flags],
        cwd=ROOT, env={**os.environ, **(env or {})}, stdout=log.open("ab"), stderr=subprocess.STDOUT,
        preexec_fn=preexec_fn,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"fake server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"fake server did not start in {timeout}s:\n{log.read_text()[-3000:]}")


if __name__ == "__main__":
    main(sys.argv[1:])
