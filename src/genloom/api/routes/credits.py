"""/v1/credits (a project's view of one user's balance) and /v1/admin/credits (grants)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import select

from genloom.api import schemas
from genloom.api.auth import Caller, admin, caller, genloom
from genloom.api.docs import UNLIMITED, errors
from genloom.api.present import iso
from genloom.api.schemas import Text
from genloom.app import App
from genloom.store.schema import credit_ledger

router = APIRouter(prefix="/v1", tags=["credits"])
RECENT = 50


async def recent_ledger(app: App, project_id: str, user: str, limit: int = RECENT) -> list[schemas.LedgerEntry]:
    stmt = (select(credit_ledger)
            .where(credit_ledger.c.project_id == project_id, credit_ledger.c.user_id == user)
            .order_by(credit_ledger.c.id.desc()).limit(limit))
    async with app.core.db.read() as conn:
        rows = (await conn.execute(stmt)).mappings().all()
    out = []
    for r in rows:
        created = iso(r["created_at"])
        assert created is not None
        out.append(schemas.LedgerEntry(id=r["id"], job_id=r["job_id"], reason=r["reason"], round=r["round"],
                                       amount=r["amount"], note=r["note"], created_at=created))
    return out


@router.get("/credits", response_model=schemas.Credits, responses=errors(), summary="A user's balance")
async def credits(
    request: Request, who: Caller = Depends(caller),
    user: Annotated[Text, Query(max_length=200, description="The end user; empty for the project's own")] = "",
) -> schemas.Credits:
    app = genloom(request)
    balance = await app.core.credits.balance(who.project.id, user)
    return schemas.Credits(project_id=who.project.id, user=user, balance=balance,
                           ledger=await recent_ledger(app, who.project.id, user))


@router.post(
    "/admin/credits", response_model=schemas.Balance, dependencies=[Depends(admin)],
    responses=errors(403, 404, common=UNLIMITED), tags=["admin"], summary="Grant credits to a user of a project",
)
async def grant(body: schemas.CreditGrant, request: Request) -> schemas.Balance:
    app = genloom(request)
    await app.core.projects.get(body.project_id)  # 404 for a project that does not exist
    balance = await app.core.credits.grant(body.project_id, body.user, body.amount, note=body.note)
    return schemas.Balance(project_id=body.project_id, user=body.user, balance=balance)
