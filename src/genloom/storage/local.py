"""Outputs on the local filesystem: atomic puts, content-hash etags in a sidecar, chunked range reads.

An object ``key`` lives at ``root/key``; its sidecar ``root/.genloom-meta/key.json`` holds the
SHA-256 (the etag), the content type, and the size, mtime and inode of the file it describes. A
sidecar that does not match its file (a crash between the two renames, a file written by other
means) is rebuilt on stat. Blocking calls run in worker threads.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import os
import tempfile
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from stat import S_ISREG
from typing import Any

import anyio

from genloom.errors import InvalidInput, NotFound
from genloom.storage.base import StoredObject

META_DIR = ".genloom-meta"
_COPY_CHUNK = 1 << 20


def check_key(key: str) -> str:
    """``key`` unchanged if it is a safe relative path: '/'-separated, no empty or '.'-led parts, no '\\'."""
    parts = key.split("/")
    if (
        not key
        or len(key.encode()) > 1024
        or "\\" in key
        or any(ord(c) < 0x20 for c in key)
        or any(not part or part.startswith(".") for part in parts)
    ):
        raise InvalidInput("storage keys are relative paths without '.', '..', '\\' or empty parts", key=key)
    return key


def check_range(start: int, end: int | None, chunk_size: int) -> None:
    if start < 0 or (end is not None and end < start) or chunk_size <= 0:
        raise ValueError(f"bad byte range {start}-{end} (chunk size {chunk_size})")


class LocalStorage:
    """The Storage Protocol over a directory tree."""

    def __init__(self, root: Path) -> None:
        self._root = root.absolute()

    def local_path(self, key: str) -> Path:
        return self._root / check_key(key)

    async def put_file(self, key: str, path: Path, content_type: str) -> StoredObject:
        dest = self.local_path(key)
        return await anyio.to_thread.run_sync(self._put, key, dest, path, content_type)

    async def stat(self, key: str) -> StoredObject | None:
        return await anyio.to_thread.run_sync(self._stat, key, self.local_path(key))

    async def open_range(
        self, key: str, start: int = 0, end: int | None = None, chunk_size: int = 65536
    ) -> AsyncIterator[bytes]:
        check_range(start, end, chunk_size)
        path = self.local_path(key)
        try:
            source = await anyio.open_file(path, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound("no such stored object", key=key) from None
        async with source:
            await source.seek(start)
            left = None if end is None else end - start + 1
            while left is None or left > 0:
                chunk = await source.read(chunk_size if left is None else min(chunk_size, left))
                if not chunk:
                    return
                if left is not None:
                    left -= len(chunk)
                yield chunk

    async def delete(self, key: str) -> None:
        path = self.local_path(key)
        await anyio.to_thread.run_sync(_unlink_all, path, self._meta_path(key))

    def _meta_path(self, key: str) -> Path:
        return self._root / META_DIR / f"{key}.json"

    def _put(self, key: str, dest: Path, source: Path, content_type: str) -> StoredObject:
        digest, written = _write_atomically(dest, _copy_from(source))
        self._write_meta(key, written, digest, content_type)
        return StoredObject(key, written.st_size, digest, content_type)

    def _stat(self, key: str, path: Path) -> StoredObject | None:
        try:
            info = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not S_ISREG(info.st_mode):
            return None
        meta = _read_json(self._meta_path(key))
        if meta is None or meta.get("file") != _fingerprint(info):
            content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            meta = self._write_meta(key, info, _sha256(path), content_type)
        return StoredObject(key, info.st_size, str(meta["sha256"]), str(meta["content_type"]))

    def _write_meta(self, key: str, info: os.stat_result, digest: str, content_type: str) -> dict[str, Any]:
        meta = {"sha256": digest, "content_type": content_type, "file": _fingerprint(info)}
        _write_atomically(self._meta_path(key), [json.dumps(meta).encode()])
        return meta


def _fingerprint(info: os.stat_result) -> list[int]:
    """Which file a sidecar describes: a rename keeps inode and mtime, a new put changes the inode."""
    return [info.st_size, info.st_mtime_ns, info.st_ino]


def _copy_from(source: Path) -> Iterator[bytes]:
    with source.open("rb") as f:
        while chunk := f.read(_COPY_CHUNK):
            yield chunk


def _write_atomically(dest: Path, chunks: Iterable[bytes]) -> tuple[str, os.stat_result]:
    """Write ``chunks`` beside ``dest``, fsync, rename over it: the SHA-256 hex and the file's stat."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".put-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
            written = os.fstat(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(dest.parent)
    return digest.hexdigest(), written


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    for chunk in _copy_from(path):
        digest.update(chunk)
    return digest.hexdigest()


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _unlink_all(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
