"""Hostile bodies and failed writes: an admission ticket never outlives its request (a store that
cannot write answers 503 and gives the slot back), what the store cannot hold is refused with a
400 naming the field (lone surrogates anywhere, nesting past the limit), model output with a
lone surrogate is kept as U+FFFD, and event numbers past SQLite's integers are a 400."""

from __future__ import annotations

import json
import sqlite3

import httpx
import pytest

from mrsa.service.json_body import MAX_DEPTH
from tests.fakes import FakeEngine
from tests.serving import QUESTION, RSA, serving, submit, wait_status

SMALL = {"population": 2, "k": 2, "rounds": 1, "tail_tokens": 8, "trace_max_tokens": 24, "seed": 3}


def _post(http: httpx.AsyncClient, path: str, body: object) -> object:
    """``body`` as JSON with ASCII escapes: a lone surrogate travels as the legal ``\\udfff``."""
    return http.post(path, content=json.dumps(body).encode(), headers={"Content-Type": "application/json"})


def _running(http: httpx.AsyncClient) -> tuple[int, int]:
    runs = http._transport.app.state.runs.admission  # type: ignore[attr-defined]
    return runs.running, runs.queued


def _db(http: httpx.AsyncClient):  # the store's connection, to make it fail as a full disk does
    return http._transport.app.state.runs._open().store._db  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/responses", {"model": "fake-model", "input": "hi", "background": True, "metadata": {"k\udfff": "v"}},
         "metadata"),
        ("/v1/responses", {"model": "fake-model", "input": "hi", "background": True, "metadata": {"k": "v\udfff"}},
         "metadata.k"),
        ("/v1/responses", {"model": "fake-model", "input": "hi\udfff", "background": True}, "input"),
        ("/v1/responses", {"model": "fake-model", "input": "hi", "previous_response_id": "resp_\udfff"},
         "previous_response_id"),
        ("/v1/rsa/runs", {"model": "fake-model", "messages": [{"role": "user", "content": "\ud800"}], "rsa": SMALL},
         "messages.0.content"),
        ("/v1/chat/completions", {"model": "fake-model", "messages": QUESTION, "rsa": {**SMALL, "x\udfff": 1}},
         "rsa"),
        ("/v1/chat/completions", {"model": "fake-model", "messages": [{"role": "user", "content": "a\udc00"}]},
         "messages.0.content"),
    ],
)
async def test_a_lone_surrogate_is_a_400_naming_its_field_and_leaks_no_slot(path: str, body: dict, param: str) -> None:
    """Regression: a background response whose metadata key held ``\\udfff`` took a run slot,
    then the store's write raised (500) and nothing gave the slot back; after 4 every RSA
    request waited forever."""
    async with serving(FakeEngine(), admission={"max_running_runs": 2, "max_queued_runs": 2}) as http:
        for _ in range(6):  # more than the slots and the queue together
            r = await _post(http, path, body)
            assert r.status_code == 400, r.text
            assert r.json()["error"]["param"] == param
        assert _running(http) == (0, 0)
        run = await submit(http, SMALL)
        assert (await wait_status(http, run["id"], {"completed"}))["status"] == "completed"


