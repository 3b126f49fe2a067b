"""Error responses for the OpenAPI document, so every status a route can answer is described
with the one error shape."""

from __future__ import annotations

from typing import Any

from genloom.api.schemas import ErrorResponse

_WHAT = {
    400: "The request is malformed (invalid_input)",
    401: "No valid key (unauthorized) or callback signature (invalid_signature)",
    402: "Not enough credits for this job (insufficient_credits)",
    403: "This key may not do that (forbidden)",
    404: "No such resource, or not this project's (not_found, no_result)",
    409: "Not possible in the resource's current state (invalid_transition, not_ready)",
    413: "The body is over the size limit (too_large)",
    415: "The body's Content-Type is not accepted (unsupported_media_type)",
    416: "The requested range lies outside the file (range_not_satisfiable)",
    422: "The request is not valid (invalid_input, idempotency_key_reused, unknown_type, unsafe_url, …)",
    429: "Too many requests for this key (rate_limited); see Retry-After",
    503: "The database is unreachable (unavailable) or the server is busy (busy); see Retry-After",
}

#: What any project-key route may answer besides its own statuses.
COMMON = (400, 401, 413, 422, 429, 503)
#: The same for routes without a per-key rate limit (admin token, provider callbacks).
UNLIMITED = (400, 401, 413, 422, 503)


def errors(*statuses: int, common: tuple[int, ...] = COMMON) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": ErrorResponse, "description": _WHAT[s]} for s in sorted({*common, *statuses})}
