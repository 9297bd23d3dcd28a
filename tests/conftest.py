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


@pytest.fixture(autouse=True)
def _no_logging_to_closed_streams():
    """After each test, drop root log handlers whose stream was closed (a test that ran
    ``setup_logging()`` under capsys leaves one), so later tests do not print logging errors."""
    yield
    import logging

    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "closed", False):
            root.removeHandler(handler)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module of tiny-tensor tests (thread start-up and spinning
    cost more than they save when the CPUs are shared); the previous setting is restored after.
    Use it with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tone_corpus(tmp_path: Path) -> Path:
    """A small clean corpus: two training speakers, one dev speaker."""
    return write_tone_corpus(tmp_path / "corpus", {"train-clean-100": [11, 12], "dev-clean": [21]})


RUN_SH = REPO_ROOT / "recipes" / "librispeech" / "run.sh"


def run_librispeech_recipe(data: Path, exp: Path, *args: str, timeout: int = 900):
    """Run recipes/librispeech/run.sh on the 'tiny' synthetic corpus; fail the test on error."""
    import subprocess

    out = subprocess.run(
        ["bash", str(RUN_SH), "--preset", "tiny", "--data", str(data), "--exp", str(exp), "--results", str(exp / "RESULTS.md"), "--nj", "2", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, f"run.sh {' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="session")
def tiny_stage2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(data, exp)`` after stages 0-2 of the main recipe on the 'tiny' corpus, run once per
    test session. Tests must treat these folders as read-only (copy what they change)."""
    root = tmp_path_factory.mktemp("tiny_recipe")
    data, exp = root / "data", root / "exp"
    run_librispeech_recipe(data, exp, "--stage", "0", "--stop-stage", "2")
    return data, exp


# GmmConfig sizes for the 'tiny' corpus (80 training utterances): the file run.sh uses for --preset tiny.
TINY_GMM_CONFIG = REPO_ROOT / "recipes" / "librispeech" / "conf" / "gmm_tiny.yaml"


@pytest.fixture(scope="session")
def tiny_stage3(tiny_stage2: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """``(data, lang_dir, exp)`` after stage 3 (:func:`asr_kd.stages.s3_gmm.run_gmm_stage`) on the
    data of ``tiny_stage2``, run once per test session into its own experiment folder: models,
    graphs and senone alignments in ``exp/gmm`` (see asr_kd/stages/s3_gmm.py), its RESULTS.md section
    in ``exp/RESULTS.md``. Tests must treat these folders as read-only."""
    from asr_kd.config import GmmConfig, load_config
    from asr_kd.stages.s3_gmm import run_gmm_stage

    data, _ = tiny_stage2
    exp = tmp_path_factory.mktemp("tiny_stage3") / "exp"
    config = load_config(GmmConfig, TINY_GMM_CONFIG)
    parts = ["train-clean-100", "dev-clean", "test-clean", "test-ood"]  # every part of the recipe, as run.sh passes them
    run_gmm_stage(data, data / "lang", exp, config, "train-clean-100", parts, num_jobs=2, results_md=exp / "RESULTS.md",
                  command="run_gmm_stage (tests/conftest.py tiny_stage3)")
    return data, data / "lang", exp
