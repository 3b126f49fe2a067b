"""Distinct ids get distinct types; content-addressed ids for deduplicated assets."""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from typing import Any, NewType

JobId = NewType("JobId", str)
EventId = NewType("EventId", int)
ProjectId = NewType("ProjectId", str)
LeaseToken = NewType("LeaseToken", str)
WorkerId = NewType("WorkerId", str)


def new_job_id() -> JobId:
    """A random, URL-safe job id (UUID4 hex keeps ids unguessable across tenants)."""
    return JobId(uuid.uuid4().hex)


def new_lease_token() -> LeaseToken:
    return LeaseToken(secrets.token_hex(12))


def new_worker_id() -> WorkerId:
    return WorkerId(f"w_{secrets.token_hex(6)}")


def canonical_json(value: Any) -> str:
    """Deterministic JSON: sorted keys, no spaces; the basis of fingerprints and content ids."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def fingerprint(value: Any) -> str:
    """SHA-256 of the canonical JSON of a value: equal parameters give equal fingerprints."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def content_address(project_id: str, params: dict[str, Any], prefix: str = "asset_") -> str:
    """A stable id for normalised parameters within a project (Motioness asset ids)."""
    return prefix + fingerprint({"p": project_id, **params})[:24]
