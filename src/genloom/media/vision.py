"""The local vision stage: validate an untrusted image, then find its focal point and a camera move.

Validation happens before any pixel is decoded: the file's size, its magic bytes (JPEG, PNG or
WebP only), its whole container structure (a truncated file, data after the image's end or markup
hidden in a metadata segment are refused) and the dimensions declared in its header. Errors:
a missing file or one that ends early is ``BrokenUrl``; too many bytes or pixels is ``Oversize``;
anything else that is not a clean JPEG/PNG/WebP is ``UnsupportedMedia``.
"""

from __future__ import annotations

import math
import mmap
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, get_args

import numpy as np
from PIL import Image, ImageOps

from genloom.errors import BrokenUrl, GenloomError, Oversize, UnsupportedMedia

Motion = Literal["zoom-in", "zoom-out", "pan-left", "pan-right", "pan-up", "pan-down", "ken-burns"]
MOTIONS: Final[tuple[Motion, ...]] = get_args(Motion)
ImageFormat = Literal["JPEG", "PNG", "WEBP"]

MAX_PIXELS: Final = 40_000_000
MAX_BYTES: Final = 50 * 1024 * 1024
_PNG_SIG: Final = b"\x89PNG\r\n\x1a\n"
_MAX_SEGMENTS: Final = 100_000
# Where a polyglot hides its payload: markup in a comment, text or metadata segment.
_MARKUP = re.compile(rb"<(?:script|html|svg|iframe|body|object|embed|!doctype|\?php)[\s>/]|javascript:", re.I)
# In JPEG entropy-coded data 0xFF is followed by 0x00 (stuffing) or RST0-7; anything else is a marker.
_JPEG_MARKER = re.compile(rb"\xff+[^\x00\xd0-\xd7\xff]")
_JPEG_SOF: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


@dataclass(frozen=True)
class VisionResult:
    width: int
    height: int
    format: ImageFormat
    focal_x: float
    focal_y: float
    motion: Motion
    prompt: str


class _Truncated(Exception):
    pass


def _corrupt(why: str) -> UnsupportedMedia:
    return UnsupportedMedia(f"The image is damaged or not a plain image: {why}.")


def _check_markup(segment: bytes) -> None:
    if _MARKUP.search(segment):
        raise UnsupportedMedia("The image carries markup or script in its metadata (a polyglot file).")


def _need(buf: mmap.mmap, end: int) -> None:
    if end > len(buf):
        raise _Truncated


def _scan_jpeg(buf: mmap.mmap, pos: int) -> tuple[int, int, int]:
    """Walk one JPEG from its SOI at ``pos``; return (width, height, offset after EOI)."""
    size: tuple[int, int] | None = None
    pos += 2
    for _ in range(_MAX_SEGMENTS):
        _need(buf, pos + 2)
        if buf[pos] != 0xFF:
            raise _corrupt("bad JPEG marker")
        while buf[pos + 1] == 0xFF:  # fill bytes before a marker
            pos += 1
            _need(buf, pos + 2)
        marker = buf[pos + 1]
        if marker == 0xD9:
            if size is None:
                raise _corrupt("JPEG without a frame header")
            return size[0], size[1], pos + 2
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
            continue
        _need(buf, pos + 4)
        length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
        if length < 2:
            raise _corrupt("bad JPEG segment length")
        _need(buf, pos + 2 + length)
        if marker in _JPEG_SOF:
            if length < 8 or size is not None:
                raise _corrupt("bad or repeated JPEG frame header")
            h = int.from_bytes(buf[pos + 5 : pos + 7], "big")
            w = int.from_bytes(buf[pos + 7 : pos + 9], "big")
            size = (w, h)
        elif 0xE0 <= marker <= 0xEF or marker == 0xFE:  # APPn, COM
            _check_markup(buf[pos + 4 : pos + 2 + length])
        pos += 2 + length
        if marker == 0xDA:  # start of scan: skip the entropy-coded data to the next marker
            found = _JPEG_MARKER.search(buf, pos)
            if found is None:
                raise _Truncated
            pos = found.start()
    raise _corrupt("too many JPEG segments")


def _scan_png(buf: mmap.mmap) -> tuple[int, int, int]:
    pos, size = 8, None
    for _ in range(_MAX_SEGMENTS):
        _need(buf, pos + 8)
        length = int.from_bytes(buf[pos : pos + 4], "big")
        kind = buf[pos + 4 : pos + 8]
        if not kind.isalpha() or length > 0x7FFFFFFF:
            raise _corrupt("bad PNG chunk")
        _need(buf, pos + 12 + length)
        if size is None:
            if kind != b"IHDR" or length != 13:
                raise _corrupt("PNG without a header chunk")
            size = int.from_bytes(buf[pos + 8 : pos + 12], "big"), int.from_bytes(buf[pos + 12 : pos + 16], "big")
        elif kind not in (b"IDAT", b"fdAT"):
            _check_markup(buf[pos + 8 : pos + 8 + length])
        pos += 12 + length
        if kind == b"IEND":
            return size[0], size[1], pos
    raise _corrupt("too many PNG chunks")


