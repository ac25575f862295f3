"""A fault-injecting reverse proxy for the remote-engine tests (tests only).

It runs in a background thread of the test process (uvicorn + httpx), forwards every request
to one upstream and, for ``POST /v1/completions``, applies the next action of ``plan``:

* ``"ok"``: forward untouched;
* ``"500"`` / ``"429"``: answer that status without reaching the upstream (429 carries
  ``Retry-After``);
* ``("drop", n)``: forward, then cut the connection (no chunked-encoding terminator, no
  ``[DONE]``) after ``n`` SSE events, closing the upstream request too;

and, to every request, ``latency_s`` before forwarding. ``down = True`` answers every request
(``/health`` included) with a 503, like a replica whose engine died. ``counts`` records what
was injected so a test can prove the faults happened.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import threading
import time

import httpx
import uvicorn
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "te", "upgrade"}


class _Dropped(Exception):
    """Raised inside the streamed body: uvicorn then closes the connection mid-response."""


class FaultyProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.latency_s = 0.0
        self.down = False
        self.plan: collections.deque = collections.deque()
        self.counts: collections.Counter = collections.Counter()
        self._lock = threading.Lock()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            self._app, host="127.0.0.1", port=self.port, log_level="critical", lifespan="off", interface="asgi3"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._client: httpx.AsyncClient | None = None

    # -------------------------------------------------------------- control (test thread)

    def start(self) -> FaultyProxy:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("proxy did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)

    def inject(self, *actions) -> None:
        with self._lock:
            self.plan.extend(actions)

    def reset(self) -> None:
        with self._lock:
            self.plan.clear()
        self.latency_s = 0.0
        self.down = False

    def _next_action(self):
        with self._lock:
            return self.plan.popleft() if self.plan else "ok"

    # -------------------------------------------------------------- the ASGI app

    async def _app(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        response = await self._handle(request)
        await response(scope, receive, send)

    async def _handle(self, request: Request) -> Response:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=5))
        if self.down:
            self.counts["down"] += 1
            return Response("replica down", status_code=503)
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        body = await request.body()
        action = "ok"
        if request.method == "POST" and request.url.path == "/v1/completions":
            self.counts["completions"] += 1
            action = self._next_action()
        if action == "500":
            self.counts["500"] += 1
            return Response('{"error": {"message": "injected", "code": 500}}', status_code=500)
        if action == "429":
            self.counts["429"] += 1
            return Response("slow down", status_code=429, headers={"Retry-After": "1"})
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        upstream_req = self._client.build_request(
            request.method,
            self.upstream + request.url.path + (f"?{request.url.query}" if request.url.query else ""),
            content=body,
            headers=headers,
        )
        try:
            upstream = await self._client.send(upstream_req, stream=True)
        except httpx.HTTPError as exc:
            return Response(f"proxy: upstream unreachable: {exc}", status_code=502)
        out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
        drop_after = action[1] if isinstance(action, tuple) and action[0] == "drop" else None

        async def body_iter():
            events = 0
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
                    events += chunk.count(b"data: ")
                    if drop_after is not None and events >= drop_after:
                        self.counts["drop"] += 1
                        raise _Dropped(f"dropped after {events} events")
            finally:
                await upstream.aclose()

        return StreamingResponse(body_iter(), status_code=upstream.status_code, headers=out_headers)
