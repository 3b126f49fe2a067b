"""HTTP API: submit latency at a fixed request rate, and Server-Sent Events at scale, on SQLite and PostgreSQL.

    .venv/bin/python bench/api.py [--quick] [--db both|sqlite|postgresql] [--rate 200] [--seconds 10]
                                  [--sse 5000] [--fanout 1000] [--beat-streams 5000] [--beat 1]
                                  [--churn 20000] [--pg-url URL]

Every server is one real API process (genloom's app under uvicorn, bench/_apiserver.py) on a fresh
database; the clients run in this process on the same machine.

Submit: ``POST /v1/jobs`` of a ``copy`` job (synchronous type, billed project: the job row, its
charge and the balance in one transaction) sent open-loop at ``--rate`` requests/s for ``--seconds``:
request i is due at start + i/rate whatever happened to earlier ones, and its latency runs from
that due time, so a stalled server shows up in the figures instead of slowing the sender
(coordinated omission); then again at half the rate. Before that, capacity: 16 clients in a closed
loop. Baseline in the same run and at the same rate: ``GET /healthz`` on the same server (the HTTP
stack alone). Two server set-ups: ``serve`` (the embedded worker runs the jobs, so the queue
stays short) and ``--no-worker`` (jobs pile up, and each answer counts the queue ahead of its job).

SSE (no worker: the watched jobs stay queued; events are written by POST /_bench/emit, one unit of
work per event exactly as a worker writes, answering the wall-clock time its COMMIT returned):

* latency from an event's commit to its arrival at each client (same clock, raw-socket clients that
  note the time in ``data_received``): one connection (the baseline); ``--fanout`` connections all on
  one job's stream (one event reaches every client), each event written once every client has the
  last, then open-loop at 20/s; ``--fanout`` connections on as many jobs, one each, events written
  at 50/s to random jobs. Target: p99 < 50 ms at 1,000 connections.
* memory: ``--sse`` streams held open on one server process (5 per job), server RSS delta / N
  (VmRSS from /proc), against the same number of bare TCP connections on another server process
  (what uvicorn costs per connection before any request); the server's CPU while the streams are
  idle; and spread latency at that size.
* heartbeats: ``--beat-streams`` idle streams (5 per job) on a server whose heartbeat is ``--beat``
  seconds: pings per stream over 5 s, the server's CPU, and its feed/subscriber gauges.
* churn: ``--churn`` connect/close cycles, 100 at a time, over a job with one long-lived stream, a
  job nobody else follows (a feed made and dropped per cycle) and a finished job; afterwards the
  server's RSS, event-loop task count and feed/subscriber gauges against a warmed-up baseline.

--quick: 2 s of submits per row, ``serve`` rows only, 200 fan-out/spread connections, 1,000 held,
1,000 heartbeat streams, 2,000 churn cycles.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]  # bench/queue.py is not ``queue``
if os.path.dirname(_HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(_HERE))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
import warnings  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402
from collections.abc import Awaitable, Callable, Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

import httpx  # noqa: E402

from bench._common import PgDatabases, SqliteFiles, pg_server_url, table  # noqa: E402
from bench._procs import ADMIN_TOKEN, ApiProcess, base_env, cpu_seconds, raise_nofile, rss_kib  # noqa: E402

TARGET_P99_MS = 50.0
CAPACITY_CLIENTS = 16
SEQ = re.compile(rb'"seq":(\d+)[,}]')
PING = b": ping\n"


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))]


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


# ---------------------------------------------------------------------------------------------
# set-up: databases, servers, projects
# ---------------------------------------------------------------------------------------------

class Databases:
    def __init__(self, pg_url: str | None, dbs: list[str]) -> None:
        self.sqlite = SqliteFiles()
        self.pg: PgDatabases | None = None
        self.pg_origin = ""
        if "postgresql" in dbs:
            server, self.pg_origin = pg_server_url(pg_url)
            self.pg = PgDatabases(server)

    def fresh(self, dialect: str, tag: str) -> str:
        if dialect == "sqlite":
            return self.sqlite.genloom(tag)
        assert self.pg is not None
        return self.pg.genloom(tag)

    def cleanup(self) -> None:
        if self.pg is not None:
            self.pg.drop_all()
        self.sqlite.cleanup()


async def make_project(db_url: str, *, billing: bool) -> tuple[str, str]:
    """(project id, secret key), written straight into the database."""
    from genloom.clock import SystemClock
    from genloom.projects import Projects
    from genloom.store.engine import Database

    db = Database(db_url)
    try:
        keys = await Projects(db, SystemClock()).create("bench", billing=billing, rate_limit_per_minute=100_000_000)
    finally:
        await db.dispose()
    return keys.project.id, keys.secret_key


def start_server(db_url: str, root: Path, name: str, *, background: bool, heartbeat: float = 15.0) -> ApiProcess:
    env = base_env(db_url, root / "data")
    return ApiProcess(env, root / f"{name}.log", background=background, heartbeat=heartbeat).wait_ready()


# ---------------------------------------------------------------------------------------------
# a minimal HTTP/1.1 client: httpx's pool falls over once a thousand requests wait at once
# (client-side lag of seconds at 200 req/s), which would be measured as server latency
# ---------------------------------------------------------------------------------------------

class RawHttp:
    """Keep-alive connections to one server; JSON bodies with Content-Length (what the API sends)."""

    IDLE = 3.0  # uvicorn closes idle keep-alive connections after 5 s

    def __init__(self, port: int, headers: dict[str, str] | None = None) -> None:
        self.port = port
        self.headers = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.pool: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

    async def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
                      ) -> tuple[int, Any]:
        """(status, parsed JSON body or None). A reused connection the server had closed is retried
        once on a new one (every non-idempotent request here carries an Idempotency-Key)."""
        payload = json.dumps(body).encode() if body is not None else b""
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n{self.headers}{extra}"
                + (f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n" if body is not None
                   else "") + "\r\n").encode()
        for attempt in (0, 1):
            conn = self._take()
            reused = conn is not None
            if conn is None:
                conn = await asyncio.open_connection("127.0.0.1", self.port)
            reader, writer = conn
            try:
                writer.write(head + payload)
                status, length, close = await self._head(reader)
                data = await reader.readexactly(length) if length else b""
            except (ConnectionError, asyncio.IncompleteReadError):
                writer.close()
                if reused and attempt == 0:
                    continue
                raise
            if close:
                writer.close()
            else:
                self.pool.append((reader, writer, time.monotonic()))
            return status, (json.loads(data) if data else None)
        raise AssertionError("unreachable")

    def _take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        now = time.monotonic()
        while self.pool:
            reader, writer, used = self.pool.pop()
            if now - used < self.IDLE and not reader.at_eof():
                return reader, writer
            writer.close()
        return None

    @staticmethod
    async def _head(reader: asyncio.StreamReader) -> tuple[int, int, bool]:
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
        if "chunked" in fields.get("transfer-encoding", ""):
            raise RuntimeError("chunked responses are not expected here")
        return status, int(fields.get("content-length", "0")), fields.get("connection", "") == "close"

    def close(self) -> None:
        for _, writer, _ in self.pool:
            writer.close()
        self.pool.clear()


# ---------------------------------------------------------------------------------------------
# submit latency, open loop
# ---------------------------------------------------------------------------------------------

@dataclass
class LoopResult:
    latencies: list[float] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)
    late_start: float = 0.0  # the worst lag between a request's due time and its send
    seconds: float = 0.0  # from the first due time to the last answer

    @property
    def errors(self) -> int:
        return sum(n for c, n in self.codes.items() if not c.startswith("2"))


async def open_loop(rate: float, seconds: float, request: Callable[[int], Awaitable[tuple[int, Any]]]) -> LoopResult:
    loop = asyncio.get_running_loop()
    n = max(1, int(rate * seconds))
    start = loop.time() + 0.2
    out = LoopResult()

    async def one(i: int) -> None:
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - loop.time()))
        out.late_start = max(out.late_start, loop.time() - due)
        try:
            code = str((await request(i))[0])
        except (OSError, asyncio.IncompleteReadError) as exc:
            code = type(exc).__name__
        out.latencies.append(loop.time() - due)
        out.codes[code] += 1

    await asyncio.gather(*(one(i) for i in range(n)))
    out.seconds = loop.time() - start
    return out


async def closed_loop(clients: int, seconds: float, request: Callable[[int], Awaitable[tuple[int, Any]]]
                      ) -> LoopResult:
    """``clients`` callers, each sending its next request as soon as the last is answered: capacity."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    out = LoopResult()
    counter = iter(range(10**9))

    async def caller() -> None:
        while loop.time() - start < seconds:
            t0 = loop.time()
            try:
                code = str((await request(next(counter)))[0])
            except (OSError, asyncio.IncompleteReadError) as exc:
                code = type(exc).__name__
            out.latencies.append(loop.time() - t0)
            out.codes[code] += 1

    await asyncio.gather(*(caller() for _ in range(clients)))
    out.seconds = loop.time() - start
    return out


