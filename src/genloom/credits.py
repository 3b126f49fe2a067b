"""The credit ledger: append-only rows per (project, user), charges and refunds keyed to happen once.

Each row moves the account's running balance in the same transaction; the conditional debit
(``balance >= amount``) is what makes a hundred concurrent charges against ten jobs' worth exact.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from typing import Any, NamedTuple

from sqlalchemy.exc import IntegrityError

from genloom.clock import Clock, ms
from genloom.errors import InsufficientCredits, InvalidInput, NotFound
from genloom.notify import Notifier
from genloom.store import statements as q
from genloom.store.engine import Database
from genloom.store.unit import Unit, unit


async def _ensure_account(u: Unit, project_id: str, user_id: str) -> None:
    exists = (await u.conn.execute(q.select_balance(project_id, user_id))).first()
    if exists is None:
        try:
            async with u.conn.begin_nested():
                await u.conn.execute(q.create_account(project_id, user_id))
        except IntegrityError:
            pass  # created by a concurrent grant


def insufficient(amount: int) -> InsufficientCredits:
    return InsufficientCredits(f"this job costs {amount} credits; the balance is lower", cost=amount)


async def charge(u: Unit, *, project_id: str, user_id: str, job_id: str, round_: int, amount: int, now: int) -> None:
    """Debit ``amount`` for a job's billing round, or raise InsufficientCredits (nothing written)."""
    entry = {"project_id": project_id, "user_id": user_id, "job_id": job_id, "round": round_, "created_at": now}
    if u.postgres:  # one statement: the entry is written only if the debit took
        params = {f"b_{k}": v for k, v in entry.items()} | {"b_amount": amount}
        took = (await u.conn.execute(q.charge_prepared(), params)).first() is not None
    else:
        took = await u.conn.run(q.debit_prepared(),
                                {"b_project_id": project_id, "b_user_id": user_id, "b_amount": amount}) == 1
    if not took:
        raise insufficient(amount)
    if not u.postgres:
        await u.conn.run(q.insert_ledger(), entry | {"reason": "charge", "amount": -amount})


class Charge(NamedTuple):
    """One job's charge for a billing round."""

    project_id: str
    user_id: str
    job_id: str
    amount: int
    now: int
    round: int = 0


async def charge_many(u: Unit, charges: Sequence[Charge]) -> list[bool]:
    """Charges in the caller's write transaction, decided in order exactly as one ``charge``
    after another would (each takes only if what is left covers it), in three statements whatever
    their number: the balances read and locked once, then one debit per account and the ledger
    entries. (SQLite's batched creates; PostgreSQL's creates charge inside their own statement.)"""
    accounts = {(c.project_id, c.user_id) for c in charges}
    left = await _balances(u, accounts)
    took: list[bool] = []
    debits: dict[tuple[str, str], int] = defaultdict(int)
    for c in charges:
        key = (c.project_id, c.user_id)
        ok = left.get(key, -1) >= c.amount
        if ok:
            left[key] -= c.amount
            debits[key] += c.amount
        took.append(ok)
    if debits:
        changed = await u.conn.run(q.debit_prepared(), [
            {"b_project_id": p, "b_user_id": user, "b_amount": amount} for (p, user), amount in debits.items()])
        if changed != len(debits):
            raise RuntimeError("a credit balance changed while this transaction held the write lock")
        await u.conn.run(q.insert_ledger(), [
            {"project_id": c.project_id, "user_id": c.user_id, "job_id": c.job_id, "round": c.round,
             "created_at": c.now, "reason": "charge", "amount": -c.amount}
            for c, ok in zip(charges, took, strict=True) if ok])
    return took


async def _balances(u: Unit, accounts: Collection[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """The balances of these accounts that exist, locked until commit: one statement on
    PostgreSQL; on SQLite (the write lock already holds them) one prepared read per account."""
    if u.postgres:
        return {(p, user): int(b) for p, user, b in await u.conn.execute(q.select_balances(accounts))}
    found = {}
    for p, user in sorted(accounts):
        rows = await u.conn.fetch(q.balance_prepared(), {"b_project_id": p, "b_user_id": user})
        if rows:
            found[(p, user)] = int(rows[0]["balance"])
    return found


async def refund(u: Unit, job: dict[str, Any], now: int, note: str) -> None:
    """Give back a job's charge for its current round. The caller holds the job row and clears
    ``charged`` in the same write; the ledger's unique key refuses a second refund regardless."""
    existing = (await u.conn.execute(q.ledger_entry_exists(job["id"], "refund", job["round"]))).first()
    if existing is not None:
        return
    await u.conn.execute(q.credit_account(job["project_id"], job["user_id"], job["cost"]))
    await u.conn.execute(
        q.insert_ledger(),
        {"project_id": job["project_id"], "user_id": job["user_id"], "job_id": job["id"],
         "reason": "refund", "round": job["round"], "amount": job["cost"], "note": note, "created_at": now},
    )


class Credits:
    """Grants and reads; charges and refunds happen inside job writes (jobs.py)."""

    def __init__(self, db: Database, notifier: Notifier, clock: Clock) -> None:
        self.db, self.notifier, self.clock = db, notifier, clock

    async def grant(self, project_id: str, user_id: str, amount: int, note: str = "grant") -> int:
        if amount <= 0:
            raise InvalidInput("a grant must be a positive number of credits")
        now = ms(self.clock.now())
        async with unit(self.db, self.notifier) as u:
            if (await u.conn.execute(q.select_project(project_id))).first() is None:
                raise NotFound(f"no project {project_id!r}", project_id=project_id)
            await _ensure_account(u, project_id, user_id)
            await u.conn.execute(q.credit_account(project_id, user_id, amount))
            await u.conn.execute(
                q.insert_ledger(),
                {"project_id": project_id, "user_id": user_id, "job_id": None, "reason": "grant",
                 "round": 0, "amount": amount, "note": note, "created_at": now},
            )
            bal = (await u.conn.execute(q.select_balance(project_id, user_id))).scalar_one()
        return int(bal)

    async def balance(self, project_id: str, user_id: str) -> int:
        async with self.db.read() as conn:
            bal = (await conn.execute(q.select_balance(project_id, user_id))).scalar()
        return int(bal or 0)

    async def ledger_sum(self, project_id: str, user_id: str) -> int:
        async with self.db.read() as conn:
            return int((await conn.execute(q.ledger_sum(project_id, user_id))).scalar_one())

    async def for_job(self, job_id: str) -> list[dict[str, Any]]:
        async with self.db.read() as conn:
            rows = (await conn.execute(q.ledger_for_job(job_id))).mappings().all()
        return [dict(r) for r in rows]
