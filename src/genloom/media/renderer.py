"""The PyAV renderer: camera moves over a still, seamless loops and captioned scene videos.

Everything is encoded in process with libx264 (H.264 High, yuv420p, BT.709 limited range, even
dimensions) into MP4 with ``+faststart``; no ffmpeg binary, no subprocess. ``height`` is the short
side, as in "720p": 16:9 at 720 is 1280x720, 9:16 is 720x1280, 1:1 is 720x720, 4:5 is 720x900.

The still is converted to Y, U and V planes once; each frame is then a sub-pixel, antialiased
crop-and-resize of those planes (Pillow ``resize(box=...)``), built on a small thread pool ahead
of the encoder. Output is deterministic for the same inputs. Functions are sync, CPU-bound and
picklable; ``should_stop()`` returning True raises the builtin ``InterruptedError`` and leaves no
partial file. Files appear at ``out`` only when complete (written beside it, then renamed).
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Final, Literal, get_args

import av
import numpy as np
from av.video.reformatter import ColorPrimaries, ColorRange, Colorspace, ColorTrc
from PIL import Image

from genloom.errors import BrokenUrl, InvalidInput, UnsupportedMedia
from genloom.media.text import scene_frames
from genloom.media.vision import MOTIONS, load_image

Aspect = Literal["16:9", "9:16", "1:1", "4:5"]
ASPECTS: Final[tuple[Aspect, ...]] = get_args(Aspect)
Progress = Callable[[int, int], None]
ShouldStop = Callable[[], bool]

ZOOM: Final = 1.3  # how far zoom-in, zoom-out and ken-burns travel
PAN_ZOOM: Final = 1.2  # pans run on a slightly zoomed window so there is room to move
X264: Final = {"preset": "veryfast", "crf": "20"}
_BILINEAR: Final = Image.Resampling.BILINEAR
_LOOKAHEAD: Final = 4
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class RenderResult:
    path: Path
    width: int
    height: int
    frames: int
    duration: float
    fps: int


def frame_size(aspect: str, height: int) -> tuple[int, int]:
    """Output (width, height) for an aspect whose short side is ``height``, both rounded to even."""
    if aspect not in ASPECTS:
        raise InvalidInput(f"Unknown aspect {aspect!r}; use one of {', '.join(ASPECTS)}.")
    if height < 16:
        raise InvalidInput("The output must be at least 16 pixels on its short side.")
    a, b = (int(x) for x in aspect.split(":"))
    w, h = (height * a / b, height) if a >= b else (height, height * b / a)
    return max(2, int(w / 2 + 0.5) * 2), max(2, int(h / 2 + 0.5) * 2)


def _ease(t: float) -> float:
    return 0.5 - 0.5 * math.cos(math.pi * t)


def _place(centre: float, size: float, extent: float) -> float:
    """Clamp a window's centre so the window stays inside [0, extent]."""
    return min(max(centre, size / 2), extent - size / 2)


def camera_path(motion: str, n: int, src: tuple[int, int], ratio: float, focal: tuple[float, float]) -> list[Box]:
    """The crop box of each of ``n`` frames, in source pixels, for an output of aspect ``ratio``."""
    if motion not in MOTIONS:
        raise InvalidInput(f"Unknown motion {motion!r}; use one of {', '.join(MOTIONS)}.")
    sw, sh = src
    cw = min(sw, sh * ratio)
    ch = cw / ratio
    fx, fy = min(max(focal[0], 0.0), 1.0) * sw, min(max(focal[1], 0.0), 1.0) * sh
    ccx, ccy = _place(fx, cw, sw), _place(fy, ch, sh)  # the cover crop, centred on the focal point
    boxes: list[Box] = []
    for i in range(n):
        e = _ease(i / (n - 1)) if n > 1 else 0.0
        if motion in ("zoom-in", "zoom-out", "ken-burns"):
            s = ZOOM ** -(1.0 - e if motion == "zoom-out" else e)  # the window's share of the cover
            ww, wh = cw * s, ch * s
            if motion == "ken-burns":  # zoom while drifting to centre the focal point
                cx = ccx + (_place(fx, cw / ZOOM, sw) - ccx) * e
                cy = ccy + (_place(fy, ch / ZOOM, sh) - ccy) * e
            else:  # zoom about the focal point: it keeps its place on screen
                cx, cy = fx + (ccx - fx) * s, fy + (ccy - fy) * s
            cx, cy = _place(cx, ww, sw), _place(cy, wh, sh)
        else:
            ww, wh = cw / PAN_ZOOM, ch / PAN_ZOOM
            across = motion in ("pan-left", "pan-right")
            extent, win, f = (sw, ww, fx) if across else (sh, wh, fy)
            travel = min(extent - win, win / 2)
            mid = _place(f, win + travel, extent)
            sign = -1.0 if motion in ("pan-left", "pan-up") else 1.0  # the camera moves that way
            c = mid + sign * travel * (e - 0.5)
            other = _place(fy, wh, sh) if across else _place(fx, ww, sw)
            cx, cy = (c, other) if across else (other, c)
        boxes.append((cx - ww / 2, cy - wh / 2, cx + ww / 2, cy + wh / 2))
    return boxes


