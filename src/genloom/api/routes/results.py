"""/v1/jobs/{id}/result: the output file, streamed from storage with single byte ranges and
validators, so players can seek and caches can keep it.

A job that is not terminal yet is 409 ``not_ready``; a terminal job without an output file (a
failure, or a type whose result is JSON only) is 404 ``no_result``.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.responses import StreamingResponse

from genloom.api.auth import Caller, caller, genloom
from genloom.api.docs import errors
from genloom.api.errors import ApiError
from genloom.api.routes.jobs import checked_id
from genloom.errors import InvalidTransition, NotFound
from genloom.storage.base import StoredObject

router = APIRouter(prefix="/v1/jobs", tags=["results"])
CACHE = "public, max-age=31536000, immutable"
_RANGE = re.compile(r"\s*bytes\s*=\s*([0-9]*)\s*-\s*([0-9]*)\s*")
Unsatisfiable = Literal["unsatisfiable"]


def byte_range(header: str | None, size: int) -> tuple[int, int] | Unsatisfiable | None:
    """The inclusive range a single-range header asks for; None to send the whole file (no header,
    several ranges, or a malformed one, which RFC 9110 lets a server ignore)."""
    match = _RANGE.fullmatch(header or "")
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - suffix), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        return "unsatisfiable"
    return start, min(end, size - 1)


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


async def _stored(request: Request, job_id: str, who: Caller) -> StoredObject:
    app = genloom(request)
    job = await app.core.jobs.get(checked_id(job_id), who.project.id)
    if not job.terminal:
        raise InvalidTransition("the job has not finished yet", code="not_ready")
    obj = await app.services.storage.stat(job.result_key) if job.result_key else None
    if obj is None:
        raise NotFound("this job has no output file", code="no_result")
    assert isinstance(obj, StoredObject)
    return obj


FILE_DOC = {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            "description": "The whole file; its Content-Type is the output's (video/mp4, image/png, …)"}


@router.get(
    "/{job_id}/result", response_class=Response,
    responses={200: FILE_DOC, 206: {**FILE_DOC, "description": "The requested byte range (Content-Range)"},
               304: {"description": "Not modified (If-None-Match)"}, **errors(404, 409, 416)},
    summary="Download a job's output",
)
async def result(
    job_id: str, request: Request, who: Caller = Depends(caller),
    range_: Annotated[str | None, Header(alias="Range", max_length=200)] = None,
    if_none_match: Annotated[str | None, Header(alias="If-None-Match", max_length=1000)] = None,
) -> Response:
    return await send_stored(request, await _stored(request, job_id, who))


async def send_stored(request: Request, obj: StoredObject) -> Response:
    """``obj`` as the answer to ``request``: 200, 206 for a single satisfiable Range (honouring
    If-Range), 416, or 304 for a matching If-None-Match; HEAD gets the headers only."""
    etag = f'"{obj.etag}"'
    headers = {"ETag": etag, "Cache-Control": CACHE, "Accept-Ranges": "bytes"}
    if _etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    if_range = request.headers.get("if-range")
    wanted = byte_range(request.headers.get("range"), obj.size) if if_range in (None, etag) else None
    if wanted == "unsatisfiable":
        raise ApiError(416, "range_not_satisfiable", f"the file has {obj.size} bytes",
                       headers={"Content-Range": f"bytes */{obj.size}"})
    start, end = wanted if wanted is not None else (0, obj.size - 1)
    headers["Content-Length"] = str(max(0, end - start + 1))
    if wanted is not None:
        headers["Content-Range"] = f"bytes {start}-{end}/{obj.size}"
    status = 206 if wanted is not None else 200
    if request.method == "HEAD" or obj.size == 0:
        return Response(status_code=status, headers=headers, media_type=obj.content_type)
    storage = genloom(request).services.storage
    return StreamingResponse(storage.open_range(obj.key, start, end), status_code=status, headers=headers,
                             media_type=obj.content_type)


router.add_api_route("/{job_id}/result", result, methods=["HEAD"], include_in_schema=False,
                     response_class=Response)
