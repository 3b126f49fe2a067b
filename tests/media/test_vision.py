"""The vision stage: what it refuses before decoding, and where it finds the focal point."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from genloom.errors import BrokenUrl, GenloomError, Oversize, UnsupportedMedia
from genloom.media.vision import MOTIONS, analyze, load_image, suggest_motion

SAMPLE = Path(__file__).parents[2] / "src" / "genloom" / "assets" / "sample.jpg"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, idat: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _encoded(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


@pytest.fixture
def photo() -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray((rng.random((120, 160, 3)) * 255).astype(np.uint8))


def _write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / name
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    return path


def test_the_sample_photo_is_analysed() -> None:
    result = analyze(SAMPLE)
    assert (result.width, result.height, result.format) == (600, 400, "JPEG")
    assert 0 <= result.focal_x <= 1 and 0 <= result.focal_y <= 1
    assert result.motion in MOTIONS
    assert "600x400" in result.prompt and result.motion in result.prompt
    assert analyze(SAMPLE) == result  # deterministic


@pytest.mark.parametrize(
    ("fmt", "params"),
    [("PNG", {}), ("WEBP", {"quality": 80}), ("WEBP", {"lossless": True}), ("JPEG", {"progressive": True})],
)
def test_png_webp_and_progressive_jpeg_are_accepted(
    tmp_path: Path, photo: Image.Image, fmt: str, params: dict[str, object]
) -> None:
    path = _write(tmp_path, "image", _encoded(photo, fmt, **params))
    result = analyze(path)
    assert (result.width, result.height, result.format) == (160, 120, fmt)


def test_transparency_is_flattened_onto_white(tmp_path: Path) -> None:
    clear = Image.new("RGBA", (40, 30), (0, 0, 0, 0))
    path = _write(tmp_path, "clear.png", _encoded(clear, "PNG"))
    assert load_image(path).getpixel((5, 5)) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path: Path, photo: Image.Image) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    path = _write(tmp_path, "turned.jpg", _encoded(photo, "JPEG", exif=exif.tobytes()))
    result = analyze(path)
    assert (result.width, result.height) == (120, 160)
    assert load_image(path).size == (120, 160)


@pytest.mark.parametrize(("cx", "cy"), [(0.2, 0.2), (0.8, 0.2), (0.2, 0.8), (0.8, 0.8)])
def test_focal_point_lands_in_the_quadrant_of_a_bright_detailed_blob(tmp_path: Path, cx: float, cy: float) -> None:
    w, h = 480, 320
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.full((h, w), 40, dtype=np.uint8)
    blob = (xx - cx * w) ** 2 + (yy - cy * h) ** 2 < 50**2
    checks = ((xx // 6 + yy // 6) % 2 == 0) & blob
    image[blob] = 200
    image[checks] = 255
    path = _write(tmp_path, "blob.png", _encoded(Image.fromarray(image).convert("RGB"), "PNG"))
    result = analyze(path)
    assert (result.focal_x < 0.5) == (cx < 0.5) and (result.focal_y < 0.5) == (cy < 0.5)
    assert abs(result.focal_x - cx) < 0.1 and abs(result.focal_y - cy) < 0.1
    assert result.motion != "zoom-in"  # an off-centre subject gets a move toward it


def test_suggested_motion_follows_focal_point_and_aspect() -> None:
    assert suggest_motion(1600, 900, 0.5, 0.52, 0.1) == "zoom-in"
    assert suggest_motion(1600, 900, 0.5, 0.5, 0.38) == "zoom-out"
    assert suggest_motion(1600, 900, 0.8, 0.5, 0.1) == "pan-right"
    assert suggest_motion(1600, 900, 0.2, 0.45, 0.1) == "pan-left"
    assert suggest_motion(900, 1600, 0.5, 0.2, 0.1) == "pan-up"
    assert suggest_motion(900, 1600, 0.45, 0.8, 0.1) == "pan-down"
    assert suggest_motion(1000, 1000, 0.8, 0.2, 0.1) == "ken-burns"


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    bomb = _write(tmp_path, "bomb.png", _png(100_000, 100_000, zlib.compress(b"\0" * 1000)))
    assert bomb.stat().st_size < 200
    with pytest.raises(Oversize) as caught:
        analyze(bomb)
    assert caught.value.code == "oversize"


def test_pillows_own_bomb_limit_never_escapes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Warnings are errors here: an image over Pillow's limit is our Oversize, not its warning."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    path = _write(tmp_path, "big.png", _encoded(Image.new("RGB", (150, 100)), "PNG"))
    for limit in (40_000_000, 15_000):
        with pytest.raises(Oversize):
            analyze(path, max_pixels=limit)


def test_pixel_and_byte_limits(tmp_path: Path, photo: Image.Image) -> None:
    path = _write(tmp_path, "photo.png", _encoded(photo, "PNG"))
    with pytest.raises(Oversize):
        analyze(path, max_pixels=160 * 120 - 1)
    with pytest.raises(Oversize):
        analyze(path, max_bytes=path.stat().st_size - 1)
    assert analyze(path, max_pixels=160 * 120, max_bytes=path.stat().st_size).width == 160


def test_truncated_images_are_broken(tmp_path: Path, photo: Image.Image) -> None:
    for name, fmt in (("cut.jpg", "JPEG"), ("cut.png", "PNG"), ("cut.webp", "WEBP")):
        data = _encoded(photo, fmt)
        with pytest.raises(BrokenUrl) as caught:
            analyze(_write(tmp_path, name, data[: len(data) * 2 // 3]))
        assert caught.value.code == "broken_url"


def test_a_missing_file_is_broken(tmp_path: Path) -> None:
    with pytest.raises(BrokenUrl):
        analyze(tmp_path / "nope.jpg")


SVG = '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><script>alert(1)</script></svg>'


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("image.svg", SVG),
        ("notes.txt", "just some text, not an image\n"),
        ("page.html", "<!doctype html><html><body>hi</body></html>"),
        ("empty.png", b""),
        ("anim.gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"),
        ("not.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40),
    ],
)
def test_non_images_are_unsupported(tmp_path: Path, name: str, data: bytes | str) -> None:
    with pytest.raises(UnsupportedMedia) as caught:
        analyze(_write(tmp_path, name, data))
    assert caught.value.code == "unsupported_media"


def _jpeg_with_comment(photo: Image.Image, comment: bytes) -> bytes:
    data = _encoded(photo, "JPEG")
    return data[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + data[2:]


@pytest.mark.parametrize(
    "build",
    [
        lambda p: _encoded(p, "PNG") + b"<html><script>alert(document.cookie)</script></html>",
        lambda p: _encoded(p, "JPEG") + b"PK\x03\x04" + b"\x00" * 60,
        lambda p: _encoded(p, "WEBP") + b"<?php echo 1; ?>",
        lambda p: _jpeg_with_comment(p, b"*/ <script>alert(1)</script> /*"),
        lambda p: _encoded(p, "PNG", pnginfo=_text_chunk(b'<svg onload="alert(1)">')),
    ],
    ids=["png+html", "jpeg+zip", "webp+php", "jpeg-comment-script", "png-text-svg"],
)
def test_polyglots_are_unsupported(tmp_path: Path, photo: Image.Image, build: Callable[[Image.Image], bytes]) -> None:
    with pytest.raises(UnsupportedMedia):
        analyze(_write(tmp_path, "poly", build(photo)))


def _text_chunk(text: bytes) -> PngInfo:
    info = PngInfo()
    info.add_text("Comment", text.decode())
    return info


def test_an_innocent_comment_and_padding_are_fine(tmp_path: Path, photo: Image.Image) -> None:
    path = _write(tmp_path, "ok.jpg", _jpeg_with_comment(photo, b"shot on a sunny day <3") + b"\x00" * 16)
    assert analyze(path).format == "JPEG"


def test_corrupt_pixel_data_is_unsupported_not_a_crash(tmp_path: Path) -> None:
    path = _write(tmp_path, "garbled.png", _png(64, 64, b"this is not zlib data at all"))
    with pytest.raises(GenloomError) as caught:
        analyze(path)
    assert caught.value.code in ("unsupported_media", "broken_url")
