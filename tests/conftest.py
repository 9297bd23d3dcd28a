"""Shared fixtures: small corpora in the LibriSpeech layout written with real FLAC audio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO_ROOT = Path(__file__).resolve().parents[1]


def write_tone_corpus(root: Path, parts: dict[str, list[int]], utts_per_speaker: int = 3, seconds: float = 1.5, seed: int = 0) -> Path:
    """Write a LibriSpeech-layout corpus of harmonic tones in noise (16 kHz FLAC) and transcripts.

    Returns ``root``. Utterance ``<spk>-100-<n>`` says ``HELLO WORLD`` plus a number word.
    """
    rng = np.random.default_rng(seed)
    numbers = ["ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX"]
    for part, speakers in parts.items():
        for spk in speakers:
            chapter_dir = root / part / str(spk) / "100"
            chapter_dir.mkdir(parents=True, exist_ok=True)
            lines = []
            for u in range(utts_per_speaker):
                utt = f"{spk}-100-{u:04d}"
                t = np.arange(int(16000 * seconds)) / 16000
                f0 = 120 + 10 * (spk % 7) + 30 * u
                x = sum(0.2 / k * np.sin(2 * np.pi * k * f0 * t) for k in range(1, 5))
                x = x + 0.01 * rng.standard_normal(t.size)
                sf.write(chapter_dir / f"{utt}.flac", x.astype(np.float32), 16000, subtype="PCM_16")
                lines.append(f"{utt} HELLO WORLD {numbers[u % len(numbers)]}")
            (chapter_dir / f"{spk}-100.trans.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def tone_corpus(tmp_path: Path) -> Path:
    """A small clean corpus: two training speakers, one dev speaker."""
    return write_tone_corpus(tmp_path / "corpus", {"train-clean-100": [11, 12], "dev-clean": [21]})
