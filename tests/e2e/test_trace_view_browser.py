"""The live trace view in a real browser (Debian's chromium driven by Playwright) against the
real server and engine: start a small run from the page, watch its nodes appear and settle,
check the drawing against the run, and keep a screenshot in tests/artifacts/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.e2e.server import Server

CHROMIUM = "/usr/bin/chromium"  # Debian's; Playwright's own download is unreachable offline
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
# A worked example first: the small default model then boxes an answer more often.
ONE_SHOT = (
    "Question: What is 8 - 6? Answer: 8 - 6 = 2. The answer is \\boxed{2}. "
    "Question: What is 7 + 5? Answer:"
)
RUN = {"population": 3, "k": 2, "rounds": 2, "tail_tokens": 32, "trace_max_tokens": 48, "seed": 7}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), "chromium is missing: `make test` installs it (apt-get install chromium)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    page = browser.new_page(viewport={"width": 1400, "height": 720})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
    finally:
        page.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _fill(page: Page, values: dict) -> None:
    for field, v in values.items():
        page.fill(f"#{field}", str(v))


def test_trace_view_draws_a_live_run(server: Server, page: Page) -> None:
    page.goto(f"{server.url}/trace")
    _fill(page, {**RUN, "question": ONE_SHOT})
    page.click("#start")
    # node_started events draw boxes before their traces end
    page.wait_for_selector('g.node[data-round][data-status="running"]', timeout=120_000)
    page.wait_for_selector('#run-status[data-state="completed"]', timeout=240_000)
    nodes = page.locator("g.node[data-round]")
    assert nodes.count() == RUN["population"] * RUN["rounds"]
    info = nodes.evaluate_all(
        "gs => gs.map(g => ({round: +g.dataset.round, status: g.dataset.status, answer: g.dataset.answer,"
        " tokens: +g.dataset.tokens, fill: g.querySelector('rect').getAttribute('fill')}))"
    )
    assert {n["status"] for n in info} == {"finished"}
    assert all(0 < n["tokens"] <= RUN["trace_max_tokens"] for n in info)
    # one colour per answer, different answers in different colours
    fills: dict[str, set[str]] = {}
    for n in info:
        fills.setdefault(n["answer"], set()).add(n["fill"])
    assert all(len(f) == 1 for f in fills.values())
    assert len({next(iter(f)) for f in fills.values()}) == len(fills)
    # every round-2 node has an edge from each of its K parents in round 1
    for i in range(RUN["population"]):
        edges = page.locator(f'path.edge[data-to="1:{i}"]')
        assert edges.count() == RUN["k"]
        assert all(src.startswith("0:") for src in edges.evaluate_all("es => es.map(e => e.dataset.from)"))
    assert page.locator("#final-node").count() == 1
    assert page.locator("#final-answer").inner_text() != "–"
    assert "completion tokens" in page.locator("#usage").inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "trace_view.png"), full_page=True)


def test_trace_view_shows_the_servers_error(server: Server, page: Page) -> None:
    page.goto(f"{server.url}/trace")
    _fill(page, {**RUN, "k": 5})  # k > population: a 400 from the server
    page.click("#start")
    page.wait_for_selector('#run-status[data-state="failed"]', timeout=30_000)
    assert "400" in page.locator("#error").inner_text() and "k" in page.locator("#error").inner_text()
    assert page.locator("g.node").count() == 0


def test_trace_view_follows_a_background_run(server: Server, page: Page) -> None:
    body = {"model": server.model, "messages": [{"role": "user", "content": "What is 3 + 4? Answer in \\boxed{}."}],
            "rsa": {**RUN, "seed": 11}}
    created = httpx.post(f"{server.url}/v1/rsa/runs", json=body, timeout=30)
    assert created.status_code == 202, created.text
    run_id = created.json()["id"]
    page.goto(f"{server.url}/trace?run={run_id}")
    page.wait_for_selector('#run-status[data-state="completed"]', timeout=240_000)
    result = httpx.get(f"{server.url}/v1/rsa/runs/{run_id}", timeout=30).json()
    assert result["status"] == "completed"
    nodes = page.locator("g.node[data-round]")
    assert nodes.count() == RUN["population"] * RUN["rounds"]
    answers = result["result"]["rsa"]["answers"]
    drawn = nodes.evaluate_all("gs => gs.map(g => [+g.dataset.round, +g.dataset.index, g.dataset.answer])")
    assert sorted(drawn) == sorted(
        [r, i, a or ""] for r, row in enumerate(answers) for i, a in enumerate(row)
    )
    assert page.locator('path.edge[data-to^="1:"]').count() == RUN["population"] * RUN["k"]
    assert page.locator("#final-answer").inner_text() == (result["result"]["rsa"]["answer"] or "(no answer extracted)")
