"""Test helpers for media: synthetic images, MP4 box scanning, decoding and image registration."""

from __future__ import annotations

import math
import struct
import wave
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageFilter


@dataclass(frozen=True)
class Probe:
    codec: str
    width: int
    height: int
    pix_fmt: str
    frames: int
    duration: float
    audio: str | None


def top_level_boxes(path: Path) -> list[str]:
    """The types of an MP4's top-level boxes, in file order."""
    data, pos, kinds = path.read_bytes(), 0, []
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if size == 1:
            size = struct.unpack(">Q", data[pos + 8 : pos + 16])[0]
        elif size == 0:
            size = len(data) - pos
        kinds.append(kind.decode("latin-1"))
        pos += size
    return kinds


def probe(path: Path) -> Probe:
    with av.open(str(path)) as box:
        video = box.streams.video[0]
        frames = sum(1 for _ in box.decode(video))
        audio = box.streams.audio[0].codec_context.name if box.streams.audio else None
        duration = float(video.duration * video.time_base) if video.duration and video.time_base else 0.0
        return Probe(video.codec_context.name, video.width, video.height, video.format.name, frames, duration, audio)


def luma_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as box:
        return [f.to_ndarray(format="gray").astype(np.float32) for f in box.decode(video=0)]


def rgb_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as box:
        return [f.to_ndarray(format="rgb24").astype(np.float32) for f in box.decode(video=0)]


def phase_shift(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(dx, dy) such that ``b`` is ``a`` moved by that many pixels (phase correlation)."""
    window = np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1]))
    fa, fb = np.fft.fft2((a - a.mean()) * window), np.fft.fft2((b - b.mean()) * window)
    cross = fb * np.conj(fa)
    corr = np.fft.ifft2(cross / (np.abs(cross) + 1e-9)).real
    dy, dx = np.unravel_index(int(np.argmax(corr)), corr.shape)
    h, w = corr.shape
    return float(dx - w if dx > w // 2 else dx), float(dy - h if dy > h // 2 else dy)


def texture(path: Path, size: tuple[int, int] = (960, 640), seed: int = 1) -> Path:
    """A distinctive, blurred random texture: good for measuring shifts."""
    rng = np.random.default_rng(seed)
    noise = (rng.random((size[1] // 8, size[0] // 8, 3)) * 255).astype(np.uint8)
    Image.fromarray(noise).resize(size, Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(2)).save(
        path, quality=95
    )
    return path


def centred_square(path: Path, size: tuple[int, int] = (960, 540), side: int = 120) -> Path:
    """A white square centred on black: its apparent size measures the zoom."""
    image = Image.new("RGB", size, (0, 0, 0))
    x, y = (size[0] - side) // 2, (size[1] - side) // 2
    image.paste((255, 255, 255), (x, y, x + side, y + side))
    image.save(path)
    return path


def bright_width(frame: np.ndarray) -> int:
    """The number of columns in the frame's middle row band that are mostly bright."""
    band = frame[frame.shape[0] // 2 - 2 : frame.shape[0] // 2 + 2]
    return int((band.mean(axis=0) > 128).sum())


def sine_wav(path: Path, seconds: float, rate: int = 22050, channels: int = 1) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        samples = (int(8000 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(int(seconds * rate)))
        out.writeframes(b"".join(struct.pack("<h", s) * channels for s in samples))
    return path
