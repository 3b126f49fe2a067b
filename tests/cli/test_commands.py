"""The CLI through its real entry point (a subprocess), on a throwaway data dir and database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

GENLOOM = [sys.executable, "-m", "genloom"]


def run(args: list[str], env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*GENLOOM, *args], env=env, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def env(tmp_path: Path, db_url: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("GENLOOM_")}
    out |= {"GENLOOM_DATA_DIR": str(tmp_path / "data"), "GENLOOM_LOG_LEVEL": "warning", "COLUMNS": "120"}
    if not db_url.startswith("sqlite"):
        out["GENLOOM_DATABASE_URL"] = db_url
    return out


def as_json(proc: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(proc.stdout)


def test_help_lists_every_command(env: dict[str, str]) -> None:
    out = run(["--help"], env).stdout
    for command in ("demo", "serve", "worker", "submit", "jobs", "db", "projects", "keys", "credits", "config"):
        assert command in out


def test_projects_keys_and_credits(env: dict[str, str]) -> None:
    run(["db", "upgrade"], env)
    created = as_json(run(["projects", "create", "acme", "--credits", "7", "--json"], env))
    assert created["secret_key"].startswith("sk_") and created["public_key"].startswith("pk_")
    pid = created["project_id"]
    assert as_json(run(["credits", "balance", pid, "--json"], env))["balance"] == 7
    assert as_json(run(["credits", "grant", pid, "5", "--user", "alice", "--json"], env))["balance"] == 5
    rotated = as_json(run(["keys", "rotate", pid, "--json"], env))
    assert rotated["secret_key"].startswith("sk_") and rotated["secret_key"] != created["secret_key"]


def test_bad_input_is_one_line_and_exit_code_2(env: dict[str, str]) -> None:
    proc = run(["credits", "grant", "prj_missing", "5"], env, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr
    proc = run(["credits", "grant", "prj_x", "-3"], env, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_config_show_masks_secrets(env: dict[str, str]) -> None:
    env = env | {"GENLOOM_ADMIN_TOKEN": "very-secret-admin", "GENLOOM_CONCURRENCY": "9"}
    shown = as_json(run(["config", "show", "--json"], env))
    assert shown["concurrency"] == 9
    assert "very-secret-admin" not in json.dumps(shown)


def test_invalid_configuration_is_exit_code_2(env: dict[str, str]) -> None:
    proc = run(["config", "show"], env | {"GENLOOM_CONCURRENCY": "many"}, check=False)
    assert proc.returncode == 2 and "concurrency" in proc.stderr and "Traceback" not in proc.stderr


def test_unreachable_server_is_exit_code_3_with_a_hint(env: dict[str, str]) -> None:
    proc = run(["jobs", "ls", "--url", "http://127.0.0.1:9"], env, check=False)
    assert proc.returncode == 3
    assert "genloom serve" in proc.stderr
