"""An API server process for the benches: ``python -m bench._apiserver <fd> <background 0|1> <heartbeat>``.

Settings come from GENLOOM_* in the environment; the listening socket is inherited already bound
(fd), so the parent knows the port before the server starts. The app is genloom's own
(``create_app`` + ``make_server``, what ``genloom serve`` runs) plus one route the API bench needs:

    POST /_bench/emit/{job_id}?seq=N

writes one non-terminal event (stage_started, stage "bench", data {"seq": N}) on the job the way
every writer does: one unit of work that locks the job's row, appends the event and sends the
wake-ups on commit (in-process on SQLite, NOTIFY on PostgreSQL). It answers ``committed``, the
wall-clock time at which that transaction had committed (taken when the unit first consults the
notifier, right after COMMIT returned and before any wake-up is sent), so a client on the same
machine can measure commit -> arrival with one clock.
"""

from __future__ import annotations

import socket
import sys
import time
from typing import Any

from fastapi import Request

from genloom.api.app import create_app, make_server
from genloom.clock import ms
from genloom.config import Settings
from genloom.lifecycle import EventType
from genloom.models import EventSpec
from genloom.observability import configure_logging
from genloom.store.unit import unit


class CommitStamp:
    """The app's notifier, noting when ``unit`` first asks it anything (just after the commit)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.at: float | None = None

    @property
    def local_only(self) -> bool:
        if self.at is None:
            self.at = time.time()
        return bool(self.inner.local_only)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def emit(job_id: str, request: Request, seq: int = 0) -> dict[str, float]:
    app = request.app.state.genloom
    stamp = CommitStamp(app.core.notifier)
    async with unit(app.core.db, stamp) as u:  # type: ignore[arg-type]
        row = await app.core.jobs.lock(u, job_id)
        u.add_events(row, [EventSpec(EventType.STAGE_STARTED, stage="bench", data={"seq": seq})],
                     ms(app.core.clock.now()))
    returned = time.time()
    return {"committed": stamp.at or returned, "returned": returned}


def main(argv: list[str]) -> None:
    fd, background, heartbeat = int(argv[0]), argv[1] == "1", float(argv[2])
    sock = socket.socket(fileno=fd)
    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    api = create_app(settings, background=background, sse_heartbeat=heartbeat)
    api.add_api_route("/_bench/emit/{job_id}", emit, methods=["POST"], include_in_schema=False)
    make_server(settings, api).run(sockets=[sock])


if __name__ == "__main__":
    main(sys.argv[1:])