def _scan_webp(buf: mmap.mmap) -> tuple[int, int, int]:
    _need(buf, 12)
    end = 8 + int.from_bytes(buf[4:8], "little")
    _need(buf, end)
    pos, size = 12, None
    while pos + 8 <= end:
        kind, length = buf[pos : pos + 4], int.from_bytes(buf[pos + 4 : pos + 8], "little")
        if pos + 8 + length > end:
            raise _corrupt("a WebP chunk overruns the file")
        if size is None:
            size = _webp_size(kind, buf[pos + 8 : pos + 8 + min(length, 10)])
        elif kind not in (b"ALPH", b"ANMF", b"VP8 ", b"VP8L"):
            _check_markup(buf[pos + 8 : pos + 8 + length])
        pos += 8 + length + (length & 1)
    if size is None or pos < end:
        raise _corrupt("bad WebP chunk layout")
    return size[0], size[1], end


def _webp_size(kind: bytes, d: bytes) -> tuple[int, int]:
    if kind == b"VP8 " and len(d) >= 10 and d[3:6] == b"\x9d\x01\x2a":
        return int.from_bytes(d[6:8], "little") & 0x3FFF, int.from_bytes(d[8:10], "little") & 0x3FFF
    if kind == b"VP8L" and len(d) >= 5 and d[0] == 0x2F:
        bits = int.from_bytes(d[1:5], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8X" and len(d) >= 10:
        return int.from_bytes(d[4:7], "little") + 1, int.from_bytes(d[7:10], "little") + 1
    raise _corrupt("WebP without an image header")


def _scan(buf: mmap.mmap) -> tuple[ImageFormat, int, int]:
    """Identify by magic bytes and walk the container; only padding may follow the image."""
    fmt: ImageFormat
    if buf[:3] == b"\xff\xd8\xff":
        fmt, (w, h, end) = "JPEG", _scan_jpeg(buf, 0)
        while buf[end : end + 3] == b"\xff\xd8\xff":  # MPF: further pictures follow the first
            end = _scan_jpeg(buf, end)[2]
    elif buf[:8] == _PNG_SIG:
        fmt, (w, h, end) = "PNG", _scan_png(buf)
    elif buf[:4] == b"RIFF" and buf[8:12] == b"WEBP":
        fmt, (w, h, end) = "WEBP", _scan_webp(buf)
    else:
        raise UnsupportedMedia("Only JPEG, PNG and WebP images are supported.")
    if buf[end:].strip(b"\x00"):
        raise UnsupportedMedia("The image has data after its end (a polyglot file).")
    if w < 1 or h < 1:
        raise _corrupt("empty dimensions")
    return fmt, w, h


def probe(path: Path, *, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES) -> tuple[ImageFormat, int, int]:
    """Validate ``path`` without decoding pixels; return (format, stored width, stored height)."""
    try:
        stat = path.stat()
    except OSError as exc:
        raise BrokenUrl("The source image could not be read.") from exc
    if not path.is_file():
        raise UnsupportedMedia("The source is not a regular file.")
    if stat.st_size > max_bytes:
        raise Oversize(f"The image is larger than {max_bytes} bytes.", size=stat.st_size, limit=max_bytes)
    if stat.st_size == 0:
        raise UnsupportedMedia("The image file is empty.")
    try:
        with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            fmt, w, h = _scan(buf)
    except _Truncated:
        raise BrokenUrl("The image ends early: the download was cut short or the file is damaged.") from None
    except OSError as exc:
        raise BrokenUrl("The source image could not be read.") from exc
    if w * h > max_pixels:
        raise Oversize(f"The image has {w}x{h} pixels; the limit is {max_pixels}.", limit=max_pixels)
    return fmt, w, h


def _pillow_limit(max_pixels: int) -> int:
    """Never ask Pillow for more than its own bomb limit, so its warning and error cannot fire."""
    ceiling = Image.MAX_IMAGE_PIXELS
    return max_pixels if ceiling is None else min(max_pixels, int(ceiling))


def _decode(
    path: Path, max_pixels: int, max_bytes: int, cover: tuple[int, int] | None
) -> tuple[Image.Image, ImageFormat, tuple[int, int]]:
    """Validated, upright RGB image (maybe draft-reduced), its format and its full upright size."""
    fmt, w, h = probe(path, max_pixels=_pillow_limit(max_pixels), max_bytes=max_bytes)
    try:
        with Image.open(path, formats=[fmt]) as im:
            if im.size != (w, h):
                raise _corrupt("the header disagrees with the decoder")
            turned = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)
            if cover is not None and fmt == "JPEG":
                cw, ch = cover[::-1] if turned else cover
                k = min(1.0, max(cw / w, ch / h))
                im.draft("RGB", (math.ceil(w * k), math.ceil(h * k)))
            im.load()
            upright = ImageOps.exif_transpose(im)
            if upright.mode.startswith("I"):  # 16-bit greyscale PNG
                wide = np.asarray(upright, dtype=np.float32) / 257.0
                upright = Image.fromarray(np.clip(wide, 0, 255).astype(np.uint8))
            if upright.mode in ("RGBA", "LA", "PA") or "transparency" in upright.info:
                rgba = upright.convert("RGBA")
                upright = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            rgb = upright.convert("RGB")
    except GenloomError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Oversize("The image declares too many pixels.") from exc
    except Exception as exc:  # Pillow's plugins raise many types on hostile input
        if "truncated" in str(exc):
            raise BrokenUrl("The image ends early: the download was cut short or the file is damaged.") from exc
        raise _corrupt(type(exc).__name__) from exc
    return rgb, fmt, ((h, w) if turned else (w, h))


