"""Projects and their keys: secret keys stored only as SHA-256 hashes, looked up by hash and
compared in constant time; public keys are public by design and stored as they are."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from genloom.clock import Clock, ms
from genloom.errors import NotFound, Unauthorized
from genloom.ids import ProjectId
from genloom.models import Project
from genloom.store import statements as q
from genloom.store.engine import Database

DEFAULT_PROJECT = ProjectId("default")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedKeys:
    project: Project
    public_key: str
    secret_key: str  # shown once; only its hash is kept


class Projects:
    def __init__(self, db: Database, clock: Clock) -> None:
        self.db, self.clock = db, clock

    async def create(
        self, name: str, *, project_id: str | None = None, billing: bool = True,
        allowed_origins: list[str] | None = None, rate_limit_per_minute: int = 600, with_secret: bool = True,
    ) -> IssuedKeys:
        now = ms(self.clock.now())
        pid = ProjectId(project_id or f"prj_{secrets.token_hex(8)}")
        public = f"pk_{secrets.token_urlsafe(12).replace('-', 'x').replace('_', 'y')}"
        secret = f"sk_{secrets.token_urlsafe(32)}"
        async with self.db.tx() as conn:
            await conn.execute(q.insert_project({
                "id": pid, "name": name, "public_key": public, "billing_enabled": billing,
                "allowed_origins": allowed_origins or [], "rate_limit_per_minute": rate_limit_per_minute,
                "created_at": now,
            }))
            if with_secret:
                await conn.execute(q.insert_api_key({
                    "id": f"key_{secrets.token_hex(8)}", "project_id": pid, "prefix": secret[:7],
                    "key_hash": hash_key(secret), "created_at": now,
                }))
        project = Project(pid, name, public, billing, allowed_origins or [], rate_limit_per_minute)
        return IssuedKeys(project, public, secret if with_secret else "")

    async def ensure_default(self, billing: bool = False) -> Project:
        """The embedded default project (local mode), created on first use, unmetered by default."""
        try:
            return await self.get(DEFAULT_PROJECT)
        except NotFound:
            pass
        try:
            created = await self.create("default", project_id=DEFAULT_PROJECT, billing=billing, with_secret=False)
            return created.project
        except Exception:
            return await self.get(DEFAULT_PROJECT)  # created concurrently by another process

    async def get(self, project_id: str) -> Project:
        async with self.db.read() as conn:
            row = (await conn.execute(q.select_project(project_id))).mappings().first()
        if row is None:
            raise NotFound("no such project")
        return Project.from_row(row)

    async def by_public_key(self, public_key: str) -> Project:
        async with self.db.read() as conn:
            row = (await conn.execute(q.project_by_public_key(public_key))).mappings().first()
        if row is None or not hmac.compare_digest(row["public_key"], public_key):
            raise NotFound("no such project")
        return Project.from_row(row)

    async def authenticate(self, secret_key: str) -> Project:
        """The project a secret key belongs to, or Unauthorized."""
        digest = hash_key(secret_key)
        async with self.db.read() as conn:
            row = (await conn.execute(q.project_by_key_hash(digest))).mappings().first()
        if row is None or not hmac.compare_digest(row["key_hash"], digest):
            raise Unauthorized("the key is not valid")
        return Project.from_row(row)

    async def rotate(self, project_id: str) -> str:
        """Revoke a project's secret keys and issue a new one (shown once)."""
        await self.get(project_id)
        now = ms(self.clock.now())
        secret = f"sk_{secrets.token_urlsafe(32)}"
        async with self.db.tx() as conn:
            await conn.execute(q.revoke_keys(project_id, now))
            await conn.execute(q.insert_api_key({
                "id": f"key_{secrets.token_hex(8)}", "project_id": project_id, "prefix": secret[:7],
                "key_hash": hash_key(secret), "created_at": now,
            }))
        return secret

    async def any_keys(self) -> bool:
        async with self.db.read() as conn:
            return bool((await conn.execute(q.count_keys())).scalar_one())
