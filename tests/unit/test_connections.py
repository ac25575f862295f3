"""Slow and idle clients against a real server process (``mrsa serve``'s uvicorn, fake engine)
under a 128-file limit: they are closed, and ``/health`` and real requests keep answering."""

from __future__ import annotations

import resource
import selectors
import socket
import time
from pathlib import Path

import httpx
import pytest

from mrsa.service.connections import fitting_connections
from tests import fake_serve

IDLE, PARTIAL, TRICKLED = 140, 20, 20


def _files_128() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))


def _connect(port: int, first: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if first:
        sock.sendall(first)
    sock.setblocking(False)
    return sock


def _wait_closed(socks: list[socket.socket], bound_s: float) -> list[socket.socket]:
    """The sockets the server has not closed when ``bound_s`` runs out (or all are closed)."""
    open_ = set(socks)
    with selectors.DefaultSelector() as sel:
        for s in socks:
            sel.register(s, selectors.EVENT_READ)
        deadline = time.monotonic() + bound_s
        while open_ and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1):
                try:
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                except ConnectionResetError:
                    data = b""
                except BlockingIOError:
                    continue
                if not data:  # EOF: closed by the server (a 400 or 408 before it is fine too)
                    sel.unregister(key.fileobj)
                    open_.discard(key.fileobj)  # type: ignore[arg-type]
    return list(open_)


@pytest.fixture
def server(tmp_path: Path):
    # FAKE_DELAY: a streamed answer lasts longer than the read deadline, which must not cut it.
    proc, url = fake_serve.start(tmp_path, "--http.request-read-timeout-s", "1", preexec_fn=_files_128,
                                 env={"FAKE_DELAY": "0.1", "FAKE_LENGTH": "40"})
    try:
        yield url
    finally:
        proc.kill()
        proc.wait()


def test_idle_partial_and_trickling_connections_are_closed_and_health_answers(server: str) -> None:
    port = int(server.rsplit(":", 1)[1])
    socks = [_connect(port, b"") for _ in range(IDLE)]
    socks += [_connect(port, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ") for _ in range(PARTIAL)]
    body_start = b'{"model": "fake-model", "messages": ['
    socks += [_connect(port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 500\r\n\r\n" + body_start) for _ in range(TRICKLED)]
    try:
        # While they are all open (more than the server's 128 files could hold), it answers.
        assert httpx.get(f"{server}/health", timeout=60).status_code == 200
        with httpx.Client(base_url=server, timeout=60) as client, client.stream(
            "POST", "/v1/chat/completions",
            json={"model": "fake-model", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        ) as streamed:
            text = "".join(streamed.iter_text())
        assert '"finish_reason": "stop"' in text and text.rstrip().endswith("data: [DONE]")
        left = _wait_closed(socks, bound_s=120)
        assert not left, f"{len(left)} of {len(socks)} slow connections still open"
        assert httpx.get(f"{server}/health", timeout=60).status_code == 200
    finally:
        for s in socks:
            s.close()


def test_a_connection_beyond_the_limit_closes_the_oldest_idle_one(tmp_path: Path) -> None:
    proc, url = fake_serve.start(tmp_path, "--http.max-connections", "4", "--http.request-read-timeout-s", "600")
    port = int(url.rsplit(":", 1)[1])
    try:
        idle = [_connect(port, b"") for _ in range(4)]
        time.sleep(0.5)  # accepted in order (a wait for the server's accept, not a measured time)
        assert httpx.get(f"{url}/health", timeout=60).status_code == 200  # a fifth: room is made
        assert not _wait_closed(idle[:1], bound_s=60)  # the oldest was closed for it
        with pytest.raises(BlockingIOError):
            idle[-1].recv(1)  # the newest stays open: nothing to read, not closed
        for s in idle:
            s.close()
    finally:
        proc.kill()
        proc.wait()


def test_the_connection_limit_fits_the_open_file_limit() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert fitting_connections(10**9) <= soft - 64
    assert fitting_connections(5) == 5