def load_image(
    path: Path,
    *,
    max_pixels: int = MAX_PIXELS,
    max_bytes: int = MAX_BYTES,
    cover: tuple[int, int] | None = None,
) -> Image.Image:
    """Validate, then decode to upright RGB (alpha over white). With ``cover`` (w, h), a JPEG may be
    decoded at a reduced scale whose cover crop still has at least (w, h) pixels.

    The pixel limit is also capped at Pillow's ``Image.MAX_IMAGE_PIXELS`` (never changed here)."""
    return _decode(path, max_pixels, max_bytes, cover)[0]


def focal_point(image: Image.Image) -> tuple[float, float, float]:
    """Edge-energy centroid of a small grey copy: (x, y) in 0..1 and the energy's spread (0..~0.4)."""
    small = image.convert("L")
    small.thumbnail((256, 256), Image.Resampling.BOX)
    grey = np.asarray(small, dtype=np.float32) / 255.0
    if grey.shape[0] < 3 or grey.shape[1] < 3:
        return 0.5, 0.5, 0.0
    gx = np.abs(np.diff(grey, axis=1))[:-1, :]
    gy = np.abs(np.diff(grey, axis=0))[:, :-1]
    energy = (gx * gx + gy * gy)[1:-1, 1:-1]  # drop the frame's own border
    total = float(energy.sum())
    if total < 1e-6:
        return 0.5, 0.5, 0.0
    rows, cols = energy.shape
    xs = (np.arange(cols, dtype=np.float32) + 2.0) / grey.shape[1]
    ys = (np.arange(rows, dtype=np.float32) + 2.0) / grey.shape[0]
    px, py = energy.sum(axis=0) / total, energy.sum(axis=1) / total
    fx, fy = float(px @ xs), float(py @ ys)
    spread = math.sqrt(float(px @ (xs - fx) ** 2) + float(py @ (ys - fy) ** 2))
    return min(max(fx, 0.0), 1.0), min(max(fy, 0.0), 1.0), spread


def suggest_motion(width: int, height: int, fx: float, fy: float, spread: float) -> Motion:
    """A deterministic camera move from the focal point, the energy's spread and the aspect."""
    dx, dy, aspect = fx - 0.5, fy - 0.5, width / height
    if abs(dx) < 0.08 and abs(dy) < 0.08:
        return "zoom-out" if spread > 0.3 else "zoom-in"
    if aspect >= 1.4 and abs(dx) >= abs(dy):
        return "pan-right" if dx > 0 else "pan-left"
    if aspect <= 0.8 and abs(dy) > abs(dx):
        return "pan-down" if dy > 0 else "pan-up"
    return "ken-burns"


def _describe(w: int, h: int, image: Image.Image, fmt: str, fx: float, fy: float, motion: Motion) -> str:
    shape = "landscape" if w > h * 1.05 else "portrait" if h > w * 1.05 else "square"
    r, g, b = (float(c) for c in np.asarray(image.resize((16, 16)), dtype=np.float32).mean(axis=(0, 1)))
    light = "bright" if (r + g + b) / 3 > 150 else "dark" if (r + g + b) / 3 < 80 else "mid-toned"
    tone = "warm" if r > b + 12 else "cool" if b > r + 12 else "neutral"
    vert = "upper" if fy < 0.4 else "lower" if fy > 0.6 else "middle"
    horiz = "left" if fx < 0.4 else "right" if fx > 0.6 else "centre"
    where = "centre" if (vert, horiz) == ("middle", "centre") else f"{vert} {horiz}".replace("middle ", "")
    return f"A {light}, {tone} {shape} {fmt} photo ({w}x{h}); the main detail is at the {where}; {motion}."


def analyze(path: Path, *, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES) -> VisionResult:
    """Validate ``path`` and describe it: size, format, focal point, suggested motion, prompt."""
    image, fmt, (w, h) = _decode(path, max_pixels, max_bytes, cover=(512, 512))
    fx, fy, spread = focal_point(image)
    motion = suggest_motion(w, h, fx, fy, spread)
    return VisionResult(w, h, fmt, round(fx, 4), round(fy, 4), motion, _describe(w, h, image, fmt, fx, fy, motion))