async def test_a_store_that_cannot_write_answers_503_and_gives_the_slot_back() -> None:
    """Any store error (here a full disk: SQLite refuses to grow the file) is the envelope's 503,
    and the admission ticket taken before the write goes back with the request."""
    async with serving(FakeEngine(), admission={"max_running_runs": 1, "max_queued_runs": 1}) as http:
        db = _db(http)
        (pages,) = db.execute("PRAGMA page_count").fetchone()
        db.execute(f"PRAGMA max_page_count = {pages + 8}")
        db.execute("CREATE TABLE filler (x BLOB)")
        with pytest.raises(sqlite3.OperationalError, match="full"):
            while True:  # every free page taken: the disk is full
                db.execute("INSERT INTO filler VALUES (randomblob(512))")
        long = [{"role": "user", "content": "What is 6 * 7? " + "Think. " * 1000}]  # new pages: none left
        bodies = [
            ("/v1/rsa/runs", {"model": "fake-model", "messages": long, "rsa": RSA}),
            ("/v1/chat/completions", {"model": "fake-model", "messages": long, "rsa": RSA, "background": True}),
            ("/v1/responses", {"model": "fake-model", "input": long, "background": True}),
        ]
        for path, body in bodies * 3:
            r = await _post(http, path, body)
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "store_unavailable" and r.headers["retry-after"]
            assert _running(http) == (0, 0)
        db.execute("PRAGMA max_page_count = 1073741823")
        run = await submit(http, SMALL)
        assert (await wait_status(http, run["id"], {"completed"}))["status"] == "completed"


async def test_model_output_with_a_lone_surrogate_is_kept_as_the_replacement_character() -> None:
    """Regression: an answer holding a lone surrogate was generated in full, then its stored
    response failed to write (500). It is kept (and answered) with U+FFFD in its place."""
    engine = FakeEngine(script=lambda r: "odd \udfff then The answer is \\boxed{4}.")
    async with serving(engine) as http:
        live = await http.post("/v1/responses", json={"model": "fake-model", "input": "hi"})
        assert live.status_code == 200, live.text
        text = live.json()["output"][-1]["content"][0]["text"]
        assert "odd \ufffd then" in text
        kept = await http.get(f"/v1/responses/{live.json()['id']}")
        assert kept.status_code == 200 and kept.json()["output"][-1]["content"][0]["text"] == text

        chat = await http.post("/v1/chat/completions", json={"model": "fake-model", "messages": QUESTION, "rsa": SMALL})
        assert chat.status_code == 200, chat.text
        assert "\ufffd" in chat.json()["choices"][0]["message"]["content"]

        background = await http.post("/v1/responses", json={"model": "fake-model", "input": "hi", "background": True})
        resp_id = background.json()["id"]
        for _ in range(2000):
            got = await http.get(f"/v1/responses/{resp_id}")
            if got.json()["status"] == "completed":
                break
        assert got.status_code == 200 and "odd \ufffd then" in got.json()["output"][-1]["content"][0]["text"]


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize",
                                  "/v1/rsa/runs", "/v1/responses"])
@pytest.mark.parametrize("depth", [5000, MAX_DEPTH + 2])
async def test_deeply_nested_json_is_a_400(path: str, depth: int) -> None:
    """Regression: 5,000 levels made the routes that parse their body by hand answer 500
    (RecursionError); nesting the parser survives but the service has no use for is refused too."""
    async with serving(FakeEngine()) as http:
        content = '{"model": "fake-model", "messages": ' + _nested(depth) + "}"
        r = await http.post(path, content=content, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["type"] == "invalid_request_error"
        assert _running(http) == (0, 0)


async def test_event_numbers_past_sqlite_integers_are_a_400() -> None:
    """Regression: ``?after=2**63`` answered 200, then the stream died with OverflowError."""
    async with serving(FakeEngine()) as http:
        run = await submit(http, SMALL)
        await wait_status(http, run["id"], {"completed"})
        url = f"/v1/rsa/runs/{run['id']}/events"
        for query in (f"after={2**63}", "after=-1", f"after={10**40}"):
            r = await http.get(f"{url}?{query}")
            assert r.status_code == 400 and r.json()["error"]["param"] == "after", (query, r.text)
        for header in (str(2**63), str(2**64), "-3", "garbage", ""):
            r = await http.get(url, headers={"Last-Event-ID": header})
            assert r.status_code == 400 and r.json()["error"]["param"] == "Last-Event-ID", (header, r.text)
        last = await http.get(f"{url}?after={2**63 - 1}")  # the largest: nothing after it
        assert last.status_code == 200 and "data:" not in last.text
