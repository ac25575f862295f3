"""What a request handler needs from the app: its engine, settings and runs, the caller, admission."""

from __future__ import annotations

from fastapi import Request

from mrsa.engine.base import Engine, EngineError
from mrsa.rsa.events import RunFailed
from mrsa.service.admission import SCOPE_KEY, Admission, Overloaded, Ticket, Tickets
from mrsa.service.errors import APIError
from mrsa.service.runs import RunManager
from mrsa.service.settings import Settings


def engine_of(request: Request) -> Engine:
    return request.app.state.engine


def settings_of(request: Request) -> Settings:
    return request.app.state.settings


def runs_of(request: Request) -> RunManager:
    return request.app.state.runs


def owner_of(request: Request) -> str:
    """The hash of the caller's API key (set by service.auth), "" when keys are off."""
    return getattr(request.state, "owner", "")


def served(model: str, request: Request) -> Engine:
    """The engine, once ``model`` is a name it serves (404 otherwise)."""
    engine = engine_of(request)
    if model not in engine.served_names:
        raise APIError(
            f"The model `{model}` does not exist. Available: {', '.join(f'`{n}`' for n in engine.served_names)}.",
            status=404, param="model", code="model_not_found",
        )
    return engine


def admit(request: Request, admission: Admission) -> Ticket:
    """A ticket of ``admission`` for the caller, held by the request (released when its
    response ends, unless a background run detaches it), or 429 with Retry-After when slots
    and queue (or the caller's share of them) are full."""
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


def engine_error(exc: EngineError | RunFailed) -> APIError:
    """An engine failure, or a failed run (which carries its cause's status), as an envelope."""
    err_type = "invalid_request_error" if exc.status < 500 else "server_error"
    return APIError(str(exc), status=exc.status, type=err_type, code=exc.code)
