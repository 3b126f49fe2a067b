"""A webhook dispatcher in its own OS process: ``python -m tests.webhooks.procs <db url> <lease s>``.

Opens its own Core, starts a Dispatcher, prints ``ready`` and runs until killed. Its settings come
from GENLOOM_* in the environment (the test passes the loopback allowlist and the timeout).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from genloom.config import Settings
from genloom.observability import configure_logging
from genloom.runtime import open_core
from genloom.webhooks.dispatcher import Dispatcher
from tests.support import TestCatalog


async def main(url: str, lease: float) -> None:
    configure_logging("warning")  # logs on stderr; stdout carries only 'ready'
    settings = Settings(database_url=url, data_dir=Path(tempfile.gettempdir()) / "genloom-webhook-procs",
                        _env_file=None)  # type: ignore[call-arg]
    core = await open_core(settings, TestCatalog())
    dispatcher = Dispatcher(core, lease_seconds=lease, concurrency=4, batch=4, poll_seconds=0.2)
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    await asyncio.sleep(0.1)
    print("ready", flush=True)
    await task


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
