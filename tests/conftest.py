"""Shared fixtures: a scrubbed GENLOOM_* environment, anyio on asyncio, and the `db_url` fixture
that runs a test on a SQLite file and on real PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.dbs import PgTemplates, SqliteTemplate, pg_server_url

for _name in [k for k in os.environ if k.startswith("GENLOOM_") and k != "GENLOOM_TEST_DATABASE_URL"]:
    del os.environ[_name]

DIALECTS = ["sqlite", "postgresql"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> SqliteTemplate:
    return SqliteTemplate(tmp_path_factory.mktemp("sqlite-template"))


@pytest.fixture(scope="session")
def pg_templates() -> Iterator[PgTemplates]:
    templates = PgTemplates(pg_server_url())
    yield templates
    templates.close()


@pytest.fixture(params=DIALECTS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database per test: a SQLite file, then PostgreSQL."""
    if request.param == "sqlite":
        yield request.getfixturevalue("sqlite_template").clone(tmp_path)
        return
    templates: PgTemplates = request.getfixturevalue("pg_templates")
    url = templates.clone()
    yield url
    templates.drop(url)


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Any:
    from genloom.config import Settings

    return Settings(database_url=db_url, data_dir=tmp_path / "data", _env_file=None)  # type: ignore[call-arg]


@pytest.fixture
async def core(settings: Any) -> AsyncIterator[Any]:
    from genloom.runtime import open_core
    from tests.support import TestCatalog

    c = await open_core(settings, TestCatalog())
    yield c
    await c.close()


# --- PostgreSQL-only tests ------------------------------------------------------------------------
# ``@pytest.mark.postgresql_only`` on a test that uses ``db_url`` (itself or through ``settings``,
# ``core``, ``manual``): the test is parametrised for postgresql alone (``test_x[postgresql]``)
# instead of running on SQLite and skipping there. For what only the PostgreSQL deployment can
# show (several writer processes, interleavings SQLite's single writer rules out); nothing is
# reported as skipped. The ``db_url`` fixture itself is unchanged.

_ON_POSTGRESQL_ONLY = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "postgresql_only: parametrise db_url for postgresql alone (the test never runs on SQLite)"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Runs before pytest's own parametrisation: the added parametrize mark then takes precedence over
    # the db_url fixture's params, exactly as if it were written on the test.
    if metafunc.definition.get_closest_marker("postgresql_only") is None:
        return
    if "db_url" not in metafunc.fixturenames:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: postgresql_only needs a test that uses db_url")
    metafunc.definition.add_marker(_ON_POSTGRESQL_ONLY)
