"""The composition root: settings -> database -> notifier -> services. The only module that sees
every adapter; the API, the worker and the CLI all start from here."""

from __future__ import annotations

from dataclasses import dataclass, field

from genloom.clock import Clock, SystemClock
from genloom.config import Settings
from genloom.credits import Credits
from genloom.events import EventLog
from genloom.jobs import Catalog, Jobs
from genloom.notify import Notifier, PgNotifier
from genloom.observability import Metrics
from genloom.projects import Projects
from genloom.queue import Queue
from genloom.store.engine import Database, libpq_url


@dataclass
class Core:
    settings: Settings
    db: Database
    notifier: Notifier
    clock: Clock
    jobs: Jobs
    queue: Queue
    credits: Credits
    events: EventLog
    projects: Projects
    metrics: Metrics = field(default_factory=Metrics)

    async def close(self) -> None:
        await self.notifier.close()
        await self.db.dispose()


def pg_conninfo(db: Database) -> str:
    """A libpq connection string for the LISTEN connection (psycopg, outside SQLAlchemy)."""
    return libpq_url(db.engine.url.render_as_string(hide_password=False))


async def open_core(settings: Settings, catalog: Catalog, clock: Clock | None = None) -> Core:
    clock = clock or SystemClock()
    db = Database(settings.db_url, pool_size=settings.db_pool_size)
    notifier: Notifier = PgNotifier(pg_conninfo(db)) if db.is_postgres else Notifier()
    await notifier.start()
    metrics = Metrics()
    jobs = Jobs(db, notifier, clock, catalog, max_attempts=settings.max_attempts, metrics=metrics)
    return Core(
        settings=settings, db=db, notifier=notifier, clock=clock, jobs=jobs,
        queue=Queue(jobs, clock, lease_seconds=settings.lease_seconds),
        credits=Credits(db, notifier, clock), events=EventLog(db), projects=Projects(db, clock),
        metrics=metrics,
    )
