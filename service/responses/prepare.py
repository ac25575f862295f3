"""A ``POST /v1/responses`` as a run: the conversation (continued from a previous response)
as the chat the run answers, and what it asked (``reasoning.effort`` or ``rsa``, ``temperature``,
``top_p``, ``max_output_tokens``) handed to :func:`mrsa.service.pipeline.prepare`, which decides
RSA or plain, merges the parameters and checks the :class:`RsaRun`.

Every response is prepared as a run: a plain one (no ``rsa``, an effort that maps to none) as
one of population 1 and one round whose only trace is the answer (``selection: majority`` makes
no final call), sampled as a plain generation would be (:func:`_plain_params`: ``temperature``
and ``top_p`` default to 1, ``max_output_tokens`` to the room the context leaves). How it is
answered decides what executes it: a background response hands the run to the run manager
(:func:`mrsa.service.pipeline.submit`: stored, resumed after a restart); a live RSA response
runs it through :func:`mrsa.service.pipeline.execute` (:mod:`.live`); a live plain response does
not run it but generates straight from the engine with its sampling (:func:`.live._plain`: token
by token, which a one-trace run would only give at its end). The chat path's plain forwarding
is not used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request
from pydantic import ValidationError

from mrsa.engine.base import Engine
from mrsa.rsa import RsaParams, RsaRun
from mrsa.service.context import owner_of, runs_of, served, settings_of
from mrsa.service.errors import APIError, from_validation_error
from mrsa.service.pipeline import prepare as prepare_run
from mrsa.service.responses import stored
from mrsa.service.responses.wire import ResponseRequest, chat_of
from mrsa.service.wire import ChatCompletionRequest


@dataclass
class Prepared:
    """A checked request: its run (seed drawn, context checked) and what is kept of it."""

    resp_id: str
    engine: Engine
    run: RsaRun
    rsa: dict[str, Any] | None  # None: a plain generation
    echo: dict[str, Any]
    conversation: list[dict[str, str]]  # without the instructions: what a continuation inherits

    @property
    def plain(self) -> bool:
        return self.rsa is None


async def previous_conversation(request: Request, previous_id: str) -> list[dict[str, str]]:
    """The conversation of a stored response, its answer included."""
    found = await stored.load(runs_of(request), owner_of(request), previous_id)
    if found is None:
        raise APIError(f"No response with id `{previous_id}`.", status=404, param="previous_response_id",
                       code="response_not_found")
    conversation = stored.continuation(*found)
    if conversation is None:
        raise APIError(f"Response `{previous_id}` has no answer to continue from (status "
                       f"`{found[0].status}`).", param="previous_response_id")
    return conversation


def _plain_params(body: ResponseRequest, engine: Engine, messages: list[dict[str, str]]) -> RsaParams:
    limit = body.max_output_tokens
    if limit is None:
        limit = max(1, engine.max_model_len - len(engine.tokenizer.apply_chat_template(messages)))
    return RsaParams(
        population=1, k=1, rounds=1, selection="majority", tail_tokens=1, trace_max_tokens=limit,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        return_trace=True,  # the trace's finish_reason tells an answer cut by max_output_tokens
    )


async def prepare(body: ResponseRequest, request: Request, resp_id: str) -> Prepared:
    body.check_supported()
    engine = served(body.model, request)
    conversation = await previous_conversation(request, body.previous_response_id) if body.previous_response_id else []
    conversation += body.input_messages()
    messages = chat_of(body.instructions, conversation)
    try:
        chat = ChatCompletionRequest(model=body.model, messages=messages, temperature=body.temperature,
                                     top_p=body.top_p, max_completion_tokens=body.max_output_tokens, rsa=body.rsa,
                                     reasoning_effort=body.effort)
    except ValidationError as exc:
        raise from_validation_error(exc, prefix="input") from None
    run, rsa = prepare_run(chat, settings_of(request), engine, f"{resp_id}-a1",
                           plain=lambda: _plain_params(body, engine, messages))
    return Prepared(resp_id, engine, run, rsa, body.echo(rsa), conversation)
