"""Processes for the HTTP benches: an API server on a pre-bound socket (bench._apiserver), worker
processes (``python -m genloom worker``), and what /proc says about them (RSS, CPU time)."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
ADMIN_TOKEN = "adm_bench_token_0123456789"
UNLIMITED_RATE = "100000000"  # requests per minute: the benches measure the server, not its limiter


def base_env(db_url: str, data_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without GENLOOM_*, plus the settings every bench process shares."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENLOOM_")}
    env |= {
        "GENLOOM_DATABASE_URL": db_url, "GENLOOM_DATA_DIR": str(data_dir),
        "GENLOOM_CONFIG": str(data_dir / "absent.toml"), "GENLOOM_ADMIN_TOKEN": ADMIN_TOKEN,
        "GENLOOM_RATE_LIMIT_PER_MINUTE": UNLIMITED_RATE, "GENLOOM_LOG_LEVEL": "info",
        "PYTHONPATH": str(ROOT / "src") + os.pathsep + str(ROOT),
    }
    return env | (extra or {})


class Proc:
    """A child process with its output in a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, pass_fds: tuple[int, ...] = ()) -> None:
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     pass_fds=pass_fds)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def logs(self, tail: int = 20000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-tail:]

    def signal_stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait_stopped(self, within: float = 30.0) -> int | None:
        """The exit code (negative: the signal), or None if it had to be killed."""
        try:
            code: int | None = self.proc.wait(within)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            code = None
        self._log.close()
        return code

    def stop(self, within: float = 30.0) -> int | None:
        self.signal_stop()
        return self.wait_stopped(within)


class ApiProcess(Proc):
    """``python -m bench._apiserver`` (genloom's app plus the bench's emit route) on a bound socket."""

    def __init__(self, env: dict[str, str], log_path: Path, *, background: bool, heartbeat: float = 15.0) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = int(sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        env = env | {"GENLOOM_HOST": "127.0.0.1", "GENLOOM_PORT": str(self.port)}
        env.setdefault("GENLOOM_PUBLIC_URL", self.url)
        self.metrics_token = env.setdefault("GENLOOM_METRICS_TOKEN", f"bench_metrics_{self.port}")
        sock.set_inheritable(True)
        args = [sys.executable, "-m", "bench._apiserver", str(sock.fileno()), "1" if background else "0",
                str(heartbeat)]
        try:
            super().__init__(args, env, log_path, pass_fds=(sock.fileno(),))
        finally:
            sock.close()

    def wait_ready(self, within: float = 60.0) -> ApiProcess:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"the API server exited ({self.proc.returncode}):\n{self.logs()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2, trust_env=False).status_code == 200:
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the API server did not start:\n{self.logs()}")


def worker_process(env: dict[str, str], log_path: Path, concurrency: int | None = None) -> Proc:
    args = [sys.executable, "-m", "genloom", "worker"]
    if concurrency is not None:
        args += ["--concurrency", str(concurrency)]
    return Proc(args, env, log_path)


def raise_nofile(want: int) -> int:
    """Raise this process's open-file limit towards ``want`` (children inherit it); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc/<pid>/status (VmRSS, KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def log_count(paths: list[Path], needle: str) -> int:
    """Lines containing ``needle`` (case-insensitive) across log files."""
    n, low = 0, needle.lower()
    for p in paths:
        if p.exists():
            n += sum(1 for line in p.read_text(errors="replace").splitlines() if low in line.lower())
    return n
