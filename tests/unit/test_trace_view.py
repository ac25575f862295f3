"""The trace view's page and script are served without a build step or outside resources, and
stay open when API keys guard the API (the page's own calls carry the key)."""

from __future__ import annotations

import re

import httpx

from mrsa.service.app import create_app
from mrsa.service.settings import Settings
from tests.fakes import FakeEngine


async def test_page_and_script_are_served_and_self_contained() -> None:
    app = create_app(Settings(api_keys="k1"), engine_factory=lambda _: FakeEngine())
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            page = await http.get("/trace")
            script = await http.get("/trace/trace.js")
            api = await http.get("/v1/models")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert api.status_code == 401  # the API itself still needs the key
    assert '<script src="/trace/trace.js">' in page.text
    for text in (page.text, script.text):  # nothing fetched from elsewhere (hosts may be offline)
        assert not re.search(r"(src|href)=\"(https?:)?//", text)
        assert "http://" not in text.replace('"http://www.w3.org/2000/svg"', "")
        assert "https://" not in text
    for needed in ("/v1/chat/completions", "/v1/rsa/runs/", "node_started", "node_finished", "run_completed"):
        assert needed in script.text
