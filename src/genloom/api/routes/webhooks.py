"""/v1/webhooks: a project's endpoints (the secret shown once), their deliveries and attempts,
and replays of one delivery or of a time range."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field

from genloom.api.auth import Caller, caller, genloom
from genloom.api.docs import errors
from genloom.api.present import decode_cursor, iso
from genloom.clock import ms

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
_TIMES = ("failing_since", "rotating_until", "created_at", "updated_at", "next_attempt_at")


class EndpointCreate(BaseModel):
    url: str = Field(min_length=8, max_length=2048, pattern=r"^https?://")
    events: list[str] | None = Field(None, max_length=32, description="default: job.completed, job.failed, "
                                     "job.cancelled, job.expired")
    enabled: bool = True


class EndpointUpdate(BaseModel):
    url: str | None = Field(None, min_length=8, max_length=2048, pattern=r"^https?://")
    events: list[str] | None = Field(None, max_length=32)
    enabled: bool | None = None


class RangeReplay(BaseModel):
    from_: datetime = Field(alias="from")
    to: datetime
    statuses: list[str] = Field(default_factory=lambda: ["dead"], max_length=3)


def _out(row: dict[str, Any]) -> dict[str, Any]:
    """Times as ISO 8601 UTC, like every other representation of the API."""
    return {k: (iso(v) if k in _TIMES and isinstance(v, int) else v) for k, v in row.items()}


Who = Annotated[Caller, Depends(caller)]


@router.post("", status_code=201, responses=errors(422), summary="Create an endpoint (its secret is shown once)")
async def create(body: EndpointCreate, request: Request, who: Who) -> dict[str, Any]:
    made = await genloom(request).endpoints.create(who.project.id, body.url, events=body.events,
                                                   enabled=body.enabled)
    return _out(made.endpoint.as_dict()) | {"secret": made.secret}


@router.get("", summary="List endpoints")
async def list_endpoints(request: Request, who: Who) -> dict[str, Any]:
    return {"data": [_out(e.as_dict()) for e in await genloom(request).endpoints.list(who.project.id)]}


@router.get("/{endpoint_id}", responses=errors(404), summary="Get an endpoint")
async def get(endpoint_id: str, request: Request, who: Who) -> dict[str, Any]:
    return _out((await genloom(request).endpoints.get(who.project.id, endpoint_id)).as_dict())


@router.patch("/{endpoint_id}", responses=errors(404, 422), summary="Change an endpoint (enabling clears its reason)")
async def update(endpoint_id: str, body: EndpointUpdate, request: Request, who: Who) -> dict[str, Any]:
    endpoint = await genloom(request).endpoints.update(who.project.id, endpoint_id, url=body.url,
                                                       events=body.events, enabled=body.enabled)
    return _out(endpoint.as_dict())


@router.delete("/{endpoint_id}", status_code=204, responses=errors(404), summary="Delete an endpoint")
async def delete(endpoint_id: str, request: Request, who: Who) -> Response:
    await genloom(request).endpoints.delete(who.project.id, endpoint_id)
    return Response(status_code=204)


@router.post("/{endpoint_id}/rotate", responses=errors(404),
             summary="Rotate the secret (the old one keeps signing for 24 hours)")
async def rotate(endpoint_id: str, request: Request, who: Who) -> dict[str, Any]:
    return {"secret": await genloom(request).endpoints.rotate_secret(who.project.id, endpoint_id)}


@router.get("/{endpoint_id}/deliveries", responses=errors(404), summary="An endpoint's deliveries, newest first")
async def deliveries(
    endpoint_id: str, request: Request, who: Who,
    status: Annotated[str | None, Query(max_length=20)] = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> dict[str, Any]:
    app = genloom(request)
    await app.endpoints.get(who.project.id, endpoint_id)
    rows = await app.deliveries.list(who.project.id, endpoint_id=endpoint_id, status=status,
                                     before=decode_cursor(cursor) if cursor else None, limit=limit)
    return {"data": [_out(d.as_dict()) for d in rows]}


@router.get("/deliveries/{delivery_id}/attempts", responses=errors(404),
            summary="A delivery's attempts: status code, latency, error")
async def attempts(delivery_id: str, request: Request, who: Who) -> dict[str, Any]:
    rows = await genloom(request).deliveries.attempts(who.project.id, delivery_id)
    return {"data": [_out(a.as_dict()) for a in rows]}


@router.post("/deliveries/{delivery_id}/replay", status_code=202, responses=errors(404, 409),
             summary="Send a delivery again (same webhook-id)")
async def replay(delivery_id: str, request: Request, who: Who) -> dict[str, Any]:
    return _out((await genloom(request).deliveries.replay(who.project.id, delivery_id)).as_dict())


@router.post("/{endpoint_id}/replay", status_code=202, responses=errors(404, 409, 422),
             summary="Send again every delivery of a time range (dead letters by default)")
async def replay_range(endpoint_id: str, body: RangeReplay, request: Request, who: Who) -> dict[str, int]:
    count = await genloom(request).deliveries.replay_range(
        who.project.id, endpoint_id, since=ms(body.from_), until=ms(body.to), statuses=tuple(body.statuses))
    return {"replayed": count}
