"""The built-in job types end to end through App, small inputs: motion (single, loop) and video
render playable MP4s, copy and scrape answer synchronously, static_ad and tts park on the local
provider and settle to a stored PNG and WAV."""

from __future__ import annotations

import threading
import wave
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import av
import pytest
from PIL import Image

from genloom.app import App, open_app
from genloom.config import Settings
from genloom.lifecycle import Status
from tests.store.helpers import event_rows, ledger_rows, make_project
from tests.worker.conftest import running, submit, wait_status

pytestmark = pytest.mark.anyio

PAGE = b"""<!doctype html><html><head><title>Acme  Widgets</title>
<meta name="description" content="The best widgets.">
<meta property="og:image" content="https://example.com/w.png">
<script>var hidden = "not text";</script></head>
<body><h1>Widgets</h1><p>Made   by hand.</p></body></html>"""


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def page_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/product"
    server.shutdown()
    server.server_close()


@pytest.fixture
async def builtin_app(fast_settings: Settings) -> AsyncIterator[App]:
    settings = fast_settings.model_copy(update={"fetch_allow_networks": ["127.0.0.0/8"]})
    app = await open_app(settings, migrate=False)  # the built-in registry
    yield app
    await app.close()


def probe_mp4(path: Path) -> tuple[int, int, int, float]:
    """(width, height, decoded frames, seconds) of the file's video stream."""
    with av.open(str(path)) as box:
        stream = box.streams.video[0]
        frames = sum(1 for _ in box.decode(stream))
        seconds = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else 0.0
        return stream.codec_context.width, stream.codec_context.height, frames, seconds


async def test_motion_and_video_render_playable_mp4s(builtin_app: App) -> None:
    app = builtin_app
    project = await make_project(app.core, credits=100)
    single = await submit(app.core, project, "motion", mode="single", input={"src": "sample", "dur": 1, "height": 240})
    loop = await submit(app.core, project, "motion", mode="loop", input={"src": "sample", "dur": 1, "height": 240})
    video = await submit(app.core, project, "video", input={"subject": "tea", "paragraphs": 2, "height": 240})
    async with running(app):
        done = {j.id: await wait_status(app.core, j.id, Status.COMPLETED, Status.FAILED, within=60)
                for j in (single, loop, video)}
    for job in done.values():
        assert job.status == Status.COMPLETED, (job.type, job.error_code, job.error_message)
        assert job.result is not None and job.result_key is not None and job.result_key.endswith(".mp4")
        path = app.services.storage.local_path(job.result_key)
        width, height, frames, seconds = probe_mp4(path)
        assert min(width, height) == 240  # "240p": the short side, here 9:16
        assert (width, height) == (job.result["width"], job.result["height"])
        assert frames == round(job.result["duration"] * job.result["fps"]) and frames > 0
        assert seconds == pytest.approx(job.result["duration"], abs=0.1)
        assert job.result["bytes"] == path.stat().st_size
    assert probe_mp4(app.services.storage.local_path(done[single.id].result_key or ""))[2] == 24  # 1 s at 24 fps
    assert len(done[video.id].result["script"]) == 2  # type: ignore[index]
    single_events = [(e["type"], e["stage"]) for e in await event_rows(app.core, single.id)]
    assert single_events == [
        ("queued", None), ("started", None), ("vision_started", "vision"), ("vision_completed", "vision"),
        ("stage_started", "single"), ("stage_completed", "single"), ("storage_write_completed", "store"),
        ("completed", None),
    ]
    loop_stages = [e["stage"] for e in await event_rows(app.core, loop.id) if e["type"] == "stage_completed"]
    assert loop_stages == ["stage1", "stage2", "merge"]
    charged = sum(r["amount"] for r in await ledger_rows(app.core))
    assert charged == 100 - 10 - 10 - 20  # the grant, less three completed jobs


async def test_copy_and_scrape_run_synchronously(builtin_app: App, page_url: str) -> None:
    app = builtin_app
    project = await make_project(app.core, credits=10)
    copy = await submit(app.core, project, "copy", input={"name": "Acme Widget", "audience": "makers"})
    scrape = await submit(app.core, project, "scrape", input={"url": page_url})
    assert copy.status == scrape.status == Status.PENDING
    async with running(app):
        copied = await wait_status(app.core, copy.id, Status.COMPLETED, Status.FAILED)
        scraped = await wait_status(app.core, scrape.id, Status.COMPLETED, Status.FAILED)
    assert copied.status == Status.COMPLETED and copied.result and all(copied.result.values())
    assert scraped.status == Status.COMPLETED, scraped.error_message
    assert scraped.result == {"url": page_url, "title": "Acme Widgets", "description": "The best widgets.",
                              "image": "https://example.com/w.png", "text": "Widgets Made by hand."}
    for job in (copy, scrape):
        assert "queued" not in {e["type"] for e in await event_rows(app.core, job.id)}


async def test_scrape_refuses_loopback_unless_allowed(fast_settings: Settings, page_url: str) -> None:
    app = await open_app(fast_settings, migrate=False)  # no allow networks: loopback is refused
    try:
        job = await submit(app.core, await app.core.projects.get("default"), "scrape", input={"url": page_url})
        async with running(app):
            failed = await wait_status(app.core, job.id, Status.FAILED)
        assert failed.error_code == "unsafe_url" and failed.attempt == 1
    finally:
        await app.close()


async def test_static_ad_and_tts_park_then_settle_on_the_local_provider(builtin_app: App) -> None:
    app = builtin_app
    project = await make_project(app.core, credits=10)
    ad = await submit(app.core, project, "static_ad", input={"name": "Acme Widget", "headline": "Built to last"})
    tts = await submit(app.core, project, "tts", input={"text": "Hello from the worker tests."})
    async with running(app):
        done_ad = await wait_status(app.core, ad.id, Status.COMPLETED, Status.FAILED)
        done_tts = await wait_status(app.core, tts.id, Status.COMPLETED, Status.FAILED)
    assert done_ad.status == done_tts.status == Status.COMPLETED, (done_ad.error_message, done_tts.error_message)
    assert done_ad.provider == "local" and done_ad.provider_ref and done_ad.lease_token is None
    assert done_ad.result_key and done_ad.result_key.endswith(".png")
    assert done_tts.result_key and done_tts.result_key.endswith(".wav")
    with Image.open(app.services.storage.local_path(done_ad.result_key)) as img:
        assert img.format == "PNG" and img.width > 0
    with wave.open(str(app.services.storage.local_path(done_tts.result_key))) as wav:
        assert wav.getnframes() > wav.getframerate() // 2  # some speech
    for job in (ad, tts):
        events = [(e["type"], e["stage"]) for e in await event_rows(app.core, job.id)]
        assert events == [("queued", None), ("started", None), ("stage_started", "submit"),
                          ("stage_completed", "submit"), ("storage_write_completed", "store"), ("completed", None)]
        parked = next(e for e in await event_rows(app.core, job.id) if e["type"] == "stage_completed")
        assert parked["data"]["parked"] is True and parked["data"]["ref"].startswith("loc_")
    assert sum(r["amount"] for r in await ledger_rows(app.core)) == 10 - 5 - 2