async def submit_bench(db_url: str, root: Path, dialect: str, *, background: bool, rate: float,
                       seconds: float) -> list[list[object]]:
    name = f"submit-{dialect}-{'serve' if background else 'noworker'}"
    server = start_server(db_url, root, name, background=background)
    rows: list[list[object]] = []
    try:
        project, key = await make_project(db_url, billing=True)
        users = [f"u{i}" for i in range(10)]
        total = int(rate * seconds) + 200
        admin = RawHttp(server.port, {"Authorization": f"Bearer {ADMIN_TOKEN}"})
        for user in users:
            status, body = await admin.request("POST", "/v1/admin/credits",
                                               {"project_id": project, "user": user, "amount": total})
            assert status == 200, body
        admin.close()
        http = RawHttp(server.port, {"Authorization": f"Bearer {key}"})
        run = uuid.uuid4().hex[:8]

        def submit(i: int) -> Awaitable[tuple[int, Any]]:
            return http.request("POST", "/v1/jobs", {"type": "copy", "user": users[i % len(users)],
                                                     "input": {"name": f"bench product {i}"}},
                                headers={"Idempotency-Key": f"{run}-{i}"})

        def health(i: int) -> Awaitable[tuple[int, Any]]:
            return http.request("GET", "/healthz")

        try:
            for i in range(100):  # warm-up: connections, code paths, caches
                await health(i)
                status, body = await submit(10_000_000 + i)
                assert status == 201, body
            setup = "serve (embedded worker)" if background else "--no-worker"
            # capacity first, then (once the embedded worker has caught up) the open loops
            runs: list[tuple[str, Callable[[int], Awaitable[tuple[int, Any]]], float | None]] = [
                ("GET /healthz", health, rate),
                (f"POST /v1/jobs copy, {CAPACITY_CLIENTS} clients closed loop", submit, None),
                ("POST /v1/jobs copy", submit, rate), ("POST /v1/jobs copy", submit, rate / 2)]
            for label, fn, at in runs:
                if at is None:
                    res = await closed_loop(CAPACITY_CLIENTS, max(2.0, seconds / 2), fn)
                    await asyncio.sleep(3.0)
                else:
                    res = await open_loop(at, seconds, fn)
                    label = f"{label} @ {at:g}/s"
                rows.append([dialect, setup, label, len(res.latencies), f"{len(res.latencies) / res.seconds:.0f}",
                             fmt_ms(pct(res.latencies, 50)), fmt_ms(pct(res.latencies, 99)),
                             fmt_ms(max(res.latencies)), res.errors, "-" if at is None else fmt_ms(res.late_start)])
                if res.errors:
                    print(f"  {dialect} {label}: non-2xx {dict(res.codes)}", flush=True)
        finally:
            http.close()
    finally:
        server.stop()
    return rows


