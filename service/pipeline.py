"""The one way an RSA request goes through the service, whichever API it came by: chat
completions (answered, streamed or in the background), ``/v1/responses`` (live or in the
background) and ``POST /v1/rsa/runs``. Each of them only renders its own wire format.

- :func:`wants_rsa` decides RSA or plain, once: an ``rsa`` object, or a ``reasoning_effort``
  (the server's default effort when the request sends none) that maps to a preset;
- :func:`prepare` merges what the request asked with the server's settings, once, checks the
  limits and builds the :class:`~mrsa.rsa.RsaRun` (its seed drawn, its prompts known to fit);
- :func:`admit` takes the request's admission ticket: a slot of the runs' pool, or of the plain
  requests' pool;
- :func:`execute` runs a run while its client waits: it waits for the ticket, reads the run's
  events from a task of their own, feeds the metrics and the log, and raises a failure in one
  typed form, :class:`Failure` (what :func:`failure` makes of any exception);
- :func:`submit` hands a run to the background manager instead (:mod:`mrsa.service.runs`),
  whose own loop checkpoints each node (see :meth:`RunManager._execute
  <mrsa.service.runs.manager.RunManager._execute>` for why it does not read :func:`execute`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

from fastapi import Request
from pydantic import ValidationError

from mrsa.engine.base import Engine, EngineError
from mrsa.rsa import ContextTooLongError, NoUserMessageError, RsaParamError, RsaParams, RsaRun
from mrsa.rsa.events import RsaEvent, RsaResult, RunCompleted, RunFailed
from mrsa.service import logs, metrics
from mrsa.service.admission import SCOPE_KEY, Overloaded, Ticket, Tickets
from mrsa.service.context import engine_of, owner_of, runs_of
from mrsa.service.errors import APIError, from_validation_error
from mrsa.service.settings import Settings
from mrsa.service.tasks import in_own_task
from mrsa.service.wire import ChatCompletionRequest, UsageInfo, usage_info

if TYPE_CHECKING:
    from mrsa.service.runs import Submitted

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ prepare


def wants_rsa(settings: Settings, rsa: object, effort: object) -> bool:
    """Whether a request runs RSA: it carries an ``rsa`` object, or its ``reasoning_effort``
    (the server's ``default_effort`` when it sends none) names a preset; ``none`` and
    ``minimal`` do not. Read from a raw body too: a value of the wrong type counts as sent
    (``rsa``) or as none (``reasoning_effort``), and validation answers it."""
    effort = effort if isinstance(effort, str) else None
    return rsa is not None or settings.effort_presets.get(effort or settings.default_effort) is not None


def rsa_object(settings: Settings, rsa: dict[str, Any] | None, effort: str | None) -> dict[str, Any] | None:
    """The rsa object a request runs: its own fields over its effort's preset; None when it is
    a plain request (:func:`wants_rsa`)."""
    if not wants_rsa(settings, rsa, effort):
        return None
    return {**(settings.effort_presets.get(effort or settings.default_effort) or {}), **(rsa or {})}


def rsa_params(asked: ChatCompletionRequest, rsa: dict[str, Any], settings: Settings) -> RsaParams:
    """The one merge of a run's parameters, lowest first: the server's defaults, the top-level
    OpenAI fields (``temperature``, ``top_p``, ``seed``, ``ignore_eos``), the effort's preset,
    the request's ``rsa`` fields (``rsa`` is the last two merged: :func:`rsa_object`). OpenAI's
    ``max_tokens`` caps the final answer unless the rsa object sets ``final_max_tokens``. 400
    for ``n`` other than 1, ``stop``, a bad field (``param`` = ``rsa.<field>``) or one beyond
    the server's limits."""
    if asked.n != 1:
        raise APIError("n must be 1 with rsa: the run returns one answer", param="n")
    if asked.stop:
        raise APIError("stop is not supported with rsa", param="stop")
    top_level = {
        "temperature": asked.temperature,
        "top_p": asked.top_p,
        "seed": asked.seed,
        "ignore_eos": asked.ignore_eos or None,
    }
    overrides = {k: v for k, v in top_level.items() if v is not None}
    overrides.update(rsa)
    try:
        params = settings.rsa_params(overrides)
        limit = asked.completion_limit
        if limit is not None and "final_max_tokens" not in rsa:
            # OpenAI's max_tokens is a ceiling, not a target: it caps the final answer (whose
            # budget is otherwise trace_max_tokens), so a client default such as 4096 never
            # asks for more context than the run needs.
            params = params.model_copy(update={"final_max_tokens": min(limit, params.final_tokens)})
        params.check_limits(settings.limits)
    except ValidationError as exc:
        raise from_validation_error(exc, prefix="rsa") from None
    except RsaParamError as exc:
        raise APIError(exc.message, param=f"rsa.{exc.param}", code="invalid_value") from None
    return params


def prepare(
    asked: ChatCompletionRequest, settings: Settings, engine: Engine, run_id: str, *,
    plain: Callable[[], RsaParams] | None = None,
) -> tuple[RsaRun, dict[str, Any] | None]:
    """The checked run of what a request asked (its ``rsa`` object, ``reasoning_effort``,
    top-level OpenAI fields and messages), and the rsa object it runs (None: a plain request).

    A plain request runs the parameters ``plain`` gives (the Responses API's one-trace
    generation); without ``plain`` it runs the server's defaults (a background run is RSA
    whatever it names). 400 when the parameters are refused (:func:`rsa_params`), when the
    chat has no user message, or when its prompts cannot fit the context (prompt + K tails +
    template + trace tokens): ``context_length_exceeded``."""
    rsa = rsa_object(settings, asked.rsa, asked.reasoning_effort)
    if rsa is None and plain is not None:
        params = plain()
    else:
        params = rsa_params(asked, rsa or {}, settings)
    try:
        return RsaRun(engine, asked.chat(), params, run_id=run_id), rsa
    except NoUserMessageError as exc:
        raise APIError(str(exc), param="messages", code="invalid_value") from None
    except ContextTooLongError as exc:
        raise APIError(str(exc), param="messages", code="context_length_exceeded") from None


# ------------------------------------------------------------------------------ admission


def admit(request: Request, *, plain: bool = False) -> Ticket:
    """The request's ticket: a slot of the runs' pool (an RSA run, live or in the background),
    or with ``plain`` of the plain requests' pool. Held by the request (released when its
    response ends, unless a background run detaches it); 429 with Retry-After when the pool's
    slots and queue (or the caller's share of them) are full."""
    admission = request.app.state.plain_admission if plain else runs_of(request).admission
    tickets: Tickets | None = request.scope.get(SCOPE_KEY)
    try:
        if tickets is None:  # an app without TicketScope: the caller releases it
            return admission.admit(owner=owner_of(request))
        return tickets.admit(admission, owner_of(request))
    except Overloaded as exc:
        raise APIError(
            str(exc), status=429, type="rate_limit_error", code="server_busy",
            headers={"Retry-After": str(exc.retry_after_s)},
        ) from None


# ------------------------------------------------------------------------------ execute


class Failure(Exception):
    """A run (or a generation) that did not complete, in one form: the envelope to send, and
    the usage it spent (a failed run's; None when none is known)."""

    def __init__(self, error: APIError, usage: UsageInfo | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.usage = usage

    def body(self) -> dict[str, Any]:
        """The envelope, with ``usage`` when known: a failed chat completion's body, a stored
        run's error."""
        body = self.error.body()
        return body if self.usage is None else {**body, "usage": self.usage.model_dump()}


def failure(exc: BaseException) -> Failure:
    """``exc`` as a :class:`Failure`: a failed run or an engine error with its status and code
    (and a run's usage), anything else as the 500 ``internal_error`` (logged where caught)."""
    if isinstance(exc, Failure):
        return exc
    if isinstance(exc, RunFailed | EngineError):
        error = APIError.for_status(exc.status, str(exc) or type(exc).__name__, code=exc.code)
        return Failure(error, usage_info(exc.usage) if isinstance(exc, RunFailed) else None)
    return Failure(APIError.internal(exc))


async def execute(run: RsaRun, ticket: Ticket, run_id: str) -> AsyncIterator[RsaEvent]:
    """The events of a run its client waits for, up to and including :class:`RunCompleted`.

    Counts the run and logs its start (every later record of the context names ``run_id``),
    waits for ``ticket``, then reads ``run.events()`` from a task of their own (closing this
    generator, or cancelling its reader, cancels that task, which aborts the engine requests:
    :func:`~mrsa.service.tasks.in_own_task`). Every event feeds the run's metrics; the end is
    counted once: completed (and logged), failed, or cancelled when the reader stops first.
    A failure is raised as :class:`Failure`."""
    logs.bind_run(run_id)
    params = run.params
    log.info("rsa run started", extra={"seed": run.seed, "population": params.population, "k": params.k,
                                       "rounds": params.rounds, "method": params.method})
    metrics.RSA_RUNS.inc()
    observer = metrics.RunObserver()
    ended = False
    try:
        await ticket.wait()
        async with aclosing(in_own_task(run.events())) as events:
            async for event in events:
                observer.observe(event)
                if isinstance(event, RunCompleted):
                    ended = True
                    _log_completed(event.result)
                yield event
    except RunFailed as exc:
        ended = True
        observer.failed(exc.calls, exc.usage.completion_tokens)
        log.warning("rsa run failed: %s", exc)
        raise failure(exc) from exc
    except Exception as exc:
        ended = True
        observer.failed(0, 0)
        if isinstance(exc, EngineError):
            log.warning("rsa run failed: %s", exc)
        else:
            log.exception("rsa run failed")
        raise failure(exc) from exc
    finally:
        if not ended:  # the reader went away (the client hung up) before the run ended
            observer.cancelled()


def _log_completed(result: RsaResult) -> None:
    log.info(
        "rsa run completed",
        extra={
            "stop_reason": result.stop_reason, "method": result.method, "rounds_completed": result.rounds_completed,
            "calls": result.calls, "completion_tokens": result.usage.completion_tokens,
            "answer": result.answer,
        },
    )


# ------------------------------------------------------------------------------ background


async def submit(request: Request, run_id: str, run: RsaRun, *, idempotency: tuple[str, str] | None = None,
                 extra: dict[str, Any] | None = None, response: dict[str, Any] | None = None) -> Submitted:
    """Hand a prepared run to the background manager with its admission ticket (which the run
    then owns), stored with ``extra`` in its spec and ``response`` (a background response's
    record) in one transaction; counted once (a repeated ``Idempotency-Key`` replays the
    earlier run: :meth:`RunManager.submit <mrsa.service.runs.RunManager.submit>`)."""
    ticket = admit(request)
    submitted = await runs_of(request).submit(owner_of(request), engine_of(request).model_name, run_id, run, ticket,
                                              extra=extra, response=response, idempotency=idempotency)
    if not submitted.replayed:
        metrics.RSA_RUNS.inc()
    return submitted
