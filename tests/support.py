"""Small helpers shared by tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from genloom.errors import InvalidInput


async def eventually(check: Callable[[], Awaitable[Any]], within: float = 10.0, every: float = 0.02) -> Any:
    """Await ``check()`` until it returns something truthy (that value); fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still not true after {within} s (last: {value!r}): {check}")
        await asyncio.sleep(every)


class TestCatalog:
    """A catalog of test job types: 'noop' (queued, price 1) and 'sync' (runs without the queue)."""

    __test__ = False
    prices = {"noop": 1, "sync": 1, "motion": 10}

    def validate(self, type_: str, mode: str | None, input: dict[str, Any]) -> None:
        if type_ not in self.prices:
            raise InvalidInput(f"unknown job type {type_!r}")

    def is_sync(self, type_: str) -> bool:
        return type_ == "sync"

    def cost(self, type_: str, mode: str | None) -> int:
        return self.prices[type_]
