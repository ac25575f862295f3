"""SIGTERM with requests open, against a real server process (``mrsa serve``'s uvicorn, fake
engine): every stream ends with a last event in its own format, a request not yet answered gets
503, and the process exits (it used to wait on an ``/events`` follower forever)."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import httpx

from tests import fake_serve

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "What is 6 * 7?"}],
        "rsa": {"population": 2, "k": 2, "rounds": 2}}


class Reader(threading.Thread):
    """Reads one streamed response to its end; ``opened`` once its headers are in."""

    def __init__(self, client: httpx.Client, method: str, url: str, **kw: object) -> None:
        super().__init__(daemon=True)
        self.client, self.method, self.url, self.kw = client, method, url, kw
        self.opened = threading.Event()
        self.status = 0
        self.text = ""
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.client.stream(self.method, self.url, **self.kw) as resp:  # type: ignore[arg-type]
                self.status = resp.status_code
                self.opened.set()
                for chunk in resp.iter_text():
                    self.text += chunk
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            self.error = exc
        finally:
            self.opened.set()


def _queued(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('mrsa_admission_queue_depth{pool="runs"}'):
            return float(line.split()[-1])
    return 0.0


def _until_queued(client: httpx.Client, n: int) -> None:
    deadline = time.monotonic() + 60
    while _queued(client) < n:
        assert time.monotonic() < deadline, "the requests never queued"
        time.sleep(0.1)


def test_sigterm_ends_every_stream_with_a_last_event_and_exits(tmp_path: Path) -> None:
    # One run slot and a slow engine: the second run stays queued, its follower heartbeats.
    proc, url = fake_serve.start(tmp_path, "--admission.max-running-runs", "1", "--shutdown-grace-s", "5",
                                 env={"FAKE_DELAY": "0.5", "FAKE_LENGTH": "400"})
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            first = client.post("/v1/rsa/runs", json=CHAT).json()["id"]
            queued = client.post("/v1/rsa/runs", json=CHAT).json()["id"]
            assert client.get(f"/v1/rsa/runs/{queued}").json()["status"] == "queued"
            follower = Reader(client, "GET", f"/v1/rsa/runs/{queued}/events")
            live = Reader(client, "POST", "/v1/chat/completions", json={**CHAT, "stream": True})
            waiting = Reader(client, "POST", "/v1/chat/completions", json=CHAT)  # queued behind the runs
            for reader in (follower, live):
                reader.start()
                assert reader.opened.wait(60) and reader.error is None
            waiting.start()
            _until_queued(client, 3)  # the queued run, the live stream's run and the waiting request
            proc.terminate()
            try:
                proc.wait(120)  # generous: it used to run on for good
            except subprocess.TimeoutExpired:
                raise AssertionError("the server did not exit after SIGTERM") from None
            for reader in (follower, live, waiting):
                reader.join(60)
                assert not reader.is_alive()
        assert first
        # The follower: its last event names the shutdown (no id: a reconnect resumes where it was).
        last = follower.text.rstrip("\n").rsplit("\n\n", 1)[-1]
        assert last.startswith("event: error\ndata: ")
        assert json.loads(last.split("data: ", 1)[1])["error"]["code"] == "server_shutting_down"
        # The live chat stream: its error chunk, then [DONE].
        events = [e for e in live.text.split("\n\n") if e.strip()]
        assert events[-1] == "data: [DONE]"
        assert json.loads(events[-2].removeprefix("data: "))["error"]["code"] == "server_shutting_down"
        # The request still waiting for its answer: 503 in the envelope.
        assert waiting.status == 503
        assert json.loads(waiting.text)["error"]["code"] == "server_shutting_down"
    finally:
        proc.kill()
        proc.wait()
