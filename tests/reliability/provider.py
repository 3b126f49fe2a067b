"""The fault scenarios' Replicate stand-in and what they read back: FakeReplicate that notes when each
request arrived and can answer every API request with a failure for a while (a storm), the signed
callbacks a provider would send, and the jobs' rows, events and ledger straight from the database."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import Response

from genloom.providers.callbacks import sign_callback
from genloom.store.engine import Database
from genloom.store.schema import credit_ledger, job_events, jobs
from genloom.testing import FakeReplicate
from tests.api.conftest import png_bytes, run

API_ROUTES = ("create", "get", "cancel")


@dataclass(frozen=True)
class Hit:
    """One request as the stand-in saw it: when (time.monotonic()), which route and path, the storm's
    answer (None: served normally) with its Retry-After, and the body."""

    at: float
    route: str
    path: str
    storm_status: int | None
    retry_after: float | None
    body: bytes

    @property
    def prediction(self) -> str | None:
        """The prediction a get or cancel names."""
        parts = self.path.split("/")
        return parts[3] if self.route in ("get", "cancel") and len(parts) > 3 else None

    @property
    def webhook(self) -> str | None:
        """The callback URL a create asked for (it ends with the job id)."""
        if self.route != "create":
            return None
        webhook = json.loads(self.body).get("webhook")
        return webhook if isinstance(webhook, str) else None


class TimedReplicate(FakeReplicate):
    """FakeReplicate with arrival times (``hits``) and storms: for ``seconds`` every request on
    ``routes`` is answered ``status``, with ``Retry-After: retry_after`` on every ``retry_after_every``-th
    answer (1: all of them; 2: every other one, so both kinds of backoff show)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(files=kwargs.pop("files", {"output.png": png_bytes()}), **kwargs)
        self.hits: list[Hit] = []
        self._storm: tuple[float, float, int, str | None, int, frozenset[str]] | None = None
        self._storm_answers = 0
        self._hits_lock = threading.Lock()

    def storm(self, seconds: float, *, status: int = 503, retry_after: str | None = "1", retry_after_every: int = 1,
              routes: Iterable[str] = API_ROUTES) -> tuple[float, float]:
        """Start a storm now; returns its (start, end) on time.monotonic()."""
        start = time.monotonic()
        with self._hits_lock:
            self._storm = (start, start + seconds, status, retry_after, retry_after_every, frozenset(routes))
        return start, start + seconds

    def hits_on(self, route: str) -> list[Hit]:
        with self._hits_lock:
            return [h for h in self.hits if h.route == route]

    async def _gate(self, route: str, request: Request) -> Response | None:
        refused = await super()._gate(route, request)
        at, body = time.monotonic(), await request.body()  # the body as super() read it
        status = retry_after = None
        with self._hits_lock:
            storm = self._storm
            if refused is None and storm is not None and storm[0] <= at < storm[1] and route in storm[5]:
                self._storm_answers += 1
                status = storm[2]
                if storm[3] is not None and self._storm_answers % storm[4] == 0:
                    retry_after = storm[3]
            waited = None if retry_after is None else float(retry_after)
            self.hits.append(Hit(at, route, request.url.path, status, waited, body))
        self._changed()
        if status is None:
            return refused
        return self._error(status, "scripted storm", {"Retry-After": retry_after} if retry_after else None)


def callback(fake: FakeReplicate, prediction: dict[str, Any], msg_id: str) -> tuple[bytes, dict[str, str]]:
    """The body and signed headers Replicate would send for ``prediction`` as it stands."""
    body = json.dumps(prediction).encode()
    return body, sign_callback(body, fake.webhook_secret, msg_id=msg_id) | {"content-type": "application/json"}


@dataclass
class Books:
    """Jobs' rows, events (in id order) and ledger entries, by job id."""

    rows: dict[str, dict[str, Any]]
    events: dict[str, list[dict[str, Any]]]
    ledger: dict[str, list[dict[str, Any]]]

    def types(self, job_id: str) -> list[str]:
        return [e["type"] for e in self.events[job_id]]

    def amounts(self, job_id: str) -> list[int]:
        return [int(e["amount"]) for e in self.ledger[job_id]]


def books(db_url: str, ids: Iterable[str]) -> Books:
    wanted = list(ids)

    async def go() -> Books:
        db = Database(db_url)
        out = Books({}, defaultdict(list), defaultdict(list))
        try:
            async with db.read() as conn:
                for i in range(0, len(wanted), 200):
                    chunk = wanted[i:i + 200]
                    for row in (await conn.execute(select(jobs).where(jobs.c.id.in_(chunk)))).mappings():
                        out.rows[row["id"]] = dict(row)
                    for ev in (await conn.execute(select(job_events).where(job_events.c.job_id.in_(chunk))
                                                  .order_by(job_events.c.id))).mappings():
                        out.events[ev["job_id"]].append(dict(ev))
                    for entry in (await conn.execute(select(credit_ledger).where(credit_ledger.c.job_id.in_(chunk))
                                                     .order_by(credit_ledger.c.id))).mappings():
                        out.ledger[entry["job_id"]].append(dict(entry))
        finally:
            await db.dispose()
        return out

    result: Books = run(go)
    return result
