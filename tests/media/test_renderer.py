"""The renderer: container facts, camera moves that really move, loops, determinism, scene videos."""

from __future__ import annotations

import itertools
from pathlib import Path

import av
import numpy as np
import pytest

from genloom.errors import InvalidInput, UnsupportedMedia
from genloom.media.renderer import camera_path, frame_size, merge_loop, render_motion, render_video
from genloom.media.text import template_script
from tests.media.helpers import (
    bright_width,
    centred_square,
    luma_frames,
    phase_shift,
    probe,
    rgb_frames,
    sine_wav,
    texture,
    top_level_boxes,
)

SAMPLE = Path(__file__).parents[2] / "src" / "genloom" / "assets" / "sample.jpg"
SIZES = {"16:9": (320, 180), "9:16": (180, 320), "1:1": (180, 180), "4:5": (180, 226)}  # 225 rounds up


def _assert_playable(path: Path, size: tuple[int, int], frames: int, fps: int = 24) -> None:
    facts = probe(path)
    assert (facts.codec, facts.pix_fmt) == ("h264", "yuv420p")
    assert (facts.width, facts.height) == size and size[0] % 2 == 0 and size[1] % 2 == 0
    assert facts.frames == frames
    assert facts.duration == pytest.approx(frames / fps, abs=0.5 / fps)
    boxes = top_level_boxes(path)
    assert boxes.index("moov") < boxes.index("mdat"), boxes  # +faststart


@pytest.mark.parametrize("aspect", list(SIZES))
def test_each_aspect_is_a_browser_ready_mp4(tmp_path: Path, aspect: str) -> None:
    out = tmp_path / "clip.mp4"
    result = render_motion(SAMPLE, out, motion="ken-burns", duration=1.0, aspect=aspect, height=180)
    assert (result.width, result.height, result.frames, result.fps) == (*SIZES[aspect], 24, 24)
    assert result.duration == pytest.approx(1.0) and result.path == out
    _assert_playable(out, SIZES[aspect], 24)
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]  # no partial file left beside it


def test_720p_is_1280_by_720(tmp_path: Path) -> None:
    out = tmp_path / "hd.mp4"
    result = render_motion(SAMPLE, out, motion="zoom-in", duration=0.5, aspect="16:9", fps=30)
    assert (result.width, result.height, result.frames) == (1280, 720, 15)
    _assert_playable(out, (1280, 720), 15, fps=30)


def test_frame_sizes() -> None:
    assert frame_size("16:9", 720) == (1280, 720)
    assert frame_size("9:16", 720) == (720, 1280)
    assert frame_size("1:1", 720) == (720, 720)
    assert frame_size("4:5", 720) == (720, 900)
    assert frame_size("16:9", 181) == (322, 182)
    with pytest.raises(InvalidInput):
        frame_size("3:2", 720)


@pytest.mark.parametrize("motion", ["zoom-in", "zoom-out", "pan-left", "pan-right", "pan-up", "pan-down", "ken-burns"])
@pytest.mark.parametrize("src", [(960, 640), (640, 960), (500, 500)])
def test_camera_windows_stay_inside_the_source_and_keep_the_aspect(motion: str, src: tuple[int, int]) -> None:
    for ratio in (16 / 9, 9 / 16, 1.0, 0.8):
        for focal in ((0.5, 0.5), (0.0, 1.0), (0.9, 0.1)):
            for x0, y0, x1, y1 in camera_path(motion, 24, src, ratio, focal):
                assert -1e-6 <= x0 < x1 <= src[0] + 1e-6 and -1e-6 <= y0 < y1 <= src[1] + 1e-6
                assert (x1 - x0) / (y1 - y0) == pytest.approx(ratio)


def test_zoom_in_grows_the_centre_and_zoom_out_shrinks_it(tmp_path: Path) -> None:
    src = centred_square(tmp_path / "square.png")
    widths = {}
    for motion in ("zoom-in", "zoom-out"):
        out = tmp_path / f"{motion}.mp4"
        render_motion(src, out, motion=motion, duration=1.0, aspect="16:9", height=180)
        widths[motion] = [bright_width(f) for f in luma_frames(out)]
    grow = widths["zoom-in"]
    assert grow[-1] > grow[0] * 1.2
    assert all(b >= a - 1 for a, b in itertools.pairwise(grow))  # steady, no jumps back
    assert widths["zoom-out"][0] == pytest.approx(grow[-1], abs=2)
    assert widths["zoom-out"][-1] == pytest.approx(grow[0], abs=2)


