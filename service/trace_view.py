"""``GET /trace``: a live picture of an RSA run, drawn in the browser from its progress events.

Static HTML and JavaScript, no build step and no CDN (hosts may be offline): the page starts a
streaming RSA completion itself and reads the SSE progress chunks, or, with ``?run=<id>``,
follows a background run's ``/v1/rsa/runs/{id}/events``. Rounds are columns, nodes are boxes
coloured by their extracted answer, edges go to each node's K parents.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC = Path(__file__).parent / "static"
router = APIRouter(include_in_schema=False)


@router.get("/trace")
async def trace_page() -> FileResponse:
    return FileResponse(STATIC / "trace.html", media_type="text/html; charset=utf-8")


@router.get("/trace/trace.js")
async def trace_script() -> FileResponse:
    return FileResponse(STATIC / "trace.js", media_type="text/javascript; charset=utf-8")
