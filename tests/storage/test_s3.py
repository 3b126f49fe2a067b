"""What only the S3 store promises, against the moto server: prefixes, multipart uploads, no local path."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import pytest

from genloom.errors import TransientError
from genloom.storage.base import Storage
from genloom.storage.s3 import S3Storage

from .conftest import ACCESS_KEY, REGION, SECRET_KEY, S3Server

pytestmark = pytest.mark.anyio


@pytest.fixture
def prefix() -> str:
    return f"t-{uuid.uuid4().hex}"


async def test_objects_live_under_the_prefix_with_their_content_type(
    s3_server: S3Server, prefix: str, tmp_path: Path
) -> None:
    source = tmp_path / "a.mp4"
    source.write_bytes(b"mp4 bytes")
    store = s3_server.storage(prefix=f"/{prefix}/")
    _: Storage = store
    await store.put_file("outputs/ab/job/a1.mp4", source, "video/mp4")

    raw: Any = s3_server.raw_client()
    head = raw.head_object(Bucket=s3_server.bucket, Key=f"{prefix}/outputs/ab/job/a1.mp4")
    assert head["ContentType"] == "video/mp4"
    assert store.local_path("outputs/ab/job/a1.mp4") is None


async def test_a_large_file_goes_up_in_parts_and_reads_back_by_range(
    s3_server: S3Server, prefix: str, tmp_path: Path
) -> None:
    data = hashlib.sha256(b"seed").digest() * (9 * 1024 * 1024 // 32 + 7)  # ~9 MiB: above the multipart threshold
    source = tmp_path / "long.mp4"
    source.write_bytes(data)
    store = s3_server.storage(prefix=prefix)

    stored = await store.put_file("outputs/ab/long/a1.mp4", source, "video/mp4")

    assert stored.size == len(data)
    assert stored.etag.endswith("-2")  # a multipart etag: two parts of 8 MiB and the rest
    tail = b"".join([c async for c in store.open_range("outputs/ab/long/a1.mp4", len(data) - 100_000)])
    assert tail == data[-100_000:]


async def test_an_unreachable_store_is_transient(tmp_path: Path) -> None:
    store = S3Storage("bucket", "http://127.0.0.1:1", REGION, ACCESS_KEY, SECRET_KEY, path_style=True)
    with pytest.raises(TransientError):
        await store.stat("outputs/ab/job/a1.mp4")
