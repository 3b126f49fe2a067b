"""Connection pools: a process steadily busy on as many connections as its pool size reuses the
same connections; it does not open and close one (a PostgreSQL backend) per statement."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import text

from genloom.store.engine import Database

pytestmark = pytest.mark.anyio

BUSY = 8  # readers at once: the pool size under test (SQLite's read pool keeps 8 as well)


async def busy_round(db: Database) -> list[Any]:
    """``BUSY`` reads holding their connections at the same time; the DBAPI connections used."""
    barrier = asyncio.Barrier(BUSY)

    async def read() -> Any:
        async with db.read() as conn:
            await conn.execute(text("SELECT 1"))
            await barrier.wait()  # every connection is checked out at once
            return (await conn.get_raw_connection()).dbapi_connection

    return list(await asyncio.gather(*(read() for _ in range(BUSY))))


async def test_a_busy_process_keeps_its_connections(db_url: str) -> None:
    db = Database(db_url, pool_size=BUSY)
    try:
        first = await busy_round(db)
        for _ in range(3):
            again = await busy_round(db)
            assert all(any(c is k for k in first) for c in again)  # no connection was opened anew
        assert len({id(c) for c in first}) == BUSY
    finally:
        await db.dispose()
