"""The storage seam: put a file, stat it, stream byte ranges; keys derive from job ids only."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    etag: str
    content_type: str


def output_key(job_id: str, attempt: int, ext: str = "mp4") -> str:
    """The storage key of a job's output: no user text ever reaches a path."""
    return f"outputs/{job_id[:2]}/{job_id}/a{attempt}.{ext}"


def upload_prefix(project_id: str) -> str:
    """Where a project's uploads live; jobs read only their own project's."""
    return f"uploads/{project_id}/"


def upload_key(project_id: str, sha256: str, ext: str) -> str:
    """A new upload's key: generated (the project id and a random name), never the user's file name."""
    return f"{upload_prefix(project_id)}{sha256[:16]}/{uuid.uuid4().hex}.{ext}"


class Storage(Protocol):
    """Async only; implementations stream, never load a whole object into memory."""

    async def put_file(self, key: str, path: Path, content_type: str) -> StoredObject: ...

    async def stat(self, key: str) -> StoredObject | None: ...

    def open_range(
        self, key: str, start: int = 0, end: int | None = None, chunk_size: int = 65536
    ) -> AsyncIterator[bytes]:
        """Yield bytes [start, end] inclusive (end None = to the last byte)."""
        ...

    def local_path(self, key: str) -> Path | None:
        """The file's path when the store is the local filesystem (MoneyPrinter's resultPath)."""
        ...

    async def delete(self, key: str) -> None: ...
