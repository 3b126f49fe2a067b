"""Reading and replaying deliveries: what routes and the dashboard show, and manual recovery.

A delivery is one message to one URL; its id is the ``webhook-id`` every attempt carries. A
replay starts a new attempt series on the same row (attempts back to 0, due now), so the receiver
sees the same ``webhook-id`` again and can deduplicate; the earlier attempts stay in its history.
"""

from __future__ import annotations

import builtins
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import RowMapping

from genloom.clock import Clock, ms
from genloom.errors import InvalidInput, InvalidTransition, NotFound
from genloom.store.engine import Database
from genloom.webhooks import outbox
from genloom.webhooks import statements as q

STATUSES = ("pending", "delivered", "dead")


@dataclass(frozen=True)
class Delivery:
    id: str  # the webhook-id
    project_id: str
    endpoint_id: str | None  # None: the job's own webhook_url
    job_id: str
    url: str  # as at creation; an endpoint's deliveries are sent to its current URL
    event_type: str
    status: str  # pending | delivered | dead
    attempts: int  # in the current series
    next_attempt_at: int
    last_status_code: int | None
    last_error: str | None
    last_latency_ms: int | None
    created_at: int
    updated_at: int
    payload: dict[str, Any]

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Delivery:
        return cls(**{k: row[k] for k in cls.__dataclass_fields__})

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Attempt:
    id: int
    delivery_id: str
    attempt: int  # 1-based within its series; a replay starts again at 1
    status_code: int | None  # None: no HTTP answer (refused, timed out, refused by policy)
    latency_ms: int | None
    error: str | None
    response: str | None  # the first bytes of the answer
    created_at: int

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Attempt:
        return cls(**{k: row[k] for k in cls.__dataclass_fields__})

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Deliveries:
    """List, inspect and replay a project's deliveries."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db, self.clock = db, clock

    async def list(
        self, project_id: str, *, endpoint_id: str | None = None, job_id: str | None = None,
        status: str | None = None, before: tuple[int, str] | None = None, limit: int = 50,
    ) -> list[Delivery]:
        """Newest first; ``before`` is the (created_at, id) of the last row of the previous page."""
        if status is not None and status not in STATUSES:
            raise InvalidInput(f"status must be one of {', '.join(STATUSES)}")
        stmt = q.list_deliveries(project_id, endpoint_id=endpoint_id, job_id=job_id, status=status,
                                 before=before, limit=max(1, min(limit, 500)))
        async with self.db.read() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [Delivery.from_row(r) for r in rows]

    async def get(self, project_id: str, delivery_id: str) -> Delivery:
        async with self.db.read() as conn:
            row = (await conn.execute(q.select_delivery(project_id, delivery_id))).mappings().first()
        if row is None:
            raise NotFound("no such webhook delivery", delivery_id=delivery_id)
        return Delivery.from_row(row)

    async def attempts(self, project_id: str, delivery_id: str) -> builtins.list[Attempt]:
        """Every attempt of a delivery, oldest first, across replays."""
        await self.get(project_id, delivery_id)
        async with self.db.read() as conn:
            rows = (await conn.execute(q.list_attempts(delivery_id))).mappings().all()
        return [Attempt.from_row(r) for r in rows]

    async def replay(self, project_id: str, delivery_id: str) -> Delivery:
        """Send one delivery again (whatever its status), as a new series with the same webhook-id."""
        delivery = await self.get(project_id, delivery_id)
        if delivery.endpoint_id is not None:
            await self._require_enabled(project_id, delivery.endpoint_id)
        rows = await self._replay(project_id, delivery_id=delivery_id)
        if not rows:
            raise NotFound("no such webhook delivery", delivery_id=delivery_id)
        return Delivery.from_row(rows[0])  # as replayed: a dispatcher may already be sending it

    async def replay_range(
        self, project_id: str, endpoint_id: str, *, since: int, until: int,
        statuses: Collection[str] = ("dead",),
    ) -> int:
        """Replay an endpoint's deliveries created in [since, until) (epoch ms) whose status is in
        ``statuses`` (dead letters by default; add "delivered" to resend everything). Returns how many."""
        bad = set(statuses) - {"dead", "delivered"}
        if bad or not statuses:
            raise InvalidInput("statuses must be among dead, delivered")
        if until <= since:
            raise InvalidInput("until must be after since")
        await self._require_enabled(project_id, endpoint_id)
        return len(await self._replay(project_id, endpoint_id=endpoint_id, since=since, until=until,
                                      statuses=sorted(statuses)))

    async def _require_enabled(self, project_id: str, endpoint_id: str) -> None:
        async with self.db.read() as conn:
            row = (await conn.execute(q.select_endpoint(project_id, endpoint_id))).mappings().first()
        if row is None:
            raise NotFound("no such webhook endpoint", endpoint_id=endpoint_id)
        if not row["enabled"]:
            raise InvalidTransition("the endpoint is disabled: enable it before replaying",
                                    endpoint_id=endpoint_id, reason=row["disabled_reason"])

    async def _replay(self, project_id: str, **where: Any) -> builtins.list[RowMapping]:
        """The replayed deliveries' rows, as the replay left them."""
        async with self.db.tx() as conn:
            rows = (await conn.execute(q.replay_deliveries(project_id, ms(self.clock.now()), **where))).mappings().all()
            if rows:
                await outbox.announce(conn, self.db.is_postgres)
        if rows:
            outbox.wake(str(self.db.engine.url))
        return list(rows)
