"""A worker process for the process tests: ``python -m tests.worker.runner``.

Settings come from the GENLOOM_* environment the test passes. It opens the App with the test
registry, prints ``ready <worker id>``, waits for a line on stdin when RUNNER_WAIT_GO is set
(so a test can start it ahead of time), runs ``App.worker().run(stop)`` until SIGTERM or SIGINT
sets ``stop``, then closes the App and exits 0.

``child`` is the same program as a multiprocessing target, for the fault test's forkserver
(which imports this module once, so a restarted worker does not pay for the imports again).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection

from genloom.app import open_app
from genloom.config import Settings
from genloom.observability import configure_logging
from tests.worker.pipelines import make_registry


def _print(line: str) -> None:
    print(line, flush=True)


async def main(announce: Callable[[str], None] = _print) -> None:
    configure_logging(level=os.environ.get("RUNNER_LOG_LEVEL", "info"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = await open_app(Settings(), make_registry(), migrate=False)
    try:
        worker = app.worker(concurrency=int(os.environ.get("RUNNER_CONCURRENCY", "2")))
        announce(f"ready {worker.id}")
        if os.environ.get("RUNNER_WAIT_GO"):
            go = loop.run_in_executor(None, sys.stdin.readline)
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait([go, stopped], return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if stop.is_set() or not go.result():
                os._exit(0)  # never started: nothing to hand back (the stdin reader cannot be joined)
        announce("working")
        await worker.run(stop)
    finally:
        await app.close()
    announce("stopped")


def child(env: dict[str, str], log: str, conn: Connection) -> None:
    """Run ``main`` in a forked process: ``env`` replaces the environment, output goes to ``log``,
    the announcements to ``conn``."""
    os.environ.clear()
    os.environ.update(env)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    asyncio.run(main(conn.send))


if __name__ == "__main__":
    asyncio.run(main())
