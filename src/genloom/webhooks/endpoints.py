"""Webhook endpoints of a project, and the secrets deliveries are signed with.

An endpoint is ``{url, events, enabled}`` plus a ``whsec_`` secret that is shown once, at creation
(and at each rotation). It has to be kept readable, not hashed, since every delivery is an HMAC
under it; it never appears in an :class:`Endpoint`, a log line or an error. Rotation keeps the
previous secret signing for 24 hours, so receivers can switch over without losing a delivery.

A job's own ``webhook_url`` has no endpoint row: its deliveries are signed with the project's
*job webhook secret*, one per project, created on first use (by :meth:`Endpoints.project_secret`
or by the dispatcher's first such delivery) and rotated the same way.

URLs must pass SafeFetcher's address policy when saved (and again at every send, since DNS moves).
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError

from genloom.clock import Clock, ms
from genloom.config import Settings
from genloom.errors import InvalidInput, NotFound
from genloom.fetch import SafeFetcher
from genloom.store.engine import Database
from genloom.store.writes import WriteConnection
from genloom.webhooks import outbox, signing
from genloom.webhooks import statements as q

MAX_URL_LENGTH = 2048


@dataclass(frozen=True)
class Endpoint:
    """An endpoint as the API shows it: everything but the secret."""

    id: str
    project_id: str
    url: str
    events: list[str]
    enabled: bool
    disabled_reason: str | None
    failing_since: int | None  # ms; set from the first failed attempt until the next success
    rotating_until: int | None  # ms; until then the previous secret also signs
    created_at: int
    updated_at: int

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Endpoint:
        return cls(
            id=row["id"], project_id=row["project_id"], url=row["url"], events=list(row["events"] or []),
            enabled=bool(row["enabled"]), disabled_reason=row["disabled_reason"],
            failing_since=row["failing_since"], rotating_until=row["old_secret_expires_at"],
            created_at=row["created_at"], updated_at=row["updated_at"],
        )

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class CreatedEndpoint:
    endpoint: Endpoint
    secret: str  # shown once

    def __repr__(self) -> str:  # keep the secret out of tracebacks and debug output
        return f"CreatedEndpoint(endpoint={self.endpoint!r}, secret='whsec_********')"


def webhook_fetcher(settings: Settings) -> SafeFetcher:
    """The SafeFetcher webhooks check and send with: the fetch allowlist, the webhook timeout,
    no redirects."""
    return SafeFetcher(settings.fetch_allow_networks, max_bytes=64 * 1024,
                       timeout=settings.webhook_timeout_seconds, max_redirects=0)


def validate_events(events: Sequence[str] | None) -> list[str]:
    """The filter as stored: known ``job.<event>`` types, deduplicated in order; default terminal."""
    if events is None:
        return list(outbox.DEFAULT_EVENTS)
    if isinstance(events, str) or not events:
        raise InvalidInput("events must be a non-empty list of event types")
    unknown = [e for e in events if e not in outbox.EVENT_TYPES]
    if unknown:
        raise InvalidInput(f"unknown event types: {', '.join(map(str, unknown))}",
                           allowed=sorted(outbox.EVENT_TYPES))
    return list(dict.fromkeys(events))


class Endpoints:
    """Create, list, get, update, delete and rotate endpoints; the project's job webhook secret."""

    def __init__(self, db: Database, clock: Clock, fetcher: SafeFetcher) -> None:
        self.db, self.clock, self.fetcher = db, clock, fetcher

    def _now(self) -> int:
        return ms(self.clock.now())

    async def _checked(self, url: str) -> str:
        if not isinstance(url, str) or len(url) > MAX_URL_LENGTH:
            raise InvalidInput(f"url must be a string of at most {MAX_URL_LENGTH} characters")
        await self.fetcher.check(url)  # UnsafeUrl / BrokenUrl (both 422)
        return url

    def _changed(self) -> None:
        outbox.forget_interest(str(self.db.engine.url))

    async def create(
        self, project_id: str, url: str, *, events: Sequence[str] | None = None, enabled: bool = True
    ) -> CreatedEndpoint:
        url = await self._checked(url)
        filter_ = validate_events(events)
        now = self._now()
        secret = signing.new_secret()
        values = {
            "id": f"ep_{secrets.token_hex(10)}", "project_id": project_id, "url": url, "events": filter_,
            "enabled": enabled, "secret": secret, "old_secret": None, "old_secret_expires_at": None,
            "disabled_reason": None, "failing_since": None, "created_at": now, "updated_at": now,
        }
        async with self.db.tx() as conn:
            await conn.execute(q.insert_endpoint(values))
        self._changed()
        return CreatedEndpoint(Endpoint.from_row(values), secret)

    async def list(self, project_id: str) -> list[Endpoint]:
        async with self.db.read() as conn:
            rows = (await conn.execute(q.list_endpoints(project_id))).mappings().all()
        return [Endpoint.from_row(r) for r in rows]

    async def get(self, project_id: str, endpoint_id: str) -> Endpoint:
        async with self.db.read() as conn:
            row = (await conn.execute(q.select_endpoint(project_id, endpoint_id))).mappings().first()
        if row is None:
            raise NotFound("no such webhook endpoint", endpoint_id=endpoint_id)
        return Endpoint.from_row(row)

    async def update(
        self, project_id: str, endpoint_id: str, *, url: str | None = None,
        events: Sequence[str] | None = None, enabled: bool | None = None,
    ) -> Endpoint:
        """Change what is given. Enabling clears the disabled reason and the failure clock."""
        values: dict[str, Any] = {"updated_at": self._now()}
        if url is not None:
            values["url"] = await self._checked(url)
        if events is not None:
            values["events"] = validate_events(events)
        if enabled is not None:
            values["enabled"] = enabled
            if enabled:
                values |= {"disabled_reason": None, "failing_since": None}
            else:
                values["disabled_reason"] = "disabled by request"
        async with self.db.tx() as conn:
            row = (await conn.execute(q.update_endpoint(project_id, endpoint_id, values))).mappings().first()
        if row is None:
            raise NotFound("no such webhook endpoint", endpoint_id=endpoint_id)
        self._changed()
        return Endpoint.from_row(row)

    async def delete(self, project_id: str, endpoint_id: str) -> None:
        """Remove the endpoint; its pending deliveries are dead-lettered when next due."""
        async with self.db.tx() as conn:
            deleted = (await conn.execute(q.delete_endpoint(project_id, endpoint_id))).rowcount
        if not deleted:
            raise NotFound("no such webhook endpoint", endpoint_id=endpoint_id)
        self._changed()

    async def rotate_secret(self, project_id: str, endpoint_id: str) -> str:
        """A new secret (returned once); the current one keeps signing for 24 hours beside it."""
        now = self._now()
        async with self.db.tx() as conn:
            row = (await conn.execute(q.select_endpoint(project_id, endpoint_id))).mappings().first()
            if row is None:
                raise NotFound("no such webhook endpoint", endpoint_id=endpoint_id)
            secret = signing.new_secret()
            await conn.execute(q.update_endpoint(project_id, endpoint_id, {
                "secret": secret, "old_secret": row["secret"],
                "old_secret_expires_at": now + signing.ROTATION_GRACE_MS, "updated_at": now,
            }))
        return secret

    async def project_secret(self, project_id: str) -> str:
        """The project's job webhook secret (signs deliveries to jobs' own webhook_url), created
        on first use."""
        async with self.db.tx() as conn:
            rows = await project_secrets(conn, [project_id], self._now())
        return str(rows[project_id]["secret"])

    async def rotate_project_secret(self, project_id: str) -> str:
        now = self._now()
        async with self.db.tx() as conn:
            current = (await project_secrets(conn, [project_id], now))[project_id]
            secret = signing.new_secret()
            await conn.execute(q.update_project_secret(project_id, {
                "secret": secret, "old_secret": current["secret"],
                "old_secret_expires_at": now + signing.ROTATION_GRACE_MS, "updated_at": now,
            }))
        return secret


async def project_secrets(
    conn: WriteConnection, project_ids: Collection[str], now: int
) -> dict[str, Mapping[Any, Any]]:
    """The job webhook secret rows of ``project_ids``, creating missing ones (a concurrent creator
    wins cleanly: the insert runs in a savepoint and the row is read back)."""
    found = {r["project_id"]: r for r in (await conn.execute(q.select_project_secrets(project_ids))).mappings()}
    for project_id in sorted(set(project_ids) - found.keys()):
        values = {"project_id": project_id, "secret": signing.new_secret(), "old_secret": None,
                  "old_secret_expires_at": None, "created_at": now, "updated_at": now}
        try:
            async with conn.begin_nested():
                await conn.execute(q.insert_project_secret(values))
            found[project_id] = values
        except IntegrityError:
            row = (await conn.execute(q.select_project_secrets([project_id]))).mappings().one()
            found[project_id] = row
    return found
