"""CutX's static ads and ad copy, offline: a template copywriter and a rendered ad card (PNG).

With a chat provider configured the copy comes from the model instead (providers.openai_compat);
the card renderer is the local provider's answer to a ``static_ad`` prediction.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from genloom.media.renderer import frame_size
from genloom.media.text import _fit, scene_background

_HEADLINES = ("Meet {name}", "{name}, made simple", "Say hello to {name}", "Why everyone is talking about {name}")
_BODIES = (
    "{desc} Built for {audience}.",
    "{desc} Made with {audience} in mind.",
    "{desc} Try it today and see the difference.",
)
_CTAS = ("Shop now", "Learn more", "Get started", "Try it free")


def template_copy(name: str, description: str = "", audience: str = "", seed: int = 0) -> dict[str, str]:
    """Headline, body and call to action from the product's own words; same inputs, same copy."""
    rng = random.Random(f"genloom-copy:{name}:{seed}")
    name = " ".join(name.split()) or "our product"
    desc = " ".join(description.split())
    if desc and desc[-1] not in ".!?":
        desc += "."
    fill = {"name": name, "desc": desc or f"{name} does the job well.", "audience": audience or "people like you"}
    return {
        "headline": rng.choice(_HEADLINES).format(**fill),
        "body": rng.choice(_BODIES).format(**fill).strip(),
        "cta": rng.choice(_CTAS),
    }


def render_ad(
    out: Path, *, headline: str, body: str, cta: str, aspect: str = "1:1", height: int = 1080, seed: int = 0,
    image: Path | None = None,
) -> tuple[int, int]:
    """A finished ad card as PNG: the product image (or a seeded gradient), headline, body and a
    call-to-action button. Returns (width, height)."""
    size = frame_size(aspect, height)
    w, h = size
    if image is not None:
        with Image.open(image) as src:
            canvas = ImageOps.fit(ImageOps.exif_transpose(src).convert("RGB"), size)
    else:
        canvas = scene_background(size, seed, 0)
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    margin = round(min(w, h) * 0.07)
    draw.rectangle((0, round(h * 0.55), w, h), fill=(0, 0, 0, 150))
    font, lines = _fit(draw, headline, (w - 2 * margin, round(h * 0.16)), max(14, round(min(w, h) / 11)))
    y = round(h * 0.58)
    for line in lines:
        draw.text((margin, y), line, font=font, fill="white")
        y += round(font.size * 1.2)
    small, body_lines = _fit(draw, body, (w - 2 * margin, round(h * 0.14)), max(12, round(min(w, h) / 24)))
    y += round(margin * 0.3)
    for line in body_lines:
        draw.text((margin, y), line, font=small, fill=(235, 235, 235, 255))
        y += round(small.size * 1.25)
    button_size = max(12, round(min(w, h) / 22))
    button = ImageFont.load_default(size=button_size)
    bw = draw.textlength(cta, font=button) + 2 * margin
    top = h - margin - round(button_size * 2.2)
    draw.rounded_rectangle((margin, top, margin + bw, h - margin), radius=margin // 2, fill=(255, 196, 0, 255))
    draw.text((margin + bw / 2, (top + h - margin) / 2), cta, font=button, fill="black", anchor="mm")
    Image.alpha_composite(canvas.convert("RGBA"), layer).convert("RGB").save(out, "PNG", optimize=True)
    return w, h
