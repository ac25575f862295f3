"""What a JSON request body may hold: the 400s that name why one may not.

JSON allows what the service cannot keep or pass on: a lone surrogate (``"\\udfff"`` is legal
JSON, and a legal Python string, but no UTF-8 text, so no stored run, response or metadata can
hold it), and nesting deep enough to exhaust the parser's recursion. A body is refused with a
400 naming the first field that holds a lone surrogate (in a key or a value), and a body nested
deeper than :data:`MAX_DEPTH` with a 400 of its own, before any work or admission.

Model output is not refused but repaired: :func:`replacing_surrogates` writes a lone surrogate
as U+FFFD (the run store does the same with anything it keeps).

:func:`json_object` reads a body by hand (for routes that route on it before validating it);
:func:`check_json` checks one that FastAPI parsed. The walk is iterative: a hostile body
cannot make it recurse.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from fastapi import Request

from mrsa.service.errors import APIError

MAX_DEPTH = 64
"""Deepest nesting of arrays and objects a body may have (OpenAI's requests nest a handful)."""

T = TypeVar("T")
_SURROGATE = re.compile("[\ud800-\udfff]")


def replacing_surrogates(value: T) -> T:
    """``value`` (JSON-able) with each lone surrogate of its strings replaced by U+FFFD, the
    replacement character: what the service does with model output that holds one, so that
    answers and stored responses can be written as UTF-8. ``value`` itself when it holds none."""
    text = json.dumps(value, ensure_ascii=False)
    repaired = repaired_json(text)
    return value if repaired is text else json.loads(repaired)


def repaired_json(text: str) -> str:
    """JSON text with each lone surrogate as U+FFFD (JSON's escapes are ASCII, so a surrogate in
    the text is one of a string's characters); ``text`` itself when it holds none."""
    return _SURROGATE.sub("\ufffd", text) if _lone_surrogate(text) else text


def _lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _path(parts: tuple[str | int, ...]) -> str:
    return ".".join(str(p) for p in parts) or "body"


def check_json(value: Any) -> None:
    """400 when ``value`` (a parsed body) nests deeper than :data:`MAX_DEPTH` or holds a lone
    surrogate; the error's ``param`` names the field."""
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), value)]
    while stack:
        path, item = stack.pop()
        if len(path) > MAX_DEPTH:
            raise APIError(f"Request body nests deeper than {MAX_DEPTH} levels.", param=_path(path[:MAX_DEPTH]),
                           code="invalid_json")
        if isinstance(item, str):
            if _lone_surrogate(item):
                raise APIError(f"'{_path(path)}' holds a lone surrogate (not valid Unicode text).",
                               param=_path(path), code="invalid_value")
        elif isinstance(item, dict):
            for key, child in reversed(item.items()):
                if _lone_surrogate(key):
                    name = _path(path) if path else "body"
                    raise APIError(f"A key of '{name}' holds a lone surrogate (not valid Unicode text).",
                                   param=name, code="invalid_value")
                stack.append(((*path, key), child))
        elif isinstance(item, list):
            stack.extend(((*path, i), child) for i, child in reversed(list(enumerate(item))))


async def json_object(request: Request) -> dict:
    """The request's JSON object, checked (:func:`check_json`), or the 400 that says why there
    is none."""
    try:
        raw = await request.json()
    except ValueError as exc:
        raise APIError(f"Request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise APIError(f"Request body nests deeper than {MAX_DEPTH} levels.", code="invalid_json") from None
    if not isinstance(raw, dict):
        raise APIError("Request body must be a JSON object", code="invalid_json")
    check_json(raw)
    return raw
