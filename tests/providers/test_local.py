"""The local provider: submit returns at once, the output appears, the callback fires, state survives a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from genloom.errors import PermanentError
from genloom.providers.base import Prediction
from genloom.providers.local import LocalPredictions


async def _done(provider: LocalPredictions, pred_id: str) -> Prediction:
    for _ in range(200):
        pred = await provider.get(pred_id)
        if pred.terminal:
            return pred
        await asyncio.sleep(0.02)
    raise AssertionError("the prediction never finished")


@pytest.mark.anyio
async def test_tts_renders_a_wav_and_calls_back(tmp_path: Path) -> None:
    seen: list[Prediction] = []

    async def on_done(pred: Prediction) -> None:
        seen.append(pred)

    provider = LocalPredictions(tmp_path, on_done=on_done)
    pred = await provider.submit("tts", {"text": "Hello there."})
    assert pred.status == "starting" and pred.id.startswith("loc_")
    final = await _done(provider, pred.id)
    assert final.status == "succeeded"
    path, content_type = await provider.fetch_output(final, tmp_path / "unused")
    assert content_type == "audio/wav" and path.read_bytes()[:4] == b"RIFF"
    await asyncio.sleep(0.05)
    assert [p.id for p in seen] == [pred.id]
    await provider.close()


@pytest.mark.anyio
async def test_a_render_error_is_a_failed_prediction(tmp_path: Path) -> None:
    provider = LocalPredictions(tmp_path)
    pred = await provider.submit("tts", {"text": ""})
    final = await _done(provider, pred.id)
    assert final.status == "failed" and "no text" in (final.error or "")
    await provider.close()


@pytest.mark.anyio
async def test_unknown_model_and_foreign_ids_are_refused(tmp_path: Path) -> None:
    provider = LocalPredictions(tmp_path)
    with pytest.raises(PermanentError):
        await provider.submit("video-diffusion", {})
    with pytest.raises(PermanentError):
        await provider.get("../../etc/passwd")
    assert (await provider.get("loc_0123456789abcdef0123")).status == "failed"


@pytest.mark.anyio
async def test_a_restart_mid_render_starts_it_again(tmp_path: Path) -> None:
    first = LocalPredictions(tmp_path)
    pred = await first.submit("static_ad", {"name": "Aurora", "aspect": "1:1", "height": 240})
    await first.close()  # the process died before the render finished
    second = LocalPredictions(tmp_path)
    final = await _done(second, pred.id)
    assert final.status == "succeeded"
    path, content_type = await second.fetch_output(final, tmp_path / "x")
    assert content_type == "image/png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    await second.close()


@pytest.mark.anyio
async def test_cancel_stops_a_render(tmp_path: Path) -> None:
    provider = LocalPredictions(tmp_path)
    pred = await provider.submit("static_ad", {"name": "Aurora", "height": 1080})
    await provider.cancel(pred.id)
    assert (await provider.get(pred.id)).status == "canceled"
    await provider.close()
