"""A local preview voice: text to a speech-paced WAV with no model and no network.

Each syllable is a short voiced buzz (a glottal-like pulse train through two vowel formants) on a
falling sentence contour, with pauses between words and longer ones at punctuation. It carries the
rhythm and length of the narration, so a video's scenes and captions time out as they would with a
real voice; configure a TTS provider (Replicate) for actual speech.
"""

from __future__ import annotations

import re
import wave
from pathlib import Path

import numpy as np

from genloom.errors import InvalidInput

RATE = 22_050
MAX_CHARS = 5_000
_WORD = re.compile(r"[A-Za-z0-9À-ÿ']+|[.!?;:,]")
_VOWELS = re.compile(r"[aeiouyà-ÿ]+", re.I)
# (F1, F2) in Hz for a few vowel colours, chosen per syllable from its letters.
_FORMANTS = {"a": (730, 1090), "e": (530, 1840), "i": (270, 2290), "o": (570, 840), "u": (300, 870)}


def syllables(word: str) -> list[str]:
    """Vowel groups of ``word`` (at least one), which set its length and colour."""
    return _VOWELS.findall(word) or [word[:1] or "a"]


def _syllable(vowel: str, pitch: float, seconds: float) -> np.ndarray:
    n = int(RATE * seconds)
    t = np.arange(n) / RATE
    f1, f2 = _FORMANTS.get(vowel[:1].lower(), (500, 1500))
    # Harmonics of the pitch weighted by how close each lies to the two formants.
    wave_ = np.zeros(n)
    for k in range(1, int(3500 / pitch)):
        f = k * pitch
        gain = np.exp(-(((f - f1) / 120) ** 2)) + 0.6 * np.exp(-(((f - f2) / 180) ** 2)) + 0.02 / k
        wave_ += gain * np.sin(2 * np.pi * f * t)
    envelope = np.minimum(1.0, np.minimum(t / 0.015, (seconds - t) / 0.04))
    shaped: np.ndarray = wave_ * np.clip(envelope, 0, 1)
    return shaped


def synthesize(text: str, out: Path, *, pitch: float = 140.0, words_per_minute: float = 160.0) -> float:
    """Write ``text`` as a mono 16-bit WAV to ``out``; returns its length in seconds."""
    text = " ".join(text.split())
    if not text:
        raise InvalidInput("There is no text to speak.", code="invalid_input")
    if len(text) > MAX_CHARS:
        raise InvalidInput(f"The text is longer than {MAX_CHARS} characters.", code="too_long")
    tokens = _WORD.findall(text)
    syl_seconds = 60.0 / words_per_minute / 1.5
    chunks: list[np.ndarray] = [np.zeros(int(RATE * 0.15))]
    position, count = 0, max(1, sum(1 for t in tokens if t[0].isalnum()))
    for token in tokens:
        if not token[0].isalnum():
            chunks.append(np.zeros(int(RATE * (0.35 if token in ".!?" else 0.18))))
            continue
        position += 1
        contour = pitch * (1.1 - 0.25 * position / count)  # a gently falling sentence melody
        for i, vowel in enumerate(syllables(token)):
            stress = 1.0 if i else 1.1  # the first syllable a little higher and longer
            chunks.append(_syllable(vowel, contour * stress, syl_seconds * stress))
        chunks.append(np.zeros(int(RATE * 0.06)))
    chunks.append(np.zeros(int(RATE * 0.2)))
    signal = np.concatenate(chunks)
    peak = float(np.abs(signal).max()) or 1.0
    pcm = (signal / peak * 0.6 * 32767).astype("<i2")
    out.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())
    return len(pcm) / RATE
