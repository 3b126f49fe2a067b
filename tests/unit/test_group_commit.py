"""Group commit: what arrives during a write goes in the next batch; each caller gets its own
answer; a batch that fails as a whole is retried item by item unless the failure is shared."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from genloom.group_commit import GroupCommit

pytestmark = pytest.mark.anyio


class Store:
    """A write function that records its batches and can be held open or made to fail."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def write(self, items: list[int]) -> Sequence[int | BaseException]:
        self.batches.append(list(items))
        await self.gate.wait()
        if 13 in items and len(items) > 1:
            raise ValueError("the batch holds 13")
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]


async def test_writes_that_arrive_together_share_one_batch() -> None:
    store = Store()
    gc: GroupCommit[int, int] = GroupCommit(store.write)
    assert await asyncio.gather(*(gc.submit(i) for i in (0, 2, 4))) == [0, 20, 40]
    assert store.batches == [[0, 2, 4]]


async def test_writes_during_a_write_go_in_the_next_batch() -> None:
    store = Store()
    store.gate.clear()
    gc: GroupCommit[int, int] = GroupCommit(store.write)
    first = asyncio.create_task(gc.submit(2))
    await asyncio.sleep(0.01)
    later = [asyncio.create_task(gc.submit(i)) for i in (4, 6)]
    await asyncio.sleep(0.01)
    assert store.batches == [[2]]  # the first write is still running: the others wait for it
    store.gate.set()
    assert [await first] + [await t for t in later] == [20, 40, 60]
    assert store.batches == [[2], [4, 6]]


async def test_each_caller_gets_its_own_error() -> None:
    gc: GroupCommit[int, int] = GroupCommit(Store().write)
    results = await asyncio.gather(*(gc.submit(i) for i in (2, 3, 4)), return_exceptions=True)
    assert results[0] == 20 and results[2] == 40
    assert isinstance(results[1], ValueError) and str(results[1]) == "odd 3"


async def test_a_failed_batch_is_written_item_by_item() -> None:
    store = Store()
    gc: GroupCommit[int, int] = GroupCommit(store.write)
    results = await asyncio.gather(*(gc.submit(i) for i in (2, 13, 4)), return_exceptions=True)
    assert results[0] == 20 and results[2] == 40
    assert isinstance(results[1], ValueError) and str(results[1]) == "odd 13"
    assert store.batches == [[2, 13, 4], [2], [13], [4]]


async def test_a_shared_failure_is_every_items_answer_without_retries() -> None:
    store = Store()
    gc: GroupCommit[int, int] = GroupCommit(store.write, shared=lambda exc: "13" in str(exc))
    results = await asyncio.gather(*(gc.submit(i) for i in (2, 13, 4)), return_exceptions=True)
    assert [str(r) for r in results] == ["the batch holds 13"] * 3
    assert store.batches == [[2, 13, 4]]


async def test_batches_are_capped() -> None:
    store = Store()
    gc: GroupCommit[int, int] = GroupCommit(store.write, max_batch=2)
    assert await asyncio.gather(*(gc.submit(i) for i in (0, 2, 4, 6, 8))) == [0, 20, 40, 60, 80]
    assert store.batches == [[0, 2], [4, 6], [8]]


async def test_a_cancelled_caller_leaves_the_others_their_answers() -> None:
    store = Store()
    store.gate.clear()
    gc: GroupCommit[int, int] = GroupCommit(store.write)
    gone = asyncio.create_task(gc.submit(2))
    kept = asyncio.create_task(gc.submit(4))
    await asyncio.sleep(0.01)
    gone.cancel()
    store.gate.set()
    assert await kept == 40
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert store.batches == [[2, 4]]  # the write went ahead for both
    assert await gc.submit(6) == 60  # and the next one starts a new writer


async def test_when_the_writer_is_cancelled_so_are_the_writes_it_held() -> None:
    store = Store()
    store.gate.clear()
    gc: GroupCommit[int, int] = GroupCommit(store.write)
    waiting = [asyncio.create_task(gc.submit(i)) for i in (2, 4)]
    await asyncio.sleep(0.01)
    queued = asyncio.create_task(gc.submit(6))
    await asyncio.sleep(0)
    assert gc._writer is not None
    gc._writer.cancel()
    for task in [*waiting, queued]:
        with pytest.raises(asyncio.CancelledError):
            await task
    store.gate.set()
    assert await gc.submit(8) == 80


async def test_a_transaction_conflict_is_retried_item_by_item_and_an_outage_is_shared() -> None:
    """With the store's own predicate: a batch the database turned away (a deadlock) is
    written again one item at a time; an unreachable database is every item's answer at once."""
    from genloom.errors import TransactionConflict, Unavailable
    from genloom.store.engine import db_wide

    batches: list[list[int]] = []
    failure: Exception = TransactionConflict("deadlock")

    async def write(items: list[int]) -> Sequence[int | BaseException]:
        batches.append(list(items))
        if len(items) > 1:
            raise failure
        return [i * 10 for i in items]

    gc: GroupCommit[int, int] = GroupCommit(write, shared=db_wide)
    assert await asyncio.gather(*(gc.submit(i) for i in (1, 2, 3))) == [10, 20, 30]
    assert batches == [[1, 2, 3], [1], [2], [3]]
    failure, batches[:] = Unavailable("gone"), []
    results = await asyncio.gather(*(gc.submit(i) for i in (1, 2)), return_exceptions=True)
    assert all(isinstance(r, Unavailable) for r in results) and batches == [[1, 2]]


async def test_a_writer_that_answers_wrongly_fails_its_callers_instead_of_cancelling_them() -> None:
    """A write that answers too few items is a bug: its callers get the error (a cancelled caller
    would leave its job running until the lease expired) and the next batch is written as usual."""
    async def write(items: list[int]) -> Sequence[int | BaseException]:
        return [i * 10 for i in items[1:]] if len(items) > 1 else [items[0] * 10]

    gc: GroupCommit[int, int] = GroupCommit(write)
    results = await asyncio.gather(*(gc.submit(i) for i in (1, 2)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert await gc.submit(3) == 30
