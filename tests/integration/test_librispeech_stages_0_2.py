"""End to end: recipes/librispeech/run.sh stages 0-2 on the synthetic 'tiny' corpus."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from lhotse import load_manifest

from asr_kd.kaldi import kaldifst
from asr_kd.lang.lang_dir import Lang
from asr_kd.stages.provenance import read_record
from tests.conftest import REPO_ROOT, run_librispeech_recipe

PARTS = ("train-clean-100", "dev-clean", "test-clean", "test-ood")  # test-ood: the synthetic corpus's out-of-domain part

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("recipe")
    data, exp = root / "data", root / "exp"
    out = run_librispeech_recipe(data, exp, "--stage", "0", "--stop-stage", "2")
    return data, exp, out


def test_manifests_are_written_and_valid(recipe) -> None:
    data, _, _ = recipe
    record = read_record(data / "manifests")
    assert record is not None and record.config == {"parts": list(PARTS)} and set(record.inputs) == {"corpus_files", "synthetic_corpus"}
    for part in PARTS:
        sups = load_manifest(data / "manifests" / f"librispeech_supervisions_{part}.jsonl.gz")
        recs = load_manifest(data / "manifests" / f"librispeech_recordings_{part}.jsonl.gz")
        assert len(sups) == len(recs) > 0
        assert all(s.text and s.text == s.text.upper() for s in sups)
        assert {r.sampling_rate for r in recs} == {16000}
    train_spk = {s.speaker for s in load_manifest(data / "manifests" / "librispeech_supervisions_train-clean-100.jsonl.gz")}
    test_spk = {s.speaker for s in load_manifest(data / "manifests" / "librispeech_supervisions_test-clean.jsonl.gz")}
    assert not train_spk & test_spk


def test_features_have_expected_shapes_and_no_nans(recipe) -> None:
    data, _, _ = recipe
    for kind, dim in (("fbank", 40), ("mfcc", 13)):
        for part in PARTS:
            cuts = load_manifest(data / kind / f"cuts_{part}.jsonl.gz")
            assert len(cuts) > 0
            for cut in list(cuts)[:5]:
                feats = cut.load_features()
                assert feats.shape[1] == dim
                assert abs(feats.shape[0] - round(cut.duration / 0.01)) <= 1
                assert np.isfinite(feats).all()
            assert (data / kind / f"cmvn_{part}.npz").is_file()


def _word_acceptor(word_ids: list[int]) -> "kaldifst.StdVectorFst":
    fst = kaldifst.StdVectorFst()
    state = fst.add_state()
    fst.start = state
    for w in word_ids:
        nxt = fst.add_state()
        fst.add_arc(state, kaldifst.StdArc(w, w, 0.0, nxt))
        state = nxt
    fst.set_final(state, 0.0)
    return fst


def test_words_compose_with_L_to_their_phones(recipe) -> None:
    data, _, _ = recipe
    lang = Lang.load(data / "lang")
    sup = next(iter(load_manifest(data / "manifests" / "librispeech_supervisions_dev-clean.jsonl.gz")))
    words = sup.text.split()
    L = lang.load_fst("L")
    kaldifst.arcsort(L, sort_type="olabel")
    composed = kaldifst.compose(L, _word_acceptor(lang.word_ids(words)))
    best = kaldifst.shortest_path(composed)
    ok, phone_ids, word_ids, _ = kaldifst.get_linear_symbol_sequence(best)
    assert ok
    assert [lang.words.name(w) for w in word_ids if w] == [w if w in lang.lexicon else lang.oov_word for w in words]
    phones = [lang.phones.name(p) for p in phone_ids if p and lang.phones.name(p) != lang.optional_silence]
    # The cheapest path takes one pronunciation of each word: check it is one of the lexicon's.
    pos = 0
    for w in words:
        prons = lang.lexicon.get(w, lang.lexicon.get(lang.oov_word))
        match = [p for p in prons if tuple(phones[pos : pos + len(p)]) == tuple(p)]
        assert match, f"{w}: {phones[pos:pos + 6]} not in {prons}"
        pos += len(match[0])
    assert pos == len(phones)


def test_lang_outputs_and_summary(recipe) -> None:
    data, _, out = recipe
    lang_dir = data / "lang"
    for name in ("lexicon.txt", "words.txt", "phones.txt", "L.fst", "L_disambig.fst", "G.fst", "lang.json", "provenance.json"):
        assert (lang_dir / name).is_file(), name
    summary = json.loads((lang_dir / "lang.json").read_text())
    assert summary["vocab_size"] > 50
    assert 1 < summary["dev_perplexity"] < summary["vocab_size"] * 10
    # The recipe's closing summary: hours and speakers per part, vocabulary, perplexity.
    for part in PARTS:
        assert part in out.stdout
    assert "perplexity" in out.stdout and "vocabulary" in out.stdout


def test_later_stage_does_not_redo_earlier_ones(recipe) -> None:
    data, exp, _ = recipe
    records = {d: read_record(data / d) for d in ("manifests", "fbank", "lang")}
    out = run_librispeech_recipe(data, exp, "--stage", "0", "--stop-stage", "2")
    log = out.stdout + out.stderr  # run.sh shows each command's log on stdout
    assert log.count("up to date (") >= 4, log[-3000:]  # corpus, manifests, features, lang
    assert {d: read_record(data / d) for d in records} == records
    # Deleting a stage's record redoes that stage (and nothing before it).
    (data / "fbank" / "provenance.json").unlink()
    out = run_librispeech_recipe(data, exp, "--stage", "1", "--stop-stage", "1")
    assert "stage 1 (features): finished" in out.stdout + out.stderr
    assert read_record(data / "manifests") == records["manifests"]
    assert read_record(data / "fbank").config == records["fbank"].config
    # A changed feature option is a changed config: the stage is redone with it and says so.
    out = run_librispeech_recipe(data, exp, "--stage", "1", "--stop-stage", "1", "--feature-config", str(_features_yaml(data, num_ceps=12)))
    assert "settings differ from the finished run (features.num_ceps: 13 -> 12)" in out.stdout + out.stderr
    assert read_record(data / "fbank").config["features"]["num_ceps"] == 12
    out = run_librispeech_recipe(data, exp, "--stage", "1", "--stop-stage", "1")  # back to the recipe's config
    assert read_record(data / "fbank").config == records["fbank"].config


def _features_yaml(data: Path, **changes: object) -> Path:
    import yaml

    cfg = yaml.safe_load((REPO_ROOT / "recipes" / "librispeech" / "conf" / "features.yaml").read_text()) or {}
    path = data.parent / "features_changed.yaml"
    path.write_text(yaml.safe_dump({**cfg, **changes}))
    return path


def test_stage_2_with_an_existing_arpa_lm(recipe, tmp_path) -> None:
    # --lm-arpa: stage 2 uses an ARPA LM trained elsewhere (here on the dev transcripts, a
    # stand-in for openslr's LibriSpeech LM); its words without a lexicon entry get G2P
    # pronunciations (lang.g2p_lm_words), so the LM keeps them and they can be decoded.
    import shutil

    from asr_kd.lang.lm import train_ngram_lm

    data, _, _ = recipe
    new_data, exp = tmp_path / "data", tmp_path / "exp"
    shutil.copytree(data / "manifests", new_data / "manifests")
    dev = load_manifest(data / "manifests" / "librispeech_supervisions_dev-clean.jsonl.gz")
    arpa = tmp_path / "dev.arpa"
    train_ngram_lm([s.text.upper() + " QQZZXV" for s in dev], 2, arpa)
    out = run_librispeech_recipe(new_data, exp, "--stage", "2", "--stop-stage", "2", "--lm-arpa", str(arpa))
    assert "Stage 2: lexicon" in out.stderr
    summary = json.loads((new_data / "lang" / "lang.json").read_text())
    assert summary["lm_source"] == f"ARPA {arpa}" and summary["lm_order"] == 2 and summary["lm_train_sentences"] == 0
    lang = Lang.load(new_data / "lang")
    assert "QQZZXV" in lang.words  # only the LM has it: a G2P pronunciation, kept with its n-grams
    assert "QQZZXV" in (new_data / "lang" / "lm" / "lm.arpa").read_text()
    assert any(line.split()[0] == "QQZZXV" for line in (new_data / "lang" / "lexicon_g2p.txt").read_text().splitlines())
