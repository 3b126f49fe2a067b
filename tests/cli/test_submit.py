"""`genloom submit --wait` and the jobs commands through the real entry point, against a real server
in local mode (loopback, no keys: the default project, as the README's tour runs it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import av
import pytest
from PIL import Image

from tests.api.conftest import ApiServer

GENLOOM = [sys.executable, "-m", "genloom"]


@pytest.fixture
def local_server(db_url: str, tmp_path: Path) -> Iterator[ApiServer]:
    srv = ApiServer(db_url, tmp_path / "server").wait_ready()
    yield srv
    srv.stop()


def cli(srv: ApiServer, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENLOOM_")} | {"GENLOOM_URL": srv.url,
                                                                                   "COLUMNS": "120"}
    proc = subprocess.run([*GENLOOM, *args], env=env, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_submit_a_local_file_and_wait_for_the_video(local_server: ApiServer, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    Image.radial_gradient("L").convert("RGB").resize((400, 300)).save(photo)
    proc = cli(local_server, "submit", str(photo), "--motion", "zoom-in", "--mode", "loop", "--dur", "1",
               "--aspect", "1:1", "--wait")
    url = proc.stdout.strip().splitlines()[-1]
    assert url.startswith("/v1/jobs/") and url.endswith("/result")
    assert "stage1" in proc.stderr and "merge" in proc.stderr  # a progress line per stage
    job_id = url.split("/")[3]
    shown = json.loads(cli(local_server, "jobs", "show", job_id, "--json").stdout)
    assert shown["status"] == "completed" and shown["input"]["src"].startswith("uploads/")
    listed = json.loads(cli(local_server, "jobs", "ls", "--json").stdout)
    assert [j["id"] for j in listed["data"]] == [job_id]
    timeline = cli(local_server, "jobs", "watch", job_id).stdout
    assert "storage_write_completed" in timeline and "completed" in timeline


def test_submit_json_wait_and_error_exit_codes(local_server: ApiServer, tmp_path: Path) -> None:
    done = json.loads(cli(local_server, "submit", "sample", "--dur", "1", "--wait", "--json").stdout)
    assert done["status"] == "completed" and done["terminal"] is True
    bad = cli(local_server, "submit", "sample", "--dur", "500", check=False)
    assert bad.returncode == 2 and "invalid_input" in bad.stderr and "Traceback" not in bad.stderr
    missing = cli(local_server, "jobs", "show", "nope", check=False)
    assert missing.returncode == 2 and "genloom jobs ls" in missing.stderr
    terminal = cli(local_server, "jobs", "cancel", done["id"], check=False)
    assert terminal.returncode == 2 and "invalid_transition" in terminal.stderr
    no_file = cli(local_server, "submit", str(tmp_path / "absent.jpg"), check=False)
    assert no_file.returncode == 2 and "no such file" in no_file.stderr
    with av.open(str(Path(local_server.data_dir) / "storage" / _key(local_server, done["id"]))) as box:
        assert box.streams.video[0].frames > 0


def _key(srv: ApiServer, job_id: str) -> str:
    return str(json.loads(cli(srv, "jobs", "show", job_id, "--json").stdout)["result"] and
               f"outputs/{job_id[:2]}/{job_id}/a1.mp4")
