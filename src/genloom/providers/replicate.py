"""The Replicate predictions client, and the HTTP failure classification shared by provider clients.

Endpoints (https://replicate.com/docs/reference/http): ``POST /v1/predictions`` with a version
id, ``POST /v1/models/{owner}/{name}/predictions`` for an official model named without a
version, ``GET /v1/predictions/{id}`` and ``POST /v1/predictions/{id}/cancel``. Creation is
always asynchronous: no ``Prefer: wait`` header, so a slow model never holds a worker's
connection; completion arrives by a signed webhook (events filtered to ``completed``) or by
polling ``get``.
"""

from __future__ import annotations

import email.utils
import json
import re
import time
from typing import Any, cast
from urllib.parse import quote

import httpx

from genloom.errors import PermanentError, StageError, TransientError
from genloom.providers.base import Prediction, PredictionStatus
from genloom.retry import TRANSIENT_HTTP

_STATUSES = frozenset({"starting", "processing", "succeeded", "failed", "canceled"})
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_VERSION = re.compile(r"[A-Za-z0-9]+")


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if absent or bad."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if re.fullmatch(r"[0-9]+(\.[0-9]+)?", value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def provider_detail(response: httpx.Response) -> str | None:
    """The human explanation in an error body: RFC 7807 ``detail`` (Replicate), OpenAI-style
    ``error.message``, or a short plain-text body."""
    try:
        data = response.json()
    except ValueError:
        text = response.text.strip()
        return text[:500] or None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return cast(str, error["message"])
        for key in ("detail", "message", "error", "title"):
            if isinstance(data.get(key), str):
                return cast(str, data[key])
    return None


def http_error(response: httpx.Response, provider: str, *, now: float | None = None) -> StageError:
    """TransientError for 408/425/429/5xx (with ``retry_after`` when sent), PermanentError
    (code ``provider_rejected``) for any other non-2xx answer."""
    status = response.status_code
    details: dict[str, Any] = {"provider": provider, "status": status}
    detail = provider_detail(response)
    if detail:
        details["detail"] = detail
    if status in TRANSIENT_HTTP or 500 <= status <= 599:
        retry_after = parse_retry_after(response.headers.get("retry-after"), now=now)
        if retry_after is not None:
            details["retry_after"] = retry_after
        code = "provider_rate_limited" if status == 429 else "provider_unavailable"
        return TransientError(f"{provider} answered {status}", code=code, **details)
    suffix = f": {detail}" if detail else ""
    return PermanentError(f"{provider} rejected the request ({status}){suffix}", code="provider_rejected", **details)


def transport_error(exc: httpx.TransportError, provider: str, what: str) -> TransientError:
    """A timeout or a connection failure: nothing was answered, so it may pass."""
    if isinstance(exc, httpx.TimeoutException):
        return TransientError(f"{provider} {what} timed out", code="provider_timeout", provider=provider)
    return TransientError(
        f"{provider} {what} failed: {type(exc).__name__}", code="provider_unreachable", provider=provider
    )


def bad_response(provider: str, what: str, reason: str) -> TransientError:
    """A 2xx whose body is not what the protocol promises (a proxy page, a truncated body)."""
    return TransientError(
        f"{provider} {what}: unexpected response ({reason})", code="provider_bad_response", provider=provider
    )


def parse_prediction(data: dict[str, Any]) -> Prediction:
    """A Replicate prediction object (API answer or webhook payload) as a Prediction.

    ``aborted`` (terminated before it ran) maps to ``failed``. Raises ValueError when the
    object has no id or an unknown status.
    """
    prediction_id = data.get("id")
    status = data.get("status")
    error = data.get("error")
    if not isinstance(prediction_id, str) or not prediction_id:
        raise ValueError("prediction has no id")
    if status == "aborted":
        status, error = "failed", error or "prediction aborted before it ran"
    if status not in _STATUSES:
        raise ValueError(f"unknown prediction status {status!r}")
    if error is not None and not isinstance(error, str):
        error = json.dumps(error)
    if status == "failed" and not error:
        error = "prediction failed"
    return Prediction(
        id=prediction_id,
        status=cast(PredictionStatus, status),
        output=data.get("output"),
        error=error or None,
        raw=data,
    )


def create_route(model: str) -> tuple[str, dict[str, Any]]:
    """The creation path and body fields for ``owner/name``, ``owner/name:version`` or a version id."""
    ref = model.strip()
    name_part, colon, version = ref.partition(":")
    if colon:
        owner, slash, name = name_part.partition("/")
        if slash and _NAME.fullmatch(owner) and _NAME.fullmatch(name) and _VERSION.fullmatch(version):
            return "/v1/predictions", {"version": version}
    elif "/" in ref:
        owner, _, name = ref.partition("/")
        if _NAME.fullmatch(owner) and _NAME.fullmatch(name):
            return f"/v1/models/{owner}/{name}/predictions", {}
    elif _VERSION.fullmatch(ref):
        return "/v1/predictions", {"version": ref}
    raise PermanentError(
        f"not a Replicate model reference: {model!r} (use owner/name, owner/name:version or a version id)",
        code="invalid_model",
        provider="replicate",
    )


def api_root(base_url: str) -> str:
    """``base_url`` without a trailing slash or ``/v1`` (both spellings are common in settings)."""
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


class ReplicateProvider:
    """PredictionProvider over Replicate's HTTP API; the token is sent per request, never stored
    on the shared client, never put in an error."""

    name = "replicate"

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str = "https://api.replicate.com",
        *,
        token: str,
        timeout: float = 30.0,
    ) -> None:
        self._client = client
        self._root = api_root(base_url)
        self._token = token
        self._timeout = httpx.Timeout(timeout)

    def __repr__(self) -> str:
        return f"ReplicateProvider(base_url={self._root!r})"

    async def submit(self, model: str, input: dict[str, Any], webhook_url: str | None = None) -> Prediction:
        path, body = create_route(model)
        body["input"] = input
        if webhook_url is not None:
            body["webhook"] = webhook_url
            body["webhook_events_filter"] = ["completed"]
        return self._prediction(await self._call("POST", path, body), "create")

    async def get(self, prediction_id: str) -> Prediction:
        return self._prediction(await self._call("GET", f"/v1/predictions/{quote(prediction_id, safe='')}"), "get")

    async def cancel(self, prediction_id: str) -> None:
        await self._call("POST", f"/v1/predictions/{quote(prediction_id, safe='')}/cancel")

    def _prediction(self, data: dict[str, Any], what: str) -> Prediction:
        try:
            return parse_prediction(data)
        except ValueError as exc:
            raise bad_response(self.name, what, str(exc)) from None

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        what = f"{method} {path}"
        try:
            response = await self._client.request(
                method,
                self._root + path,
                json=body,
                headers={"Authorization": f"Bearer {self._token}", "Accept": "application/json"},
                timeout=self._timeout,
            )
        except httpx.TransportError as exc:
            raise transport_error(exc, self.name, what) from exc
        if not response.is_success:
            raise http_error(response, self.name)
        try:
            data = response.json()
        except ValueError:
            raise bad_response(self.name, what, "body is not JSON") from None
        if not isinstance(data, dict):
            raise bad_response(self.name, what, "body is not a JSON object")
        return data
