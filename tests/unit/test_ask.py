"""``mrsa ask`` against a real HTTP server (uvicorn on 127.0.0.1, fake engine) that needs keys."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from mrsa.service.app import create_app
from mrsa.service.ask import ask
from mrsa.service.settings import Settings
from tests.fakes import FakeEngine

KEY = "alpha-key-1"
RSA = {"population": 2, "k": 2, "rounds": 2, "seed": 1}


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings(api_keys=KEY, store_path=Path(tmp_path_factory.mktemp("ask")) / "runs.sqlite3")
    app = create_app(settings, engine_factory=lambda _: FakeEngine())
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)


def test_ask_with_the_key_streams_the_answer(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert ask(url, "What is 6 * 7?", RSA, api_key=KEY) == 0
    out = capsys.readouterr().out
    assert "final (" in out and "\\boxed{42}" in out and "usage:" in out


@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_ask_without_a_valid_key_prints_the_401(url: str, key: str | None, capsys: pytest.CaptureFixture[str]) -> None:
    assert ask(url, "What is 6 * 7?", RSA, api_key=key) == 1
    assert "401" in capsys.readouterr().out


def test_ask_names_the_model_when_told(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert ask(url, "What is 6 * 7?", RSA, model="no-such-model", api_key=KEY) == 1
    assert "404" in capsys.readouterr().out