@pytest.mark.parametrize(
    ("motion", "sign"),
    [("pan-left", (1, 0)), ("pan-right", (-1, 0)), ("pan-up", (0, 1)), ("pan-down", (0, -1))],
)
def test_pans_move_the_camera_that_way(tmp_path: Path, motion: str, sign: tuple[int, int]) -> None:
    """Panning left moves the camera left, so the picture's content slides right."""
    src = texture(tmp_path / "texture.jpg")
    out = tmp_path / "pan.mp4"
    render_motion(src, out, motion=motion, duration=1.0, aspect="1:1", height=180)
    frames = luma_frames(out)
    steps = [phase_shift(a, b) for a, b in zip(frames[:-6:6], frames[6::6], strict=False)]
    for dx, dy in steps:
        assert np.sign(dx) in (sign[0], 0) and np.sign(dy) in (sign[1], 0)
    total = phase_shift(frames[0], frames[12]), phase_shift(frames[12], frames[-1])
    moved = sum(abs(d[0]) + abs(d[1]) for d in total)
    assert moved > 15
    assert (np.sign(total[0][0]), np.sign(total[0][1])) == sign


def test_same_inputs_give_the_same_pictures(tmp_path: Path) -> None:
    """The frames are a pure function of the inputs. (The bytes are not: libx264's frame threads
    may make different rate decisions from one run to the next, within its quality target.)"""
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    for out in (a, b):
        render_motion(SAMPLE, out, motion="ken-burns", duration=1.0, aspect="9:16", height=180, focal=(0.3, 0.6))
    fa, fb = luma_frames(a), luma_frames(b)
    assert len(fa) == len(fb) == 24
    for x, y in zip(fa, fb, strict=True):
        assert float(np.abs(x.astype(np.int16) - y.astype(np.int16)).mean()) < 1.0


def test_reverse_plays_the_move_backwards(tmp_path: Path) -> None:
    fwd, back = tmp_path / "f.mp4", tmp_path / "b.mp4"
    render_motion(SAMPLE, fwd, motion="zoom-in", duration=1.0, aspect="16:9", height=180)
    render_motion(SAMPLE, back, motion="zoom-in", duration=1.0, aspect="16:9", height=180, reverse=True)
    f, b = luma_frames(fwd), luma_frames(back)
    diffs = [float(np.abs(x - y).mean()) for x, y in zip(f, reversed(b), strict=True)]
    assert max(diffs) < 4.0  # the same pictures, encoded at different places in the GOP
    assert float(np.abs(f[0] - b[0]).mean()) > 3 * max(diffs)


def test_merged_loop_starts_and_ends_on_the_same_picture(tmp_path: Path) -> None:
    fwd, back, loop = tmp_path / "f.mp4", tmp_path / "b.mp4", tmp_path / "loop.mp4"
    render_motion(SAMPLE, fwd, motion="pan-right", duration=1.0, aspect="4:5", height=180)
    render_motion(SAMPLE, back, motion="pan-right", duration=1.0, aspect="4:5", height=180, reverse=True)
    result = merge_loop(fwd, back, loop)
    assert result.frames == 47 and result.duration == pytest.approx(47 / 24)
    _assert_playable(loop, SIZES["4:5"], 47)
    frames = rgb_frames(loop)
    assert np.abs(frames[0] - frames[-1]).mean() < 2.0  # in fact identical: the same IDR packet
    assert np.abs(frames[0] - frames[23]).mean() > 4.0  # the middle really is elsewhere


def test_merge_refuses_halves_that_do_not_meet(tmp_path: Path) -> None:
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    render_motion(SAMPLE, a, motion="zoom-in", duration=0.5, aspect="1:1", height=180)
    render_motion(SAMPLE, b, motion="pan-left", duration=0.5, aspect="1:1", height=180)
    with pytest.raises(UnsupportedMedia):
        merge_loop(a, b, tmp_path / "loop.mp4")
    render_motion(SAMPLE, b, motion="zoom-in", duration=0.5, aspect="16:9", height=180, reverse=True)
    with pytest.raises(UnsupportedMedia):
        merge_loop(a, b, tmp_path / "loop.mp4")
    assert not (tmp_path / "loop.mp4").exists()


