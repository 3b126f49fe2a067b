"""What only the filesystem store promises: paths, atomic puts, content-hash etags, sidecar repair."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from genloom.storage.base import Storage
from genloom.storage.local import META_DIR, LocalStorage

pytestmark = pytest.mark.anyio
KEY = "outputs/ab/abjob/a1.mp4"
DATA = b"frames" * 1000


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture
def store(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "store")


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "render.mp4"
    path.write_bytes(DATA)
    return path


def test_is_a_storage(store: LocalStorage) -> None:
    _: Storage = store


async def test_local_path_is_where_the_bytes_are(store: LocalStorage, source: Path, tmp_path: Path) -> None:
    await store.put_file(KEY, source, "video/mp4")
    path = store.local_path(KEY)
    assert path == tmp_path / "store" / KEY
    assert path.read_bytes() == DATA


async def test_etag_is_the_content_sha256(store: LocalStorage, source: Path) -> None:
    stored = await store.put_file(KEY, source, "video/mp4")
    assert stored.etag == hashlib.sha256(DATA).hexdigest()


async def test_put_leaves_only_the_object_and_its_sidecar(store: LocalStorage, source: Path, tmp_path: Path) -> None:
    await store.put_file(KEY, source, "video/mp4")
    assert tree(tmp_path / "store") == sorted([KEY, f"{META_DIR}/{KEY}.json"])


async def test_a_failed_put_keeps_the_previous_object(store: LocalStorage, source: Path, tmp_path: Path) -> None:
    before = await store.put_file(KEY, source, "video/mp4")
    with pytest.raises(FileNotFoundError):
        await store.put_file(KEY, tmp_path / "missing.mp4", "video/mp4")
    assert await store.stat(KEY) == before
    assert tree(tmp_path / "store") == sorted([KEY, f"{META_DIR}/{KEY}.json"])


async def test_a_file_replaced_behind_its_back_gets_a_fresh_etag(store: LocalStorage, source: Path) -> None:
    await store.put_file(KEY, source, "video/mp4")
    replacement = store.local_path(KEY).with_name("other")
    replacement.write_bytes(b"different bytes")
    os.replace(replacement, store.local_path(KEY))
    stored = await store.stat(KEY)
    assert stored is not None
    assert (stored.size, stored.etag) == (15, hashlib.sha256(b"different bytes").hexdigest())
    assert stored.content_type == "video/mp4"  # guessed from the extension once the sidecar is stale


async def test_a_file_written_without_put_is_served(store: LocalStorage) -> None:
    path = store.local_path("imports/x/clip.webm")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"webm")
    stored = await store.stat("imports/x/clip.webm")
    assert stored is not None
    assert (stored.size, stored.content_type) == (4, "video/webm")


async def test_a_directory_is_not_an_object(store: LocalStorage, source: Path) -> None:
    await store.put_file(KEY, source, "video/mp4")
    assert await store.stat("outputs/ab") is None


async def test_delete_removes_the_sidecar_too(store: LocalStorage, source: Path, tmp_path: Path) -> None:
    await store.put_file(KEY, source, "video/mp4")
    await store.delete(KEY)
    assert tree(tmp_path / "store") == []
