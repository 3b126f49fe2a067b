"""One contract for every Storage implementation: put, stat, byte ranges, etags, delete, key safety."""

from __future__ import annotations

from contextlib import aclosing
from pathlib import Path

import pytest

from genloom.errors import InvalidInput, NotFound
from genloom.storage.base import Storage, output_key

pytestmark = pytest.mark.anyio

DATA = bytes(range(256)) * 800  # 204,800 bytes: several chunks at the sizes below
KEY = output_key("01hzyjobid", 1)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "render.mp4"
    path.write_bytes(DATA)
    return path


async def read(storage: Storage, key: str, start: int = 0, end: int | None = None, chunk_size: int = 4096) -> bytes:
    chunks = [c async for c in storage.open_range(key, start, end, chunk_size)]
    assert all(0 < len(c) <= chunk_size for c in chunks)
    return b"".join(chunks)


async def test_put_then_stat(storage: Storage, source: Path) -> None:
    stored = await storage.put_file(KEY, source, "video/mp4")
    assert (stored.key, stored.size, stored.content_type) == (KEY, len(DATA), "video/mp4")
    assert stored.etag
    assert await storage.stat(KEY) == stored


async def test_missing_key_stats_as_none_and_cannot_be_opened(storage: Storage) -> None:
    assert await storage.stat("outputs/zz/nothing/a1.mp4") is None
    with pytest.raises(NotFound):
        await read(storage, "outputs/zz/nothing/a1.mp4")


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (0, None),  # everything
        (0, 0),  # the first byte
        (1000, 70_000),  # a middle range spanning chunks
        (100_000, None),  # open-ended
        (len(DATA) - 1, len(DATA) - 1),  # the last byte
        (len(DATA) - 1, None),  # open-ended from the last byte
        (0, len(DATA) - 1),  # explicit whole
        (200_000, 10_000_000),  # an end past the object is clamped
    ],
)
async def test_byte_ranges(storage: Storage, source: Path, start: int, end: int | None) -> None:
    await storage.put_file(KEY, source, "video/mp4")
    expected = DATA[start:] if end is None else DATA[start : end + 1]
    assert await read(storage, KEY, start, end) == expected


async def test_a_start_past_the_end_yields_nothing(storage: Storage, source: Path) -> None:
    await storage.put_file(KEY, source, "video/mp4")
    assert await read(storage, KEY, len(DATA)) == b""


async def test_whole_object_in_default_chunks(storage: Storage, source: Path) -> None:
    await storage.put_file(KEY, source, "video/mp4")
    chunks = [c async for c in storage.open_range(KEY)]
    assert b"".join(chunks) == DATA
    assert max(map(len, chunks)) <= 65536


@pytest.mark.parametrize(("start", "end"), [(-1, None), (10, 9)])
async def test_invalid_ranges_are_rejected(storage: Storage, source: Path, start: int, end: int | None) -> None:
    await storage.put_file(KEY, source, "video/mp4")
    with pytest.raises(ValueError):
        await read(storage, KEY, start, end)


async def test_a_reader_may_stop_early(storage: Storage, source: Path) -> None:
    await storage.put_file(KEY, source, "video/mp4")
    async with aclosing(storage.open_range(KEY, chunk_size=1024)) as chunks:
        async for chunk in chunks:
            assert chunk == DATA[:1024]
            break


async def test_etag_is_stable_for_the_same_content_and_changes_with_it(
    storage: Storage, source: Path, tmp_path: Path
) -> None:
    first = await storage.put_file(KEY, source, "video/mp4")
    again = await storage.put_file(KEY, source, "video/mp4")
    elsewhere = await storage.put_file(output_key("01hzyother", 2), source, "video/mp4")
    assert first.etag == again.etag == elsewhere.etag
    assert (await storage.stat(KEY)) == again

    changed = tmp_path / "changed.mp4"
    changed.write_bytes(DATA[::-1])
    replaced = await storage.put_file(KEY, changed, "video/mp4")
    assert replaced.etag != first.etag
    assert await read(storage, KEY, 0, 9) == DATA[::-1][:10]


async def test_content_type_is_kept(storage: Storage, source: Path) -> None:
    await storage.put_file("thumbs/ab/job/a1.webp", source, "image/webp")
    stored = await storage.stat("thumbs/ab/job/a1.webp")
    assert stored is not None
    assert stored.content_type == "image/webp"


async def test_empty_object(storage: Storage, tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    stored = await storage.put_file("logs/job/a1.txt", empty, "text/plain")
    assert stored.size == 0
    assert await read(storage, "logs/job/a1.txt") == b""


async def test_delete(storage: Storage, source: Path) -> None:
    await storage.put_file(KEY, source, "video/mp4")
    await storage.delete(KEY)
    assert await storage.stat(KEY) is None
    await storage.delete(KEY)  # deleting what is gone is not an error


@pytest.mark.parametrize(
    "key",
    ["", "../escape", "outputs/../../etc/passwd", "/etc/passwd", "a\\b", "a//b", "a/./b", "a/", ".hidden", "a\x00b"],
)
async def test_unsafe_keys_are_refused(storage: Storage, source: Path, key: str) -> None:
    with pytest.raises(InvalidInput):
        await storage.put_file(key, source, "video/mp4")
    with pytest.raises(InvalidInput):
        await storage.stat(key)
