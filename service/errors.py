"""The OpenAI error envelope, and the handlers that make every failure speak it.

``{"error": {"message", "type", "param", "code"}}`` with the matching HTTP status, for
validation errors, unknown routes, malformed JSON and engine failures alike. It is built here
only: :class:`APIError` (raised, or sent as a body, an SSE error chunk or a stored run's error),
whose inside is the typed :class:`ErrorBody`; :meth:`APIError.for_status` names the type from the
status, :meth:`APIError.internal` is the 500 of a failure nobody expected.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    """The inside of the OpenAI error envelope ``{"error": {...}}``."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class APIError(Exception):
    """An error to return to the client as an OpenAI envelope."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.headers = headers
        self.message = message
        self.status = status
        self.type = type
        self.param = param
        self.code = code

    @classmethod
    def for_status(
        cls, status: int, message: str, *, code: str | None = None, param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> APIError:
        """The envelope of ``status``: an ``invalid_request_error`` below 500, a
        ``server_error`` from 500 up (an engine failure, a failed run, an HTTP error)."""
        err_type = "invalid_request_error" if status < 500 else "server_error"
        return cls(message, status=status, type=err_type, param=param, code=code, headers=headers)

    @classmethod
    def internal(cls, exc: BaseException) -> APIError:
        """The 500 of a failure nobody expected (a bug): its type named, the rest left to the log."""
        return cls(f"Internal error: {type(exc).__name__}", status=500, type="server_error", code="internal_error")

    def error_body(self) -> ErrorBody:
        return ErrorBody(message=self.message, type=self.type, param=self.param, code=self.code)

    def body(self) -> dict:
        """``{"error": {"message", "type", "param", "code"}}``."""
        return {"error": self.error_body().model_dump()}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _loc_to_param(loc: tuple, prefix: str = "") -> str | None:
    parts = [str(p) for p in loc if p not in ("body",)]
    name = ".".join(parts)
    if prefix:
        return f"{prefix}.{name}" if name else prefix
    return name or None


def from_validation_error(exc: ValidationError | RequestValidationError, prefix: str = "") -> APIError:
    """The first pydantic error as an envelope: the field becomes ``param``."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": str(exc), "type": "invalid"}
    if first.get("type") == "json_invalid":
        return APIError(
            f"Request body is not valid JSON: {first.get('msg')}",
            param=None,
            code="invalid_json",
        )
    param = _loc_to_param(tuple(first.get("loc", ())), prefix)
    msg = first.get("msg", "invalid value").removeprefix("Value error, ")
    where = f"'{param}': " if param else ""
    return APIError(f"Invalid value for {where}{msg}", param=param, code="invalid_value")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _request_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return from_validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        phrase = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
        return APIError.for_status(exc.status_code, str(exc.detail), code=phrase).response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return APIError.internal(exc).response()
