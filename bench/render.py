"""Render speed: a 5 s 720p zoom-in from the sample photo, against ffmpeg's zoompan in the same process.

Both sides encode the same number of 1280x720 frames at the same rate with the same libx264
settings (genloom.media.renderer.X264, same GOP) into a +faststart MP4; only the picture source
differs: ours is the sub-pixel crop-and-resize renderer, the baseline is a plain ``zoompan``
filter graph run through PyAV. Prints frames/s, render-time / video-duration, and ours / baseline.

    .venv/bin/python bench/render.py [--runs 3] [--seconds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from genloom.media.renderer import X264, ZOOM, render_motion

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "genloom" / "assets" / "sample.jpg"
WIDTH, HEIGHT, FPS = 1280, 720, 24


def ours(out: Path, seconds: float) -> float:
    start = time.perf_counter()
    render_motion(SAMPLE, out, motion="zoom-in", duration=seconds, aspect="16:9", fps=FPS, height=HEIGHT)
    return time.perf_counter() - start


def baseline(out: Path, seconds: float) -> float:
    """ffmpeg's zoompan: one still in, ``n`` zoomed frames out, encoded like ours."""
    start = time.perf_counter()
    n = round(seconds * FPS)
    image = Image.open(SAMPLE).convert("RGB")
    step = (ZOOM - 1.0) / max(1, n - 1)
    graph = av.filter.Graph()
    source = graph.add_buffer(width=image.width, height=image.height, format="rgb24", time_base=Fraction(1, FPS))
    zoompan = graph.add(
        "zoompan",
        f"z='min(zoom+{step:.6f},{ZOOM})':x='iw/2-(iw/zoom/2)':y='ih/2-(ih/zoom/2)':d={n}:s={WIDTH}x{HEIGHT}:fps={FPS}",
    )
    fmt, sink = graph.add("format", "yuv420p"), graph.add("buffersink")
    graph.link_nodes(source, zoompan, fmt, sink).configure()
    still = av.VideoFrame.from_ndarray(np.asarray(image), format="rgb24")
    still.pts, still.time_base = 0, Fraction(1, FPS)
    graph.vpush(still)
    graph.vpush(None)
    with av.open(str(out), "w", format="mp4", options={"movflags": "+faststart"}) as box:
        stream = box.add_stream("libx264", rate=FPS, options=dict(X264))
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.gop_size = 2 * FPS
        count = 0
        while True:
            try:
                frame = graph.vpull()
            except (av.BlockingIOError, av.EOFError):
                break
            frame.pts, frame.time_base = count, Fraction(1, FPS)
            box.mux(stream.encode(frame))
            count += 1
        box.mux(stream.encode(None))
    assert count == n, (count, n)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    frames = round(args.seconds * FPS)
    with tempfile.TemporaryDirectory() as tmp:
        ours(Path(tmp) / "warm.mp4", 0.5)  # imports, codec start-up
        mine = statistics.median(ours(Path(tmp) / "ours.mp4", args.seconds) for _ in range(args.runs))
        base = statistics.median(baseline(Path(tmp) / "base.mp4", args.seconds) for _ in range(args.runs))
        sizes = (os.path.getsize(Path(tmp) / "ours.mp4"), os.path.getsize(Path(tmp) / "base.mp4"))
    print(f"clip: {args.seconds:g} s, {WIDTH}x{HEIGHT} @ {FPS} fps = {frames} frames, zoom-in x{ZOOM}, {X264}")
    print(f"cpus: {os.cpu_count()}, median of {args.runs} runs")
    for name, spent, size in (("genloom", mine, sizes[0]), ("zoompan", base, sizes[1])):
        print(
            f"{name:8} {spent:6.2f} s  {frames / spent:6.1f} frames/s  "
            f"render/video {spent / args.seconds:5.2f}  ({size // 1024} KiB)"
        )
    print(f"ours/baseline (time): {mine / base:.2f}")


if __name__ == "__main__":
    main()
