"""The offline stand-ins for hosted models: the preview voice and the ad card and copy."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genloom.errors import InvalidInput
from genloom.media.ads import render_ad, template_copy
from genloom.media.voice import RATE, syllables, synthesize


def test_voice_is_a_mono_wav_paced_like_speech(tmp_path: Path) -> None:
    short = synthesize("Hello there.", tmp_path / "short.wav")
    long = synthesize("Hello there. " * 10 + "This is a much longer narration, with pauses.", tmp_path / "long.wav")
    with wave.open(str(tmp_path / "long.wav")) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, RATE)
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    assert 0.5 < short < 2.5
    assert long > 8 * short / 1.5  # length follows the words
    silent = np.abs(samples) < 50
    assert 0.1 < silent.mean() < 0.7  # voiced syllables separated by pauses, not a tone


def test_voice_refuses_empty_and_oversized_text(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        synthesize("   ", tmp_path / "x.wav")
    with pytest.raises(InvalidInput) as info:
        synthesize("a" * 6000, tmp_path / "x.wav")
    assert info.value.code == "too_long"
    assert not (tmp_path / "x.wav").exists()


def test_syllables_are_vowel_groups() -> None:
    assert syllables("generation") == ["e", "e", "a", "io"]
    assert syllables("rhythm") == ["y"]
    assert syllables("42") == ["4"]


def test_template_copy_is_deterministic_and_uses_the_product() -> None:
    a = template_copy("Aurora Lamp", "A lamp that wakes you gently", "light sleepers", seed=3)
    assert a == template_copy("Aurora Lamp", "A lamp that wakes you gently", "light sleepers", seed=3)
    assert set(a) == {"headline", "body", "cta"}
    assert "Aurora Lamp" in a["headline"] and "wakes you gently." in a["body"]


@pytest.mark.parametrize(("aspect", "size"), [("1:1", (320, 320)), ("9:16", (320, 568)), ("16:9", (568, 320))])
def test_ad_card_is_a_png_of_the_aspect(tmp_path: Path, aspect: str, size: tuple[int, int]) -> None:
    out = tmp_path / "ad.png"
    assert render_ad(out, headline="Meet Aurora", body="Wake gently.", cta="Shop now", aspect=aspect,
                     height=320) == size
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == size
        lower = np.asarray(img.convert("L"))[size[1] // 2:]
    assert lower.std() > 20  # text and a button were drawn on the panel
