"""A throwaway PostgreSQL server on 127.0.0.1, from Debian's ``postgresql`` package.

The tests that need a database start one (tests/conftest.py, once per session), the benchmarks
too; nothing is mocked. ``initdb`` refuses to run as root, so as root the server runs as the
``postgres`` user the package creates (``runuser``), in a folder that user owns. No Unix socket,
trust authentication on 127.0.0.1 only, and ``fsync=off``: the tests kill API replicas, never
the database, so its own durability is not what they test and syncing would only slow them.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg

BINDIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)  # newest first
HINT = "PostgreSQL not found: `make test` installs Debian's postgresql (apt-get install postgresql)"


def _bindir() -> Path:
    for folder in BINDIRS:
        if (folder / "initdb").exists():
            return folder
    found = shutil.which("initdb")
    if found is None:
        raise RuntimeError(HINT)
    return Path(found).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Start a server; yields the URL of its ``postgres`` database; stops and removes it after."""
    bindir = _bindir()
    root = Path(tempfile.mkdtemp(prefix="mrsa-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
    port = _free_port()
    log = root / "server.log"
    try:
        subprocess.run(_as_owner([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                                  "-E", "UTF8", "--no-sync"]),
                       check=True, capture_output=True, timeout=120)
        options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories='' -c fsync=off " \
                  "-c max_connections=200"
        subprocess.run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options,
                                  "-w", "-t", "60", "start"]), check=True, capture_output=True, timeout=90)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    except subprocess.CalledProcessError as exc:
        tail = log.read_text()[-2000:] if log.exists() else ""
        raise RuntimeError(f"{exc.cmd[0]} failed: {exc.stderr.decode()[-2000:]}\n{tail}") from exc
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                           capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def fresh_database(server_url: str) -> str:
    """A new empty database on the server; its URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server_url.rsplit("/", 1)[0] + f"/{name}"


def wait_ready(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(url, connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
