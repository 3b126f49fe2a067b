"""Words for the ``video`` type: a local template script writer and the captioned scene cards."""

from __future__ import annotations

import colorsys
import random
from collections.abc import Iterator
from typing import Final

import av
import numpy as np
from av.video.reformatter import ColorRange, Colorspace
from PIL import Image, ImageDraw, ImageFilter, ImageFont

# Generic on purpose: this is the offline stand-in for a language model, not a writer.
_OPENERS: Final = (
    "Here is a quick look at {s}.",
    "Let's talk about {s}.",
    "A short guide to {s}.",
    "Everything you need to know about {s}, in under a minute.",
)
_MIDDLES: Final = (
    "{S} is easier to understand once you see how the pieces fit together.",
    "Most people notice {s} only when something about it changes.",
    "The basics of {s} have not changed much, even as the details have.",
    "A good first step with {s} is to start small and stay curious.",
    "Experts who work with {s} every day say the fundamentals matter most.",
    "One common mistake with {s} is trying to do everything at once.",
    "There is usually more than one good way to approach {s}.",
    "{S} rewards patience: small, steady steps add up.",
    "It helps to ask what problem {s} is really solving.",
    "People often remember {s} for the little things.",
)
_CLOSERS: Final = (
    "That is {s} in a nutshell. Thanks for watching.",
    "Now you know a little more about {s}.",
    "Follow for more short takes like this one on {s}.",
)


def template_script(subject: str, n: int, seed: int = 0) -> list[str]:
    """``n`` generic paragraphs about ``subject``: an opener, middles, a closer; same seed, same text."""
    if n < 1:
        return []
    s = " ".join(subject.split()) or "this topic"
    fill = {"s": s, "S": s[:1].upper() + s[1:]}
    rng = random.Random(f"genloom-script:{seed}")
    middles = list(_MIDDLES)
    rng.shuffle(middles)
    picks = [rng.choice(_OPENERS)]
    picks += [middles[i % len(middles)] for i in range(max(0, n - 2))]
    if n > 1:
        picks.append(rng.choice(_CLOSERS))
    return [p.format(**fill) for p in picks]


def scene_background(size: tuple[int, int], seed: int, index: int) -> Image.Image:
    """A soft two-colour gradient with a few blurred light spots, all from a seeded RNG."""
    w, h = size
    rng = np.random.default_rng([seed, index, 0x5EED])
    hue = float(rng.random())
    top = np.array(colorsys.hsv_to_rgb(hue, 0.55, 0.50)) * 255
    bottom = np.array(colorsys.hsv_to_rgb((hue + 0.12 + 0.2 * rng.random()) % 1.0, 0.70, 0.18)) * 255
    ramp = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    grad = (top * (1 - ramp) + bottom * ramp).astype(np.uint8)
    image = Image.fromarray(np.broadcast_to(grad, (h, w, 3)).copy())
    spots = Image.new("L", size, 0)
    draw = ImageDraw.Draw(spots)
    for _ in range(6):
        x, y, r = rng.random() * w, rng.random() * h, (0.08 + 0.15 * rng.random()) * w
        draw.ellipse((x - r, y - r, x + r, y + r), fill=int(40 + 50 * rng.random()))
    spots = spots.filter(ImageFilter.GaussianBlur(w / 18))
    return Image.composite(Image.new("RGB", size, (255, 255, 255)), image, spots)


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont, width: float) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def _fit(
    draw: ImageDraw.ImageDraw, text: str, box: tuple[int, int], size: int
) -> tuple[ImageFont.FreeTypeFont, list[str]]:
    """The largest font (down to a floor) whose wrapped lines fit ``box``; overflow ends in an ellipsis."""
    floor = max(10, size // 3)
    while True:
        font = ImageFont.load_default(size=size)
        assert isinstance(font, ImageFont.FreeTypeFont)
        lines = _wrap(draw, text, font, box[0])
        fits = len(lines) * size * 1.25 <= box[1] and all(draw.textlength(x, font=font) <= box[0] for x in lines)
        if fits or size <= floor:
            break
        size = max(floor, int(size * 0.9))
    keep = max(1, int(box[1] // (size * 1.25)))
    if len(lines) > keep:
        lines = [*lines[: keep - 1], lines[keep - 1].rstrip(".,;:") + " …"]
    return font, lines


def scene_card(size: tuple[int, int], text: str, subject: str, index: int, total: int, seed: int) -> Image.Image:
    """One scene's still: background, subject heading, the paragraph centred in a dark panel."""
    w, h = size
    image = scene_background(size, seed, index).convert("RGBA")
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    margin = round(w * 0.08)
    font, lines = _fit(draw, text, (w - 4 * margin, round(h * 0.55)), max(12, round(w / 13)))
    step = round(font.size * 1.25)
    block = step * len(lines)
    top = (h - block) // 2
    draw.rounded_rectangle(
        (margin, top - margin, w - margin, top + block + margin), radius=margin // 2, fill=(0, 0, 0, 120)
    )
    stroke = max(1, round(font.size / 14))
    for i, line in enumerate(lines):
        x = (w - draw.textlength(line, font=font)) / 2
        draw.text((x, top + i * step), line, font=font, fill="white", stroke_width=stroke, stroke_fill="black")
    small = ImageFont.load_default(size=max(10, round(w / 26)))
    heading = " ".join(subject.split()).upper()[:40]
    draw.text((w / 2, h * 0.1), heading, font=small, fill=(255, 255, 255, 230), anchor="mm")
    draw.text((w / 2, h * 0.9), f"{index + 1} / {total}", font=small, fill=(255, 255, 255, 200), anchor="mm")
    return Image.alpha_composite(image, layer).convert("RGB")


def _yuv420(image: Image.Image) -> np.ndarray:
    """An RGB image as one yuv420p array (BT.709, limited range), shape (h * 3 / 2, w)."""
    frame = av.VideoFrame.from_ndarray(np.asarray(image), format="rgb24").reformat(
        format="yuv420p", dst_colorspace=Colorspace.ITU709, dst_color_range=ColorRange.MPEG
    )
    return np.asarray(frame.to_ndarray(), dtype=np.uint8)


def scene_frames(
    texts: list[str], subject: str, size: tuple[int, int], per: int, seed: int, *, fade: int
) -> Iterator[np.ndarray]:
    """yuv420p frames: ``per`` of each scene card, cross-fading over ``fade`` frames into the next,
    with a thin progress bar along the bottom."""
    w, h = size
    total, fade = per * len(texts), max(0, min(per - 1, fade))
    bar = max(2, h // 160) // 2 * 2
    prev, cur = None, _yuv420(scene_card(size, texts[0], subject, 0, len(texts), seed))
    for i in range(total):
        k, j = divmod(i, per)
        if j == 0 and k > 0:
            prev, cur = cur, _yuv420(scene_card(size, texts[k], subject, k, len(texts), seed))
        if prev is not None and j < fade:
            alpha = (j + 1) * 256 // (fade + 1)
            data = ((prev.astype(np.uint16) * (256 - alpha) + cur.astype(np.uint16) * alpha) >> 8).astype(np.uint8)
        else:
            data = cur.copy()
        filled = w * (i + 1) // total // 2 * 2
        luma, chroma = data[:h], data[h:].reshape(2, h // 2, w // 2)  # views into data
        luma[h - bar :, :filled] = 235
        chroma[:, (h - bar) // 2 :, : filled // 2] = 128
        yield data