def test_progress_is_reported_and_stop_leaves_nothing(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    render_motion(
        SAMPLE, tmp_path / "ok.mp4", motion="pan-up", duration=1.0, aspect="1:1", height=180,
        progress=lambda done, total: seen.append((done, total)),
    )  # fmt: skip
    assert seen[-1] == (24, 24) and len(seen) >= 4
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    calls = iter(range(100))
    out = tmp_path / "stopped.mp4"
    with pytest.raises(InterruptedError):
        render_motion(
            SAMPLE, out, motion="zoom-in", duration=1.0, aspect="1:1", height=180, should_stop=lambda: next(calls) >= 5
        )
    assert list(tmp_path.iterdir()) == [tmp_path / "ok.mp4"]


def test_bad_arguments_are_invalid_input(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        render_motion(SAMPLE, tmp_path / "x.mp4", motion="spin", duration=1.0, aspect="16:9", height=180)
    with pytest.raises(InvalidInput):
        render_motion(SAMPLE, tmp_path / "x.mp4", motion="zoom-in", duration=0.0, aspect="16:9", height=180)
    with pytest.raises(InvalidInput):
        render_video([], tmp_path / "x.mp4", subject="nothing")


def test_an_unsafe_source_is_refused_by_the_renderer_too(tmp_path: Path) -> None:
    svg = tmp_path / "x.svg"
    svg.write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    with pytest.raises(UnsupportedMedia):
        render_motion(svg, tmp_path / "x.mp4", motion="zoom-in", duration=1.0, aspect="16:9", height=180)


def test_video_has_one_scene_per_paragraph_and_the_audio(tmp_path: Path) -> None:
    paragraphs = template_script("tide pools", 3, seed=2)
    out = tmp_path / "video.mp4"
    wav = sine_wav(tmp_path / "voice.wav", seconds=5.0)
    result = render_video(paragraphs, out, subject="tide pools", height=180, seconds_per_scene=1.0, audio=wav)
    assert (result.width, result.height, result.frames) == (180, 320, 72)
    _assert_playable(out, (180, 320), 72)
    assert probe(out).audio == "aac"
    with av.open(str(out)) as box:
        sound = box.streams.audio[0]
        assert sound.duration is not None and sound.time_base is not None
        assert float(sound.duration * sound.time_base) == pytest.approx(3.0, abs=0.1)  # trimmed to the video
    frames = rgb_frames(out)
    assert np.abs(frames[10] - frames[60]).mean() > 10  # scenes differ
    silent = tmp_path / "silent.mp4"
    render_video(paragraphs, silent, subject="tide pools", height=180, seconds_per_scene=1.0, aspect="1:1")
    assert probe(silent).audio is None and probe(silent).width == 180


@pytest.mark.parametrize(
    "content",
    ["not a wav", "#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n"],
    ids=["text", "playlist"],
)
def test_video_refuses_audio_that_is_not_a_wav(tmp_path: Path, content: str) -> None:
    bogus = tmp_path / "voice.wav"
    bogus.write_text(content)
    with pytest.raises(UnsupportedMedia):
        render_video(["hello"], tmp_path / "v.mp4", subject="x", height=180, seconds_per_scene=0.5, audio=bogus)
    assert not (tmp_path / "v.mp4").exists()


def test_video_accepts_stereo_audio_at_an_odd_rate(tmp_path: Path) -> None:
    wav = sine_wav(tmp_path / "voice.wav", seconds=0.5, rate=37000, channels=2)
    out = tmp_path / "v.mp4"
    render_video(["hello"], out, subject="x", height=180, seconds_per_scene=1.0, audio=wav)
    with av.open(str(out)) as box:
        assert box.streams.audio[0].rate == 48000 and box.streams.audio[0].channels == 2


def test_template_script_is_deterministic_and_generic() -> None:
    script = template_script("sourdough baking", 5, seed=7)
    assert len(script) == 5 and all("sourdough baking" in p.lower() for p in script)
    assert script == template_script("sourdough baking", 5, seed=7)
    assert script != template_script("sourdough baking", 5, seed=8)
    assert len(template_script("x", 30)) == 30 and template_script("x", 0) == []
