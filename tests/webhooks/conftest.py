"""Webhook fixtures: fast retry schedules, loopback allowed, a scripted receiver, services and
background dispatchers (all stopped before the Core closes)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from genloom.webhooks.deliveries import Deliveries
from genloom.webhooks.dispatcher import Dispatcher
from genloom.webhooks.endpoints import Endpoints, webhook_fetcher
from tests.webhooks.receiver import Receiver

SCHEDULE = [0.05, 0.1, 0.1, 0.1, 0.1]
TIMEOUT = 0.5


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Any:
    from genloom.config import Settings

    return Settings(
        database_url=db_url, data_dir=tmp_path / "data", fetch_allow_networks=["127.0.0.0/8"],
        webhook_schedule_seconds=SCHEDULE, webhook_timeout_seconds=TIMEOUT, _env_file=None,  # type: ignore[call-arg]
    )


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A loopback port that refuses connections (bound, never listening)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    sock.close()


@pytest.fixture
def endpoints(core: Any) -> Endpoints:
    return Endpoints(core.db, core.clock, webhook_fetcher(core.settings))


@pytest.fixture
def deliveries(core: Any) -> Deliveries:
    return Deliveries(core.db, core.clock)


@pytest.fixture
async def dispatch(core: Any) -> AsyncIterator[Callable[..., Awaitable[Dispatcher]]]:
    """``await dispatch(**kwargs)`` starts a Dispatcher(core, **kwargs) in the background."""
    running: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    async def start(**kwargs: Any) -> Dispatcher:
        kwargs.setdefault("poll_seconds", 0.5)
        d = Dispatcher(core, **kwargs)
        stop = asyncio.Event()
        running.append((stop, asyncio.create_task(d.run(stop))))
        await asyncio.sleep(0)
        return d

    yield start
    for stop, _ in running:
        stop.set()
    results = await asyncio.gather(*(t for _, t in running), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
