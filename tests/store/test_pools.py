"""Connection pools: a process steadily busy on as many connections as its pool size reuses the
same connections; it does not open and close one (a PostgreSQL backend) per statement."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

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


async def backend_pid(conn: Any) -> int:
    return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())


@pytest.mark.postgresql_only
async def test_a_kept_connection_serves_its_use_until_an_error(db_url: str) -> None:
    """``Database.kept``: one use's statements, one after another, share one connection (no
    checkout each); a concurrent caller gets another; a database error discards it, and a
    connection the server dropped is reported unavailable once, then replaced."""
    from genloom.errors import Unavailable

    db = Database(db_url)
    try:
        async with db.kept("claim") as conn:
            first = await backend_pid(conn)
            async with db.kept("claim") as other:  # the kept one is busy: a pooled one
                assert await backend_pid(other) != first
        async with db.kept("claim") as conn:
            assert await backend_pid(conn) == first
        async with db.kept("finish") as conn:
            assert await backend_pid(conn) != first  # each use keeps its own
        with pytest.raises(ZeroDivisionError):  # the caller's own error: the connection is fine
            async with db.kept("claim") as conn:
                raise ZeroDivisionError
        async with db.kept("claim") as conn:
            assert await backend_pid(conn) == first
        with pytest.raises(DBAPIError):  # the database's: it is discarded
            async with db.kept("claim") as conn:
                await conn.execute(text("SELECT 1 / 0"))
        async with db.kept("claim") as conn:
            second = await backend_pid(conn)
        assert second != first
        async with db.read() as conn:
            await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": second})
        with pytest.raises(Unavailable):
            async with db.kept("claim") as conn:
                await backend_pid(conn)
        async with db.kept("claim") as conn:
            assert await backend_pid(conn) not in (first, second)
    finally:
        await db.dispose()


@pytest.mark.postgresql_only
@pytest.mark.parametrize("pool", ["read", "tx"])
async def test_a_disconnect_seen_elsewhere_retires_the_kept_connection(db_url: str, pool: str) -> None:
    """Once either pool has seen the server drop a connection (a restart drops them all), the
    kept one is replaced before its next use instead of failing that use."""
    from genloom.errors import Unavailable

    db = Database(db_url)
    try:
        async with db.kept("claim") as conn:
            kept_pid = await backend_pid(conn)
        with pytest.raises(Unavailable):
            async with db.read() if pool == "read" else db.tx() as conn:
                doomed = await backend_pid(conn)
                async with db.read() as killer:
                    await killer.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": doomed})
                await backend_pid(conn)
        async with db.kept("claim") as conn:
            assert await backend_pid(conn) != kept_pid
    finally:
        await db.dispose()


@pytest.mark.postgresql_only
async def test_a_use_keeps_as_many_connections_as_its_width(db_url: str) -> None:
    """Concurrent callers of a use that keeps ``width`` connections (the creates) each get a kept
    one, up to that many, and find the same ones next time; one more caller gets a pooled one.
    Kept connections a burst left unused past KEPT_IDLE are let go."""
    from genloom.store import engine

    db = Database(db_url)
    try:
        async def burst(n: int) -> list[int]:
            barrier = asyncio.Barrier(n)

            async def one() -> int:
                async with db.kept("create", width=2) as conn:
                    await barrier.wait()  # all n hold their connections at once
                    return await backend_pid(conn)

            return list(await asyncio.gather(*(one() for _ in range(n))))

        two = await burst(2)
        assert len(set(two)) == 2 and sorted(await burst(2)) == sorted(two)
        three = await burst(3)
        assert len(set(three)) == 3 and len(set(three) & set(two)) == 2  # the third: pooled
        assert sorted(await burst(2)) == sorted(two)  # the pooled one went back to the pool
        [again] = await burst(1)
        assert again in two
        idle = db._kept["create"]
        conn, opened, last = idle[0]  # the other one: as if it had sat unused past KEPT_IDLE
        idle[0] = (conn, opened, last - engine.KEPT_IDLE)
        assert await burst(1) == [again]
        assert [await backend_pid(c) for c, _, _ in db._kept["create"]] == [again]  # the other was let go
    finally:
        await db.dispose()
