"""One error shape for every response, ``{"error": {"code", "message", "request_id"}}``, and the
handlers that turn domain errors, FastAPI's validation errors and database outages into it.

Database outages become 503 ``unavailable`` with Retry-After, never a 500, so clients and load
balancers back off instead of treating the server as broken; a connection pool that stays full is
503 ``busy`` (the database is fine, this server is saturated) with a shorter Retry-After.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException

from genloom.errors import GenloomError, InvalidInput, Unavailable
from genloom.observability import get_logger

log = get_logger("genloom.api")
RETRY_AFTER_SECONDS = 5
BUSY_RETRY_AFTER_SECONDS = 1

#: Codes for errors raised as bare HTTP statuses (routing, method, body limits).
_STATUS_CODES = {
    400: "invalid_input", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    406: "not_acceptable", 409: "invalid_transition", 413: "too_large", 415: "unsupported_media_type",
    416: "range_not_satisfiable", 422: "invalid_input", 429: "rate_limited", 503: "unavailable",
}


class ApiError(HTTPException):
    """An HTTP-level refusal with its own code. An HTTPException, so FastAPI's body parsing
    re-raises it untouched (it wraps other exceptions into a generic 400)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status, message, headers)
        self.code = code


def too_large(limit: int) -> ApiError:
    return ApiError(413, "too_large", f"the request body is larger than the limit of {limit} bytes")


def request_id_of(request: Request) -> str:
    return str(getattr(request.state, "request_id", "") or "")


def error_response(
    request: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "request_id": request_id_of(request)}}
    return JSONResponse(body, status_code=status, headers=headers)


def unavailable(request: Request, message: str = "the database is unreachable") -> JSONResponse:
    return error_response(request, 503, "unavailable", message, {"Retry-After": str(RETRY_AFTER_SECONDS)})


def busy(request: Request) -> JSONResponse:
    """Every pooled connection stayed taken for the pool's timeout: the database is up, this
    server is saturated; a retry soon (here or on another replica) is the right move."""
    return error_response(request, 503, "busy", "the server is busy, retry",
                          {"Retry-After": str(BUSY_RETRY_AFTER_SECONDS)})


def status_of(exc: GenloomError) -> int:
    """Invalid input is 422 throughout the API (the domain's bare 400 included)."""
    if isinstance(exc, InvalidInput) and exc.status == 400:
        return 422
    return exc.status


async def _genloom(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, GenloomError)
    if isinstance(exc, Unavailable):
        return unavailable(request, exc.message)
    status = status_of(exc)
    if status >= 500:
        log.error("api.error", code=exc.code, error=exc.message, path=request.url.path)
    headers = None
    if status == 429 and "retry_after" in exc.details:
        headers = {"Retry-After": str(exc.details["retry_after"])}
    return error_response(request, status, exc.code, exc.message, headers)


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = getattr(exc, "code", None) or _STATUS_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return error_response(request, exc.status_code, code, message, dict(exc.headers or {}) or None)


def _where(err: dict[str, Any]) -> str:
    return ".".join(str(p) for p in err.get("loc", ())) or "request"


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if not errors:
        return error_response(request, 422, "invalid_input", "the request is not valid")
    first = errors[0]
    message = f"{_where(first)}: {first.get('msg', 'invalid value')}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    return error_response(request, 422, "invalid_input", message)


async def _database_down(request: Request, exc: Exception) -> JSONResponse:
    log.warning("api.database_unavailable", error=type(exc).__name__, path=request.url.path)
    return unavailable(request)


async def _pool_exhausted(request: Request, exc: Exception) -> JSONResponse:
    log.warning("api.database_pool_exhausted", path=request.url.path)
    return busy(request)


async def _bad_value(request: Request, exc: Exception) -> JSONResponse:
    """The database refused a value (a NUL character, a bad escape) that validation let through."""
    return error_response(request, 422, "invalid_input", "a value in the request cannot be stored")


def install(app: FastAPI) -> None:
    app.add_exception_handler(GenloomError, _genloom)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(RequestValidationError, _validation)
    for db_error in (sa_exc.OperationalError, sa_exc.InterfaceError, ConnectionError):
        app.add_exception_handler(db_error, _database_down)
    app.add_exception_handler(sa_exc.TimeoutError, _pool_exhausted)  # the pool's: not an outage
    app.add_exception_handler(sa_exc.DataError, _bad_value)
