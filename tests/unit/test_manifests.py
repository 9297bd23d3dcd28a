"""Stage 0: manifests from a LibriSpeech-layout folder, and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from lhotse import load_manifest
from lhotse.recipes import prepare_librispeech

from asr_kd.data.librispeech import manifest_path, prepare_manifests
from asr_kd.errors import DataError


def test_manifests_match_lhotse_recipe(tone_corpus: Path, tmp_path: Path) -> None:
    reports = prepare_manifests(tone_corpus, tmp_path / "ours", ["train-clean-100", "dev-clean"])
    theirs = prepare_librispeech(tone_corpus, dataset_parts=["train-clean-100", "dev-clean"])
    for part in ("train-clean-100", "dev-clean"):
        recs = load_manifest(manifest_path(tmp_path / "ours", "recordings", part))
        sups = load_manifest(manifest_path(tmp_path / "ours", "supervisions", part))
        ref_recs, ref_sups = theirs[part]["recordings"], theirs[part]["supervisions"]
        assert sorted(r.id for r in recs) == sorted(r.id for r in ref_recs)
        for s in sups:
            ref = ref_sups[s.id]
            assert (s.text, s.speaker, s.duration, s.recording_id) == (ref.text, ref.speaker, ref.duration, ref.recording_id)
        assert recs[sups[0].recording_id].sampling_rate == 16000
        assert reports[part].skipped == {}
    assert reports["train-clean-100"].utterances == 6
    assert reports["train-clean-100"].speakers == 2


def test_bad_items_are_skipped_counted_and_listed(tone_corpus: Path, tmp_path: Path) -> None:
    chapter = tone_corpus / "train-clean-100" / "11" / "100"
    (chapter / "11-100-0001.flac").write_bytes(b"fLaC this is not audio")  # corrupt
    (chapter / "11-100-0042.flac").write_bytes((chapter / "11-100-0000.flac").read_bytes())  # no transcript
    with open(chapter / "11-100.trans.txt", "a") as f:
        f.write("11-100-0007 THIS AUDIO IS MISSING\n11-100-0008\n")
    out = tmp_path / "manifests"
    reports = prepare_manifests(tone_corpus, out, ["train-clean-100"])
    r = reports["train-clean-100"]
    assert r.utterances == 5
    assert r.skipped == {
        "unreadable audio": 1,
        "audio file without transcript line": 1,
        "transcript line without audio file": 1,
        "utterance has an empty transcript": 1,
    }
    listed = (out / "skipped_train-clean-100.txt").read_text()
    assert "11-100-0001.flac\tunreadable audio" in listed
    assert "11-100-0042.flac\taudio file without transcript line" in listed
    ids = {s.id for s in load_manifest(manifest_path(out, "supervisions", "train-clean-100"))}
    assert "11-100-0001" not in ids and "11-100-0000" in ids


def test_missing_corpus_dir_is_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"corpus directory .*nowhere does not exist; pass --corpus-dir") as e:
        prepare_manifests(tmp_path / "nowhere", tmp_path / "out", ["dev-clean"])
    assert "\n" not in str(e.value)


def test_missing_part_names_the_folder_and_what_exists(tone_corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"test-clean does not exist \(found: dev-clean, train-clean-100\)"):
        prepare_manifests(tone_corpus, tmp_path / "out", ["test-clean"])


def test_part_with_no_usable_utterance_is_an_error(tone_corpus: Path, tmp_path: Path) -> None:
    for flac in (tone_corpus / "dev-clean").rglob("*.flac"):
        flac.write_bytes(b"broken")
    with pytest.raises(DataError, match=r"dev-clean has no usable utterance \(3 skipped, see .*skipped_dev-clean.txt\)"):
        prepare_manifests(tone_corpus, tmp_path / "out", ["dev-clean"])


def test_empty_part_is_an_error(tone_corpus: Path, tmp_path: Path) -> None:
    (tone_corpus / "test-clean").mkdir()
    with pytest.raises(DataError, match="test-clean has no usable utterance"):
        prepare_manifests(tone_corpus, tmp_path / "out", ["test-clean"])


def test_combined_training_parts(tmp_path: Path) -> None:
    from tests.conftest import write_tone_corpus

    from asr_kd.data.librispeech import source_parts

    corpus = write_tone_corpus(tmp_path / "corpus", {"train-clean-100": [11, 12], "train-clean-360": [13], "train-other-500": [14]})
    (corpus / "train-clean-360" / "13" / "100" / "13-100-0001.flac").unlink()  # a transcript line without audio
    out = tmp_path / "manifests"
    reports = prepare_manifests(corpus, out, ["train-clean-460", "train-clean-100+train-other-500"])
    recs = load_manifest(manifest_path(out, "recordings", "train-clean-460"))
    sups = load_manifest(manifest_path(out, "supervisions", "train-clean-460"))
    assert sorted({r.id.split("-")[0] for r in recs}) == ["11", "12", "13"] and len(recs) == len(sups) == 3 + 3 + 2
    assert reports["train-clean-460"].speakers == 3 and reports["train-clean-460"].skipped == {"transcript line without audio file": 1}
    assert "13-100-0001.flac" in (out / "skipped_train-clean-460.txt").read_text()
    assert len(load_manifest(manifest_path(out, "recordings", "train-clean-100+train-other-500"))) == 9
    assert source_parts("train-960") == ("train-clean-100", "train-clean-360", "train-other-500")
    assert source_parts("dev-clean") == ("dev-clean",)
    with pytest.raises(DataError, match="names a corpus folder twice"):
        source_parts("train-clean-100+train-clean-100")
    # A missing folder of a combination is named.
    with pytest.raises(DataError, match="dev-clean does not exist"):
        prepare_manifests(corpus, out, ["dev-clean+dev-other"])
    # The same utterance in two folders cannot be combined.
    dup = write_tone_corpus(tmp_path / "dup", {"train-clean-100": [11], "train-clean-360": [11]})
    with pytest.raises(DataError, match="is in more than one of"):
        prepare_manifests(dup, tmp_path / "m2", ["train-clean-460"])


def test_an_utterance_transcribed_twice_is_one_line_error(tone_corpus: Path, tmp_path: Path) -> None:
    trans = tone_corpus / "dev-clean" / "21" / "100" / "21-100.trans.txt"
    with open(trans, "a") as f:
        f.write("21-100-0001 HELLO AGAIN\n")
    with pytest.raises(DataError, match=rf"^{trans}: utterance 21-100-0001 is transcribed twice \(lines 2 and 4\); keep one line per utterance$"):
        prepare_manifests(tone_corpus, tmp_path / "out", ["dev-clean"])


def test_empty_audio_file_is_skipped_as_empty(tone_corpus: Path, tmp_path: Path) -> None:
    (tone_corpus / "dev-clean" / "21" / "100" / "21-100-0001.flac").write_bytes(b"")
    reports = prepare_manifests(tone_corpus, tmp_path / "out", ["dev-clean"])
    assert reports["dev-clean"].skipped == {"audio file is empty": 1}
    assert "21-100-0001.flac\taudio file is empty (0 bytes)\n" in (tmp_path / "out" / "skipped_dev-clean.txt").read_text()


def test_wav_audio_is_named_as_the_reason(tone_corpus: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import soundfile as sf

    for flac in (tone_corpus / "dev-clean").rglob("*.flac"):
        audio, rate = sf.read(flac)
        sf.write(flac.with_suffix(".wav"), audio, rate)
        flac.unlink()
    with pytest.raises(DataError, match=r"dev-clean has no usable utterance \(3 skipped, .*\); 3 of them have .wav audio, but "
                                        r"LibriSpeech parts are read as .flac: convert them to FLAC$"):
        prepare_manifests(tone_corpus, tmp_path / "out", ["dev-clean"])
    assert f"{tone_corpus / 'dev-clean'} holds 3 .wav file(s), but LibriSpeech parts are read as .flac only" in caplog.text
    listed = (tmp_path / "out" / "skipped_dev-clean.txt").read_text()
    assert "21-100-0000.flac\ttranscript line without audio file (21-100-0000.wav exists, but LibriSpeech parts are read as .flac)\n" in listed


def test_corpus_dir_that_is_a_file_is_named_as_a_file(tmp_path: Path) -> None:
    (tmp_path / "corpus.tar").write_bytes(b"")
    with pytest.raises(DataError, match=r"corpus directory .*corpus.tar is a file, not a directory; pass --corpus-dir"):
        prepare_manifests(tmp_path / "corpus.tar", tmp_path / "out", ["dev-clean"])
