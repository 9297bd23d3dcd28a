"""The same audio with lowercase, punctuated, typographic transcripts trains and scores exactly as
with LibriSpeech's clean upper-case ones: stage 0 normalises the text once for every consumer
(lexicon lookup and LM in stage 2, alignment and WER references in stage 3)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from lhotse import load_manifest

from asr_kd.data.librispeech import manifest_path
from tests.conftest import TINY_GMM_CONFIG, run_librispeech_recipe

PARTS = ("train-clean-100", "dev-clean", "test-clean")


def _messy(text: str) -> str:
    """``THE MAN'S DOG RAN`` -> ``The man’s, dog — ran.``"""
    words = text.lower().replace("'", "\u2019").split()
    words[0] = words[0].capitalize()
    if len(words) > 2:
        words[1] += ","
        words.insert(3, "\u2014")
    return " ".join(words) + "."


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_messy_transcripts_give_the_same_text_and_the_same_gmm_wer(tiny_stage3, tmp_path: Path) -> None:
    data, _, clean_exp = tiny_stage3
    corpus = tmp_path / "corpus"
    changed = 0
    for part in PARTS:
        shutil.copytree(data / "corpus" / part, corpus / part)
        for trans in (corpus / part).glob("*/*/*.trans.txt"):
            lines = []
            for line in trans.read_text().splitlines():
                utt, text = line.split(maxsplit=1)
                lines.append(f"{utt} {_messy(text)}")
                changed += 1
            trans.write_text("\n".join(lines) + "\n")
    assert changed > 100
    messy_data, messy_exp = tmp_path / "data", tmp_path / "exp"
    # The fixture's stage 3 decoded with DecodeConfig's defaults (no tuning); so does this run.
    decode_defaults = tmp_path / "decode.yaml"
    decode_defaults.write_text("{}\n")
    run_librispeech_recipe(messy_data, messy_exp, "--corpus-dir", str(corpus), "--gmm-config", str(TINY_GMM_CONFIG),
                           "--decode-config", str(decode_defaults), "--stage", "0", "--stop-stage", "3", timeout=1700)
    for part in PARTS:
        clean = {s.id: s.text for s in load_manifest(manifest_path(data / "manifests", "supervisions", part))}
        messy = {s.id: s.text for s in load_manifest(manifest_path(messy_data / "manifests", "supervisions", part))}
        assert messy == clean, part
    clean_wers = json.loads((clean_exp / "gmm" / "stage3.json").read_text())["wers"]
    messy_wers = json.loads((messy_exp / "gmm" / "stage3.json").read_text())["wers"]
    # The fixture's stage 3 also decoded test-ood (the synthetic corpus's extra part); compare the parts both ran.
    assert messy_wers == {system: {p: w for p, w in by_part.items() if p in PARTS} for system, by_part in clean_wers.items()}
    assert clean_wers["tri"]["test-clean"]["ref_words"] > 100
