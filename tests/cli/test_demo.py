"""The README's first command, as a new user runs it: a fresh clone, a fresh venv, `make demo`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_make_demo_in_a_clean_clone_renders_an_mp4(tmp_path: Path) -> None:
    if not (ROOT / ".git").exists():
        pytest.fail("the demo test needs the repository's git history to clone from")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(clone)], check=True, timeout=120)
    # A fresh shell's environment: no settings, no venv, and not inside CI's own `make test`.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GENLOOM_", "VIRTUAL_ENV", "MAKE", "MFLAGS"))}
    env["PYTHON"] = shutil.which("python3") or sys.executable
    proc = subprocess.run(["make", "demo"], cwd=clone, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    path = Path([line for line in proc.stdout.splitlines() if line.endswith(".mp4")][-1])
    assert path.is_file() and path.suffix == ".mp4" and path.is_relative_to(clone / "genloom-data")
    with av.open(str(path)) as box:
        stream = box.streams.video[0]
        assert (stream.width, stream.height) == (720, 1280)
        frames = sum(1 for _ in box.decode(stream))
    assert frames >= 24 * 3
