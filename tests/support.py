"""Small helpers shared by tests."""

from __future__ import annotations

from typing import Any

from genloom.errors import InvalidInput


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
