"""Store fixtures: a Core on a manual clock, for tests where time must only move when told."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from genloom.clock import ManualClock


@pytest.fixture
async def manual(settings: Any) -> AsyncIterator[Any]:
    """A runtime.Core like ``core`` whose clock is a ManualClock (``manual.clock.advance(s)``)."""
    from genloom.runtime import open_core
    from tests.support import TestCatalog

    c = await open_core(settings, TestCatalog(), clock=ManualClock())
    yield c
    await c.close()
