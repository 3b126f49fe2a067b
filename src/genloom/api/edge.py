"""The outermost layer of every request, as plain ASGI so it also covers streamed responses and
errors raised before routing: the request id (X-Request-ID in, out, on log lines), the body size
limit (counted as bytes arrive, so a chunked body cannot slip past it; a response that leaves a
body unread closes the connection, so the server stops reading instead of draining it), the access
log and HTTP metrics, and a last-resort 500 in the one error shape."""

from __future__ import annotations

import json
import re
import secrets
import time
import traceback
from collections.abc import Callable
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from genloom.api.errors import too_large
from genloom.observability import Metrics, get_logger

log = get_logger("genloom.api")
_SANE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,63}")  # fits events.request_id (64)
UPLOAD_PATH = "/v1/uploads"
MULTIPART_SLACK = 64 * 1024  # room for the multipart envelope around an upload at its limit


def new_request_id() -> str:
    return f"req_{secrets.token_hex(12)}"


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == b"x-request-id":
            text = value.decode("latin-1").strip()
            if _SANE_ID.fullmatch(text):
                return text
    return new_request_id()


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() not in (b"", b"0")):
            return True
    return False


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class Edge:
    """ASGI middleware; ``limit(path)`` gives the body limit in bytes for a request path."""

    def __init__(self, app: ASGIApp, *, limit: Callable[[str], int], metrics: Callable[[], Metrics | None]) -> None:
        self.app = app
        self.limit = limit
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
        rid = request_id_from(headers)
        scope.setdefault("state", {})["request_id"] = rid
        limit = self.limit(scope.get("path", ""))
        started = time.perf_counter()
        status = {"code": 0, "sent": False}
        body = {"unread": _has_body(headers)}  # until the app has received the whole body

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
                extra = [(b"x-request-id", rid.encode())]
                if body["unread"]:  # answered before the body ended (a refusal): stop reading it
                    extra.append((b"connection", b"close"))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=rid):
            try:
                declared = _content_length(headers)
                if declared is not None and declared > limit:
                    exc = too_large(limit)
                    await _send_json(send_with_id, 413, "too_large", str(exc.detail), rid)  # closes: body unread
                else:
                    await self.app(scope, _limited(receive, limit, body), send_with_id)
            except Exception as exc:  # last resort: nothing below answered (frames only: locals may hold keys)
                log.error("api.unhandled", path=scope.get("path"), error=type(exc).__name__, detail=str(exc)[:500],
                          trace="".join(traceback.format_exception(exc, limit=-12)))
                if not status["sent"]:
                    await _send_json(send_with_id, 500, "internal_error", "an internal error occurred", rid)
            finally:
                self._record(scope, status["code"] or 500, started)

    def _record(self, scope: Scope, status: int, started: float) -> None:
        elapsed = time.perf_counter() - started
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        metrics = self.metrics()
        if metrics is not None:
            metrics.http.labels(scope.get("method", ""), template, str(status)).observe(elapsed)
        log.info("http.request", method=scope.get("method"), route=template, path=scope.get("path"),
                 status=status, ms=round(elapsed * 1000, 1))


def _limited(receive: Receive, limit: int, body: dict[str, bool]) -> Receive:
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise too_large(limit)
            if not message.get("more_body", False):
                body["unread"] = False
        return message

    return wrapped


async def _send_json(send: Send, status: int, code: str, message: str, rid: str) -> None:
    body = json.dumps({"error": {"code": code, "message": message, "request_id": rid}}).encode()
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def body_limit(settings: Any) -> Callable[[str], int]:
    """Uploads may carry ``max_upload_bytes`` (plus the multipart envelope); all else ``max_body_bytes``."""

    def limit(path: str) -> int:
        if path == UPLOAD_PATH:
            return int(settings.max_upload_bytes) + MULTIPART_SLACK
        return int(settings.max_body_bytes)

    return limit