def _planes(image: Image.Image) -> tuple[Image.Image, Image.Image, Image.Image]:
    """Full-resolution Y and half-resolution U, V planes (BT.709, limited range) of an RGB image."""
    yuv = av.VideoFrame.from_ndarray(np.asarray(image), format="rgb24").reformat(
        format="yuv444p", dst_colorspace=Colorspace.ITU709, dst_color_range=ColorRange.MPEG
    )
    y, u, v = (Image.fromarray(p) for p in np.asarray(yuv.to_ndarray(), dtype=np.uint8))
    return y, u.reduce(2), v.reduce(2)


def _yuv_frame(data: np.ndarray) -> av.VideoFrame:
    frame = av.VideoFrame.from_ndarray(data, format="yuv420p")
    frame.colorspace, frame.color_range = Colorspace.ITU709, ColorRange.MPEG
    return frame


def _crop_frame(planes: tuple[Image.Image, ...], box: Box, size: tuple[int, int]) -> av.VideoFrame:
    w, h = size
    y = planes[0].resize(size, _BILINEAR, box=box)
    half = (box[0] / 2, box[1] / 2, box[2] / 2, box[3] / 2)
    u, v = (p.resize((w // 2, h // 2), _BILINEAR, box=half) for p in planes[1:])
    data = np.frombuffer(y.tobytes() + u.tobytes() + v.tobytes(), np.uint8).reshape(h * 3 // 2, w)
    return _yuv_frame(data)


def _prefetch(make: Callable[[int], av.VideoFrame], n: int) -> Iterator[av.VideoFrame]:
    """``make(0) .. make(n-1)`` in order, computed a few frames ahead on two threads."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="genloom-frames") as pool:
        pending: deque[Future[av.VideoFrame]] = deque()
        try:
            for i in range(n):
                pending.append(pool.submit(make, i))
                if len(pending) > _LOOKAHEAD:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()


_AAC_RATES: Final = frozenset({96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000})


def _encode_audio(box: av.container.OutputContainer, wav: Path, seconds: float) -> list[av.Packet[av.AudioStream]]:
    """Add an AAC stream to ``box`` and return its packets: ``wav`` resampled, trimmed to ``seconds``.
    Rates AAC lacks become 48 kHz; more than two channels are mixed down to stereo."""
    try:
        with av.open(str(wav), format="wav") as src:  # WAV only: no probing, no playlists
            if not src.streams.audio:
                raise UnsupportedMedia("The audio file has no audio stream.")
            ain = src.streams.audio[0]
            rate = ain.rate if ain.rate in _AAC_RATES else 48000
            layout = "mono" if ain.channels == 1 else "stereo"
            resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
            chunks = [f.to_ndarray() for frame in src.decode(ain) for f in resampler.resample(frame)]
            chunks += [f.to_ndarray() for f in resampler.resample(None)]
    except FileNotFoundError as exc:
        raise BrokenUrl("The audio file could not be read.") from exc
    except av.FFmpegError as exc:
        raise UnsupportedMedia("The audio is not a readable WAV file.") from exc
    samples = np.concatenate(chunks, axis=1)[:, : round(seconds * rate)] if chunks else None
    if samples is None or samples.shape[1] == 0:
        raise UnsupportedMedia("The audio file has no samples.")
    stream = box.add_stream("aac", rate=rate, layout=layout)
    stream.codec_context.bit_rate = 128_000
    packets: list[av.Packet[av.AudioStream]] = []
    for start in range(0, samples.shape[1], 1024):
        part = np.ascontiguousarray(samples[:, start : start + 1024])
        frame = av.AudioFrame.from_ndarray(part, format="fltp", layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
        packets += stream.encode(frame)
    return packets + stream.encode(None)


def _encode(
    out: Path,
    size: tuple[int, int],
    fps: int,
    frames: Iterator[av.VideoFrame],
    total: int,
    progress: Progress | None,
    should_stop: ShouldStop | None,
    *,
    audio: Path | None = None,
    close_loop: bool = False,
) -> RenderResult:
    """Encode ``frames`` (yuv420p, BT.709) to ``out``; mux ``audio`` (a WAV) as AAC, trimmed to fit.
    ``close_loop`` appends a copy of the opening IDR packet, so the last frame decodes to exactly
    the first. ``total`` is for progress reports; the result counts the frames actually written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.part")
    step, tick = max(1, fps // 4), Fraction(1, fps)
    try:
        with av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"}) as box:
            stream = box.add_stream("libx264", rate=fps, options=dict(X264))
            stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
            ctx = stream.codec_context
            ctx.gop_size = 2 * fps
            ctx.color_range, ctx.colorspace = ColorRange.MPEG, Colorspace.ITU709
            ctx.color_primaries, ctx.color_trc = ColorPrimaries.BT709, ColorTrc.BT709
            sound = deque(_encode_audio(box, audio, total / fps) if audio is not None else [])
            opening: bytes | None = None
            last_dts = Fraction(-1)

            def put(packets: list[av.Packet[av.VideoStream]]) -> None:
                nonlocal opening, last_dts
                for packet in packets:
                    if opening is None and packet.is_keyframe:
                        opening = bytes(packet)
                    if packet.dts is not None and packet.time_base is not None:
                        last_dts = packet.dts * packet.time_base
                box.mux(packets)

            count = 0
            for i, frame in enumerate(frames):
                if should_stop is not None and should_stop():
                    raise InterruptedError("The render was stopped.")
                frame.pts, frame.time_base = i, tick
                while sound and sound[0].pts is not None and sound[0].time_base is not None:
                    if sound[0].pts * sound[0].time_base > i * tick:
                        break
                    box.mux(sound.popleft())
                put(stream.encode(frame))
                count = i + 1
                if progress is not None and (count % step == 0 or count == total):
                    progress(count, total)
            put(stream.encode(None))
            if close_loop and opening is not None:
                closing = av.Packet(opening)
                closing.stream, closing.time_base, closing.is_keyframe = stream, tick, True
                closing.pts, closing.dts, closing.duration = count, int(last_dts / tick) + 1, 1
                box.mux(closing)
                count += 1
            box.mux(list(sound))
        os.replace(tmp, out)
    finally:
        close = getattr(frames, "close", None)
        if close is not None:
            close()  # stop the frame builders at once when encoding ended early
        tmp.unlink(missing_ok=True)
    return RenderResult(out, size[0], size[1], count, count / fps, fps)


def _frame_count(duration: float, fps: int) -> int:
    if fps < 1 or fps > 120 or not math.isfinite(duration):
        raise InvalidInput("fps must be 1..120 and the duration finite.")
    n = round(duration * fps)
    if n < 1 or n > fps * 600:
        raise InvalidInput("The clip must last between one frame and ten minutes.")
    return n


def render_motion(
    src: Path,
    out: Path,
    *,
    motion: str,
    duration: float,
    aspect: str,
    fps: int = 24,
    height: int = 720,
    focal: tuple[float, float] = (0.5, 0.5),
    seed: int = 0,
    reverse: bool = False,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> RenderResult:
    """A ``duration``-second camera move over the still ``src``; ``reverse`` plays the same move
    backwards, ending on the forward clip's first frame. ``seed`` is accepted for a stable job
    signature: the moves have no randomness."""
    del seed
    size = frame_size(aspect, height)
    n = _frame_count(duration, fps)
    ratio = size[0] / size[1]
    image = load_image(src, cover=(math.ceil(size[0] * ZOOM), math.ceil(size[1] * ZOOM)))
    boxes = camera_path(motion, n, image.size, ratio, focal)
    # Keep only what the camera sees, scaled so the tightest window maps about 1:1 onto the output.
    x0 = max(0, math.floor(min(b[0] for b in boxes)) - 2)
    y0 = max(0, math.floor(min(b[1] for b in boxes)) - 2)
    x1 = min(image.width, math.ceil(max(b[2] for b in boxes)) + 2)
    y1 = min(image.height, math.ceil(max(b[3] for b in boxes)) + 2)
    k = min(1.0, size[0] / min(b[2] - b[0] for b in boxes))
    region = image.crop((x0, y0, x1, y1))
    if k < 1.0:
        region = region.resize(
            (max(1, round(region.width * k)), max(1, round(region.height * k))), Image.Resampling.LANCZOS
        )
    kx, ky = region.width / (x1 - x0), region.height / (y1 - y0)
    rw, rh = region.size
    local = [
        (max(0.0, (a - x0) * kx), max(0.0, (b - y0) * ky), min(rw, (c - x0) * kx), min(rh, (d - y0) * ky))
        for a, b, c, d in boxes
    ]
    if reverse:
        local.reverse()
    planes = _planes(region)
    frames = _prefetch(lambda i: _crop_frame(planes, local[i], size), n)
    return _encode(out, size, fps, frames, n, progress, should_stop)


def _decoded(path: Path) -> tuple[av.container.InputContainer, av.VideoStream]:
    try:
        container = av.open(str(path), format="mp4")
    except av.FFmpegError as exc:
        raise UnsupportedMedia("A loop half is not a readable video.") from exc
    if not container.streams.video:
        container.close()
        raise UnsupportedMedia("A loop half has no video stream.")
    return container, container.streams.video[0]


def merge_loop(
    forward: Path,
    back: Path,
    out: Path,
    *,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> RenderResult:
    """Join a forward clip and its ``reverse=True`` twin into one loop whose first and last frames
    are the same picture. The back clip's first frame repeats the forward's last and is dropped;
    its last frame (the forward's first picture) is checked, then replaced by a copy of the
    loop's own opening IDR packet, so both ends decode to identical pixels."""
    fwd_box, fwd = _decoded(forward)
    back_box, bwd = _decoded(back)
    with fwd_box, back_box:
        size, fps = (fwd.width, fwd.height), fwd.average_rate
        if (bwd.width, bwd.height) != size or bwd.average_rate != fps or fps is None or fps.denominator != 1:
            raise UnsupportedMedia("The loop halves differ in size or frame rate.")
        total = fwd.frames + bwd.frames - 1

        def frames() -> Iterator[av.VideoFrame]:
            first: np.ndarray | None = None
            for frame in fwd_box.decode(fwd):
                data = frame.to_ndarray(format="yuv420p")  # a fresh frame: no decoder picture type
                first = data if first is None else first
                yield _yuv_frame(data)
            tail = back_box.decode(bwd)
            next(tail, None)  # the back clip's first frame repeats the forward clip's last
            last: np.ndarray | None = None
            for frame in tail:
                if last is not None:
                    yield _yuv_frame(last)
                last = frame.to_ndarray(format="yuv420p")
            if first is None or last is None:
                raise UnsupportedMedia("A loop half is too short.")
            if np.abs(last[: size[1]].astype(np.int16) - first[: size[1]]).mean() > 8:
                raise UnsupportedMedia("The back clip does not end on the forward clip's first frame.")

        return _encode(out, size, int(fps), frames(), total, progress, should_stop, close_loop=True)


def render_video(
    paragraphs: list[str],
    out: Path,
    *,
    subject: str,
    aspect: str = "9:16",
    fps: int = 24,
    height: int = 720,
    seconds_per_scene: float = 3.0,
    audio: Path | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> RenderResult:
    """One captioned scene per paragraph on a seeded background, cross-faded, with a progress bar;
    ``audio`` (a WAV) is muxed as AAC and trimmed to the video's length."""
    texts = [" ".join(p.split()) for p in paragraphs]
    if not texts or not all(texts):
        raise InvalidInput("A video needs at least one non-empty paragraph.")
    size = frame_size(aspect, height)
    per = _frame_count(seconds_per_scene, fps)
    total = per * len(texts)
    frames = (_yuv_frame(data) for data in scene_frames(texts, subject, size, per, seed, fade=round(0.4 * fps)))
    return _encode(out, size, fps, frames, total, progress, should_stop, audio=audio)
