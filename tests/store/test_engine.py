"""The database's errors as callers see them: a transaction the server turned away is a
TransactionConflict (retryable, and not shared by a group commit's other writes)."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import text

from genloom.errors import TransactionConflict
from genloom.store import engine
from genloom.store.engine import Database

pytestmark = pytest.mark.anyio


@pytest.mark.postgresql_only
async def test_a_lock_the_transaction_could_not_take_is_a_conflict(db_url: str) -> None:
    from tests.dbs import libpq

    db = Database(db_url)
    try:
        async with db.tx() as conn:
            await conn.execute(text("CREATE TABLE IF NOT EXISTS conflict_probe (id int PRIMARY KEY)"))
            await conn.execute(text("INSERT INTO conflict_probe VALUES (1) ON CONFLICT DO NOTHING"))
        async with await psycopg.AsyncConnection.connect(libpq(db_url)) as holder:
            await holder.execute("SELECT 1 FROM conflict_probe WHERE id = 1 FOR UPDATE")
            with pytest.raises(TransactionConflict) as info:
                async with db.tx() as conn:
                    await conn.execute(text("SET LOCAL lock_timeout = '50ms'"))
                    await conn.execute(text("UPDATE conflict_probe SET id = 1 WHERE id = 1"))
            await holder.rollback()
        assert info.value.status == 503 and not engine.db_wide(info.value)
        async with db.tx() as conn:  # nothing is left broken
            await conn.execute(text("UPDATE conflict_probe SET id = 1 WHERE id = 1"))
        with pytest.raises(TransactionConflict):  # a kept connection maps it too, and is replaced
            async with db.kept("probe") as conn:
                await conn.execute(text("SELECT 1"))
                raise_conflict = text("DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '40P01'; END $$")
                await conn.execute(raise_conflict)
        async with db.kept("probe") as conn:
            await conn.execute(text("SELECT 1"))
    finally:
        await db.dispose()