# ---------------------------------------------------------------------------------------------
# SSE clients: raw sockets, arrival times noted as the bytes come in
# ---------------------------------------------------------------------------------------------

class Hub:
    """Arrivals of emitted events (by seq) across every connection, and who waits for them."""

    def __init__(self) -> None:
        self.arrivals: dict[int, list[float]] = defaultdict(list)
        self.waiters: dict[int, tuple[int, asyncio.Future[None]]] = {}
        self.ended = 0  # streams the server finished (or dropped) while they should have stayed open
        self.refused: Counter[str] = Counter()  # stream requests answered with something else than 200

    def expect(self, seq: int, count: int) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters[seq] = (count, fut)
        if count <= 0:
            fut.set_result(None)
        return fut

    def arrived(self, seq: int, at: float) -> None:
        got = self.arrivals[seq]
        got.append(at)
        waiter = self.waiters.get(seq)
        if waiter is not None and len(got) >= waiter[0] and not waiter[1].done():
            waiter[1].set_result(None)


class SseConn(asyncio.Protocol):
    """One stream (or, with no job, a bare TCP connection). ``ready`` resolves once the stream has
    started, was refused or closed; ``state`` says which. Each ``"seq":N`` seen is reported once
    to the hub with the time its bytes arrived."""

    def __init__(self, hub: Hub, job_id: str | None, request: bytes | None) -> None:
        self.hub, self.job_id, self.request = hub, job_id, request
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.state = "connecting"  # -> streaming | bare | refused | ended | closed
        self.head = b""
        self.tail = b""
        self.seen: set[int] = set()
        self.pings = 0

    @property
    def live(self) -> bool:
        return self.state in ("streaming", "bare")

    def _settle(self, state: str) -> None:
        self.state = state
        if not self.ready.done():
            self.ready.set_result(None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.request is None:
            self._settle("bare")
        else:
            transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        at = time.time()
        if self.state == "connecting":
            self.head += data
            first = self.head.split(b"\r\n", 1)[0]
            if b"\r\n" in self.head and not first.startswith(b"HTTP/1.1 200"):
                self.hub.refused[first.split(b" ", 2)[1].decode() if b" " in first else "?"] += 1
                self._settle("refused")
                self.close()
                return
            if b"retry:" in self.head:
                self._settle("streaming")
        self.pings += (self.tail[-(len(PING) - 1):] + data).count(PING)
        buf = self.tail + data
        for m in SEQ.finditer(buf):
            seq = int(m.group(1))
            if seq not in self.seen:
                self.seen.add(seq)
                self.hub.arrived(seq, at)
        if self.state == "streaming" and buf.endswith(b"\r\n0\r\n\r\n"):  # the last chunk: the stream is over
            self.hub.ended += 1
            self._settle("ended")
        self.tail = buf[-48:]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.live:
            self.hub.ended += 1
        if self.state in ("connecting", "streaming", "bare"):
            self._settle("ended" if self.state != "connecting" else "refused")
            if self.state == "refused":
                self.hub.refused["closed"] += 1

    def close(self) -> None:
        if self.state in ("connecting", "streaming", "bare"):
            self.state = "closed"
        if self.transport is not None:
            self.transport.close()


@dataclass
class Opened:
    asked: int
    live: int
    seconds: float
    gave_up: bool


class Streams:
    """Opens and closes many connections to one server."""

    def __init__(self, server: ApiProcess, key: str, hub: Hub) -> None:
        self.server, self.key, self.hub = server, key, hub
        self.conns: list[SseConn] = []

    def request(self, job_id: str) -> bytes:
        return (f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1:{self.server.port}\r\n"
                f"Authorization: Bearer {self.key}\r\nAccept: text/event-stream\r\n\r\n").encode()

    def watchers(self) -> Counter[str]:
        """Streams open now, per job."""
        return Counter(c.job_id for c in self.conns if c.state == "streaming" and c.job_id)

    def live(self) -> int:
        return sum(1 for c in self.conns if c.live)

    async def open(self, job_ids: Sequence[str | None], *, batch: int = 250, within: float = 300.0) -> Opened:
        """One connection per entry (None: a bare TCP connection), ``batch`` at a time, each batch
        waited for until it has started (or been refused); gives up opening more after ``within`` s."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        gave_up = False
        for i in range(0, len(job_ids), batch):
            left = t0 + within - loop.time()
            if left <= 0:
                gave_up = True
                break
            chunk = [SseConn(self.hub, j, self.request(j) if j else None) for j in job_ids[i:i + batch]]
            self.conns += chunk
            made = await asyncio.gather(*(loop.create_connection(lambda c=c: c, "127.0.0.1", self.server.port)
                                          for c in chunk), return_exceptions=True)
            for c, m in zip(chunk, made, strict=True):
                if isinstance(m, BaseException):
                    self.hub.refused[type(m).__name__] += 1
                    c._settle("refused")
            await asyncio.wait([c.ready for c in chunk], timeout=max(0.1, left))
        return Opened(len(job_ids), self.live(), loop.time() - t0, gave_up)

    async def close_all(self) -> None:
        for c in self.conns:
            c.close()
        self.conns.clear()
        await asyncio.sleep(0.5)


class Emitter:
    """Writes bench events through the server (POST /_bench/emit) with globally unique seqs."""

    def __init__(self, http: RawHttp, seq: int = 0) -> None:
        self.http = http
        self.seq = seq
        self.refused: Counter[int] = Counter()  # writes the server answered with an error (e.g. 503)

    def next(self) -> int:
        self.seq += 1
        return self.seq

    async def emit(self, job_id: str, seq: int) -> float | None:
        """The commit time, or None when the server refused the write."""
        status, body = await self.http.request("POST", f"/_bench/emit/{job_id}?seq={seq}")
        if status != 200:
            self.refused[status] += 1
            return None
        return float(body["committed"])


@dataclass
class Lat:
    name: str
    conns: int
    events: int
    samples: list[float]
    missing: int
    ended: int
    refused: int
    emit_refused: int

    def row(self, dialect: str) -> list[object]:
        s = self.samples
        return [dialect, self.name, self.conns, self.events, len(s), fmt_ms(pct(s, 50)), fmt_ms(pct(s, 99)),
                fmt_ms(max(s) if s else float("nan")), self.missing,
                f"{self.ended}/{self.refused}/{self.emit_refused}"]


async def fanout(streams: Streams, emitter: Emitter, job_id: str, conns: int, events: int,
                 rng: random.Random, name: str) -> Lat:
    """``conns`` streams on one job; each event is written once every stream has the previous one
    (or 10 s passed). Expected arrivals: the streams open at the time of the write."""
    hub = streams.hub
    ended0, refused0, emit0 = hub.ended, sum(hub.refused.values()), sum(emitter.refused.values())
    await streams.open([job_id] * conns)
    samples: list[float] = []
    missing = 0
    for _ in range(events):
        await asyncio.sleep(rng.uniform(0.05, 0.15))
        seq = emitter.next()
        want = streams.watchers()[job_id]
        done = hub.expect(seq, want)
        committed = await emitter.emit(job_id, seq)
        if committed is None:
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(done), 10)
        got = hub.arrivals[seq]
        missing += max(0, want - len(got))
        samples += [t - committed for t in got]
    await streams.close_all()
    return Lat(name, conns, events, samples, missing, hub.ended - ended0, sum(hub.refused.values()) - refused0,
               sum(emitter.refused.values()) - emit0)


async def spread(streams: Streams, emitter: Emitter, job_ids: Sequence[str], rate: float, seconds: float,
                 rng: random.Random, name: str, *, already_open: bool = False) -> Lat:
    """Streams on many jobs; events written open-loop at ``rate``/s, each to a random one of ``job_ids``."""
    hub = streams.hub
    ended0, refused0, emit0 = hub.ended, sum(hub.refused.values()), sum(emitter.refused.values())
    if not already_open:
        await streams.open(list(job_ids))
    conns = streams.live()
    loop = asyncio.get_running_loop()
    n = max(1, int(rate * seconds))
    targets = [rng.choice(job_ids) for _ in range(n)]
    start = loop.time() + 0.1
    committed: dict[int, tuple[float, int]] = {}
    waits: list[asyncio.Future[None]] = []

    async def one(i: int) -> None:
        await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
        seq = emitter.next()
        want = streams.watchers()[targets[i]]
        waits.append(hub.expect(seq, want))
        at = await emitter.emit(targets[i], seq)
        if at is not None:
            committed[seq] = (at, want)

    await asyncio.gather(*(one(i) for i in range(n)))
    await asyncio.wait(waits, timeout=10)
    samples: list[float] = []
    missing = 0
    for seq, (at, want) in committed.items():
        got = hub.arrivals[seq]
        missing += max(0, want - len(got))
        samples += [t - at for t in got]
    if not already_open:
        await streams.close_all()
    return Lat(name, conns, n, samples, missing, hub.ended - ended0, sum(hub.refused.values()) - refused0,
               sum(emitter.refused.values()) - emit0)


async def create_jobs(server: ApiProcess, key: str, n: int) -> list[str]:
    """``n`` queued motion jobs (no worker runs them, so their streams stay open)."""
    http = RawHttp(server.port, {"Authorization": f"Bearer {key}"})
    ids: list[str] = []
    run = uuid.uuid4().hex[:8]
    try:
        for i in range(n):
            status, body = await http.request("POST", "/v1/jobs", {"type": "motion", "input": {"src": "sample"}},
                                              headers={"Idempotency-Key": f"{run}-{i}"})
            assert status == 201, body
            ids.append(body["id"])
    finally:
        http.close()
    return ids


async def sse_bench(db_url: str, root: Path, dialect: str, *, fan: int, hold: int, quick: bool, open_within: float,
                    beat_n: int, beat: float, cycles: int
                    ) -> tuple[list[list[object]], list[list[object]], list[str], list[list[object]]]:
    rng = random.Random(7)
    notes: list[str] = []
    lat_rows: list[list[object]] = []
    mem_rows: list[list[object]] = []
    extra_rows: list[list[object]] = []
    window = 5.0  # seconds of heartbeats counted
    _, key = await make_project(db_url, billing=False)
    n_jobs = max(fan, 1 + hold // 5, 1 + beat_n // 5, 3)

    # -- latency ------------------------------------------------------------------------------
    server = start_server(db_url, root, f"sse-latency-{dialect}", background=False)
    try:
        jobs = await create_jobs(server, key, n_jobs)
        streams = Streams(server, key, Hub())
        emitter = Emitter(RawHttp(server.port))
        for _ in range(20):  # warm-up: the emit path
            await emitter.emit(jobs[0], emitter.next())
        base = await fanout(streams, emitter, jobs[0], 1, 30 if quick else 60, rng, "1 stream (baseline)")
        fan_lat = await fanout(streams, emitter, jobs[1], fan, 15 if quick else 30, rng, f"{fan} streams, one job")
        await streams.open([jobs[2]] * fan)
        fan20 = await spread(streams, emitter, [jobs[2]], 20, 5 if quick else 10, rng,
                             f"{fan} streams, one job, 20 ev/s", already_open=True)
        await streams.close_all()
        spread_lat = await spread(streams, emitter, jobs[:fan], 50, 3 if quick else 6, rng,
                                  f"{fan} streams on {fan} jobs, 50 ev/s")
        emitter.http.close()
        for lat in (base, fan_lat, fan20, spread_lat):
            lat_rows.append(lat.row(dialect))
        b99 = pct(base.samples, 99)
        for lat in (fan_lat, fan20, spread_lat):
            p99 = pct(lat.samples, 99)
            verdict = "meets" if p99 * 1000 < TARGET_P99_MS else "misses"
            notes.append(f"{dialect}: {lat.name}: p99 {fmt_ms(p99)} ms = {p99 / b99:.1f}x the 1-stream p99; "
                         f"{verdict} the {TARGET_P99_MS:.0f} ms target")
    finally:
        server.stop()

    # -- memory: bare TCP connections (baseline), then held SSE streams, each on a fresh server --
    server = start_server(db_url, root, f"sse-bare-{dialect}", background=False)
    try:
        streams = Streams(server, key, Hub())
        await streams.open([None] * 20)
        await streams.close_all()
        await asyncio.sleep(1.0)
        rss0 = rss_kib(server.pid)
        opened = await streams.open([None] * hold, within=open_within)
        await asyncio.sleep(2.0)
        rss1 = rss_kib(server.pid)
        live = streams.live()
        bare_per = (rss1 - rss0) / max(1, live)
        mem_rows.append([dialect, "bare TCP (baseline)", hold, live, rss0 // 1024, rss1 // 1024, f"{bare_per:.1f}",
                         f"{opened.seconds:.1f}", "-", "-", "-"])
        await streams.close_all()
    finally:
        server.stop()

    server = start_server(db_url, root, f"sse-hold-{dialect}", background=False)
    try:
        hub = Hub()
        streams = Streams(server, key, hub)
        await streams.open(jobs[:20])  # warm-up: the stream's code paths and pools
        await streams.close_all()
        await asyncio.sleep(1.0)
        rss0 = rss_kib(server.pid)
        targets = [jobs[i // 5] for i in range(hold)]  # five streams per job
        opened = await streams.open(targets, within=open_within)
        await asyncio.sleep(2.0)
        rss1 = rss_kib(server.pid)
        live = streams.live()
        cpu0, w0 = cpu_seconds(server.pid), time.monotonic()
        await asyncio.sleep(5.0)
        idle_cpu = (cpu_seconds(server.pid) - cpu0) / (time.monotonic() - w0)
        sse_per = (rss1 - rss0) / max(1, live)
        mem_rows.append([dialect, "SSE streams, idle", hold, live, rss0 // 1024, rss1 // 1024, f"{sse_per:.1f}",
                         f"{opened.seconds:.1f}" + (" (gave up)" if opened.gave_up else ""),
                         f"{idle_cpu * 100:.0f}%", f"{hub.ended}/{sum(hub.refused.values())}",
                         f"{sse_per / max(bare_per, 0.01):.1f}x"])
        if hub.refused:
            notes.append(f"{dialect}: holding {hold}: stream requests refused: {dict(hub.refused)}")
        emitter = Emitter(RawHttp(server.port), seq=10_000_000)
        held = sorted({c.job_id for c in streams.conns if c.state == "streaming" and c.job_id})
        if held:
            lat = await spread(streams, emitter, held, 20, 3 if quick else 5, rng,
                               f"{live} streams held (5 per job), 20 ev/s", already_open=True)
            lat_rows.append(lat.row(dialect))
        emitter.http.close()
        await streams.close_all()
    finally:
        server.stop()

    # -- heartbeats: idle streams at a short heartbeat (5 per job, one reader per job) --------------
    server = start_server(db_url, root, f"sse-beat-{dialect}", background=False, heartbeat=beat)
    try:
        hub = Hub()
        streams = Streams(server, key, hub)
        opened = await streams.open([jobs[i // 5] for i in range(beat_n)], within=open_within)
        await asyncio.sleep(1.0)
        pings0 = {id(c): c.pings for c in streams.conns}
        cpu0, w0 = cpu_seconds(server.pid), time.monotonic()
        await asyncio.sleep(window)
        cpu = (cpu_seconds(server.pid) - cpu0) / (time.monotonic() - w0)
        beats = sorted(c.pings - pings0[id(c)] for c in streams.conns if c.live)
        g = await gauges(server)
        extra_rows.append([dialect, f"idle streams, heartbeat {beat:g} s", beat_n, len(beats),
                           f"{opened.seconds:.1f}" + (" (gave up)" if opened.gave_up else ""),
                           f"{min(beats, default=0)}/{pct(beats, 50):g} in {window:g} s", f"{cpu * 100:.0f}%",
                           f"{g.get('genloom_sse_feeds', 0):g}/{g.get('genloom_sse_subscribers', 0):g}",
                           f"{hub.ended}/{sum(hub.refused.values())}", "-"])
        await streams.close_all()
    finally:
        server.stop()

    # -- churn: connect/close cycles; what is left afterwards ---------------------------------------
    server = start_server(db_url, root, f"sse-churn-{dialect}", background=False)
    try:
        done = (await create_jobs(server, key, 1))[0]
        http = RawHttp(server.port, {"Authorization": f"Bearer {key}"})
        status, body = await http.request("POST", f"/v1/jobs/{done}/cancel")
        assert status == 202, body
        http.close()
        hub = Hub()
        keep = Streams(server, key, hub)
        await keep.open([jobs[0]])  # one stream stays open throughout: the churn joins its feed
        targets = [jobs[0], jobs[1], done]  # a shared feed, a feed made and dropped each time, a finished job
        await churn(server, key, targets, max(500, cycles // 10), hub)  # warm-up
        await asyncio.sleep(1.0)
        g0, rss0 = await gauges(server), rss_kib(server.pid)
        seconds = await churn(server, key, targets, cycles, hub)
        await asyncio.sleep(1.0)
        g1, rss1 = await gauges(server), rss_kib(server.pid)
        alive = keep.live()
        await keep.close_all()
        extra_rows.append([dialect, "connect/close cycles, 100 at a time", cycles, f"{cycles / seconds:.0f}/s",
                           f"{seconds:.1f}", f"RSS {rss0 // 1024} -> {rss1 // 1024} MiB ({(rss1 - rss0) / 1024:+.1f})",
                           f"tasks {g0.get('genloom_event_loop_tasks', 0):g} -> "
                           f"{g1.get('genloom_event_loop_tasks', 0):g}",
                           f"{g1.get('genloom_sse_feeds', 0):g}/{g1.get('genloom_sse_subscribers', 0):g}",
                           f"-/{sum(hub.refused.values())}", "kept" if alive else "LOST"])
    finally:
        server.stop()
    return lat_rows, mem_rows, notes, extra_rows


async def gauges(server: ApiProcess) -> dict[str, float]:
    """The server's SSE gauges (feeds, subscribers, events held) and its event loop's task count."""
    r = await asyncio.to_thread(httpx.get, f"{server.url}/metrics", timeout=30, trust_env=False,
                                headers={"Authorization": f"Bearer {server.metrics_token}"})
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r"^(genloom_(?:sse_\w+|event_loop_tasks)) (\S+)$", r.text, re.MULTILINE)}


async def churn(server: ApiProcess, key: str, job_ids: Sequence[str], cycles: int, hub: Hub,
                concurrency: int = 100) -> float:
    """``cycles`` streams opened and closed, ``concurrency`` at a time, round-robin over ``job_ids``:
    three in four once the stream has started, one in four before any answer. The seconds taken."""
    loop = asyncio.get_running_loop()
    streams = Streams(server, key, hub)
    todo = iter(range(cycles))

    async def one_by_one() -> None:
        for i in todo:
            job = job_ids[i % len(job_ids)]
            conn = SseConn(hub, job, streams.request(job))
            try:
                await loop.create_connection(lambda c=conn: c, "127.0.0.1", server.port)
            except OSError as exc:
                hub.refused[type(exc).__name__] += 1
                continue
            if i % 4:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(conn.ready), 10)
            conn.close()

    t0 = loop.time()
    await asyncio.gather(*(one_by_one() for _ in range(concurrency)))
    return loop.time() - t0


def print_tables(args: argparse.Namespace, seconds: float, submit_rows: list[list[object]],
                 lat_rows: list[list[object]], mem_rows: list[list[object]], notes: list[str],
                 extra_rows: list[list[object]]) -> None:
    if submit_rows:
        print_submit(args, seconds, submit_rows)
    if lat_rows:
        print()
        print("SSE commit -> client arrival (event committed by the server, received by raw-socket clients)")
        print(table(lat_rows, ["db", "scenario", "conns", "events", "samples", "p50 ms", "p99 ms", "max ms",
                               "missing", "ended/refused/emit-errors"]))
    for n in notes:
        print("  " + n)
    if mem_rows:
        print()
        print("SSE memory: server RSS (VmRSS) before and after opening N connections; KiB/conn = delta / open")
        print(table(mem_rows, ["db", "connections", "N", "open", "RSS0 MiB", "RSS1 MiB", "KiB/conn", "open s",
                               "idle CPU", "ended/refused", "vs bare"]))
    if extra_rows:
        print()
        print("SSE heartbeats while idle, and connect/close churn (feeds/subs: the server's gauges afterwards)")
        print(table(extra_rows, ["db", "scenario", "N", "open / rate", "s", "pings min/median | RSS",
                                 "idle CPU | tasks", "feeds/subs", "ended/refused", "long stream"]))
    sys.stdout.flush()


def print_submit(args: argparse.Namespace, seconds: float, submit_rows: list[list[object]]) -> None:
    print()
    print(f"submit latency, open loop for {seconds:g} s (from each request's due time); "
          f"capacity: {CAPACITY_CLIENTS} clients in a closed loop")
    print(table(submit_rows, ["db", "server", "request", "n", "req/s", "p50 ms", "p99 ms", "max ms", "errors",
                              "send lag ms"]))
    by = {(r[0], r[1], r[2]): r for r in submit_rows}
    for (db, setup, label), r in by.items():
        if label.startswith("POST /v1/jobs copy @"):
            rate = float(label.split("@ ")[1].rstrip("/s"))
            h = by.get((db, setup, f"GET /healthz @ {args.rate:g}/s"))
            cap = next((float(str(x[4])) for k, x in by.items() if k[:2] == (db, setup) and "closed" in k[2]), 0.0)
            if h is None or not cap:
                continue
            print(f"  {db} {setup} @ {rate:g}/s: submit/healthz p50 {float(str(r[5])) / float(str(h[5])):.1f}x, "
                  f"p99 {float(str(r[6])) / float(str(h[6])):.1f}x; offered load = "
                  f"{rate / cap:.2f}x the closed-loop capacity ({cap:.0f} req/s)")


async def amain(args: argparse.Namespace) -> None:
    dbs = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    seconds = args.seconds if args.seconds is not None else (2.0 if args.quick else 10.0)
    hold = args.sse if args.sse is not None else (1000 if args.quick else 5000)
    fan = args.fanout if args.fanout is not None else (200 if args.quick else 1000)
    nofile = raise_nofile(2 * hold + 4096)
    databases = Databases(args.pg_url, dbs)
    root = Path(tempfile.mkdtemp(prefix="genloom-bench-api-"))
    submit_rows: list[list[object]] = []
    lat_rows: list[list[object]] = []
    mem_rows: list[list[object]] = []
    notes: list[str] = []
    extra_rows: list[list[object]] = []
    beat_n = args.beat_streams if args.beat_streams is not None else (1000 if args.quick else 5000)
    cycles = args.churn if args.churn is not None else (2000 if args.quick else 20000)
    print(f"cpus: {os.cpu_count()}, open files: {nofile}, python {sys.version.split()[0]}, logs in {root}", flush=True)
    if databases.pg is not None:
        print(f"postgresql: {databases.pg_origin}", flush=True)
    try:
        for dialect in dbs:
            for background in ((True, False) if not args.quick else (True,)) if args.only != "sse" else ():
                print(f"[{dialect}] submit, {'serve' if background else '--no-worker'} ...", flush=True)
                try:
                    url = databases.fresh(dialect, "submit")
                    submit_rows += await submit_bench(url, root, dialect, background=background, rate=args.rate,
                                                      seconds=seconds)
                except Exception as exc:
                    notes.append(f"{dialect}: submit run failed: {type(exc).__name__}: {exc}")
            if args.only == "submit":
                continue
            print(f"[{dialect}] SSE: latency at {fan}, {hold} held ...", flush=True)
            try:
                url = databases.fresh(dialect, "sse")
                a, b, c, d = await sse_bench(url, root, dialect, fan=fan, hold=hold, quick=args.quick,
                                             open_within=args.open_within, beat_n=beat_n, beat=args.beat,
                                             cycles=cycles)
                lat_rows, mem_rows, notes, extra_rows = lat_rows + a, mem_rows + b, notes + c, extra_rows + d
            except Exception as exc:
                notes.append(f"{dialect}: SSE run failed: {type(exc).__name__}: {exc}")
            if dialect != dbs[-1]:
                print_tables(args, seconds, submit_rows, lat_rows, mem_rows, notes, extra_rows)  # so far
    finally:
        databases.cleanup()
    print_tables(args, seconds, submit_rows, lat_rows, mem_rows, notes, extra_rows)
    if not args.keep_logs:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=["submit", "sse"], default=None, help="run one half")
    parser.add_argument("--db", choices=["both", "sqlite", "postgresql"], default="both")
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--sse", type=int, default=None, help="SSE connections held (default 5000; quick 1000)")
    parser.add_argument("--fanout", type=int, default=None, help="connections for the latency runs (default 1000)")
    parser.add_argument("--beat-streams", type=int, default=None,
                        help="idle streams whose heartbeats are counted (default 5000; quick 1000)")
    parser.add_argument("--beat", type=float, default=1.0, help="the heartbeat for that run, seconds (default 1)")
    parser.add_argument("--churn", type=int, default=None,
                        help="SSE connect/close cycles (default 20000; quick 2000)")
    parser.add_argument("--open-within", type=float, default=120.0,
                        help="stop opening held connections after this many seconds (default 120)")
    parser.add_argument("--pg-url", default=None)
    parser.add_argument("--keep-logs", action="store_true")
    asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    main()
