"""Group commit: writes asked for while one batch is being written go together in the next.

Many jobs of one worker finish at about the same time (a claim hands out a batch). One commit
and one statement for all of them costs little more than one did for each, and an idle database
sees no delay at all: the first write starts on the loop's next turn, with whatever has
joined it by then; the writes that arrive while it runs make the next batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: Writes one batch; answers each item with its result or the exception that refused it alone.
WriteMany = Callable[[list[T]], Awaitable[Sequence[R | BaseException]]]


class GroupCommit(Generic[T, R]):
    def __init__(
        self, write: WriteMany[T, R], *, max_batch: int = 64, shared: Callable[[Exception], bool] = lambda _: False,
    ) -> None:
        """``shared(exc)``: a failure of the whole batch that writing each item alone would only
        repeat (the database is unreachable); it is every item's answer as it is."""
        self._write = write
        self._max = max_batch
        self._shared = shared
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """Write ``item`` with whatever else is waiting; returns its answer or raises its error."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._run(), name="genloom-group-commit")
        return await future

    async def _run(self) -> None:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[: self._max], self._waiting[self._max:]
                try:
                    answers = await self._answers([item for item, _ in batch])
                    if len(answers) != len(batch):
                        raise RuntimeError(f"the batch write answered {len(answers)} of {len(batch)} writes")
                except Exception as exc:  # the writer's own fault: every caller hears of it
                    answers = [exc] * len(batch)
                for (_, future), answer in zip(batch, answers, strict=True):
                    if future.done():  # its caller was cancelled; the write stands
                        continue
                    if isinstance(answer, BaseException):
                        future.set_exception(answer)
                    else:
                        future.set_result(answer)
                batch = []
        finally:  # cancelled (the loop is going away): so are the writes it had not answered
            self._writer = None
            for _, future in batch + self._waiting:
                future.cancel()
            self._waiting = []

    async def _answers(self, items: list[T]) -> Sequence[R | BaseException]:
        """The batch's answers; when the batch as a whole fails (one item's bad data, a lost
        connection), each item is written alone, so the error lands only where it belongs."""
        try:
            return await self._write(items)
        except Exception as exc:
            if len(items) == 1 or self._shared(exc):
                return [exc] * len(items)
        out: list[R | BaseException] = []
        for item in items:
            try:
                out += await self._write([item])
            except Exception as exc:
                out.append(exc)
        return out
