"""Bad input to the deployment commands: each gives one line naming the file and the fix, or a
counted per-file failure, never a traceback or silently wrong output."""

from __future__ import annotations

import io
import os
import json
from pathlib import Path

import kaldifst
import numpy as np
import pytest
import soundfile as sf
import torch

from asr_kd.bin.cli import main as cli_main
from asr_kd.config import FeatureConfig
from asr_kd.ctc.model import CtcEncoder
from asr_kd.data.features import CmvnStats
from asr_kd.deploy.acoustic import GmmAcoustic, OnnxAcoustic
from asr_kd.deploy.audio import load_audio
from asr_kd.deploy.model_dir import (CMVN_FILE, MODEL_JSON, MODEL_PT, PRIORS_FILE, TID2PDF_FILE, TID2PHONE_FILE, WORDS_FILE,
                                     ModelSpec, assemble_ctc_model_dir, load_cmvn, load_network)
from asr_kd.deploy.search import Searcher
from asr_kd.deploy.transcribe import Transcriber, file_items, manifest_items, transcribe_to
from asr_kd.errors import DataError
from asr_kd.metrics.wer import score_transcript_files

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REBUILD = "rebuild the model directory with `asr-kd make-model-dir`"


def _tone(path: Path, seconds: float, rate: int = 16000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate)
    return path


def _ctc_model_dir(d: Path) -> Path:
    """A real, untrained CTC model directory (greedy search needs no graph): network, tokens,
    words, per-utterance normalisation."""
    d.mkdir()
    torch.manual_seed(0)
    model = CtcEncoder(40, 5, "tiny", 4, 0.0)
    torch.save({"model": model.state_dict(), "extra": model.describe()}, d / MODEL_PT)
    (d / MODEL_JSON).write_text(ModelSpec("ctc", FeatureConfig(), "utterance", 4, units="phone").to_json())
    (d / "tokens.txt").write_text("<blk> 0\nA 1\nB 2\nC 3\nD 4\n")
    (d / WORDS_FILE).write_text("<eps> 0\nA 1\nB 2\n")
    return d


def test_recordings_manifest_gives_recording_ids_and_supervisions_are_refused(tmp_path: Path) -> None:
    from lhotse import Recording, RecordingSet, SupervisionSegment, SupervisionSet

    recs = RecordingSet.from_recordings(
        Recording.from_file(_tone(tmp_path / f"{u}.wav", 0.2), recording_id=u) for u in ("100-200-0000", "100-200-0001"))
    recs.to_file(tmp_path / "recordings.jsonl.gz")
    # lhotse names a recording's cut "100-200-0000-0"; scored against references keyed by
    # utterance id, every line would count as missing.
    assert [u for u, _, _ in manifest_items(tmp_path / "recordings.jsonl.gz", 16000)] == ["100-200-0000", "100-200-0001"]
    SupervisionSet.from_segments([SupervisionSegment("100-200-0000", "100-200-0000", 0.0, 0.2, text="A")]).to_file(
        tmp_path / "supervisions.jsonl.gz")
    with pytest.raises(DataError, match=r"supervisions.jsonl.gz is a SupervisionSet, which holds no audio; pass the recordings \(or cuts\)"):
        manifest_items(tmp_path / "supervisions.jsonl.gz", 16000)


def test_a_cut_off_or_garbled_manifest_is_one_line_naming_it(tmp_path: Path) -> None:
    """A recordings manifest cut off part of the way (read lazily), garbled JSON or a file that is
    not gzip'd: one DataError naming the manifest, never a gzip/JSON traceback."""
    import gzip

    from lhotse import Recording, RecordingSet

    recs = RecordingSet.from_recordings(
        Recording.from_file(_tone(tmp_path / f"u{i:03d}.wav", 0.05), recording_id=f"u{i:03d}") for i in range(300))
    lines = "".join(json.dumps(r.to_dict()) + "\n" for r in recs).encode()
    whole = gzip.compress(lines)
    (tmp_path / "cut_off.jsonl.gz").write_bytes(whole[: len(whole) * 2 // 3])
    (tmp_path / "garbled.jsonl.gz").write_bytes(gzip.compress(b"not json\n"))
    (tmp_path / "plain.jsonl.gz").write_bytes(lines)
    # A cuts manifest is read as it goes: the first cuts come out, then the error, with the count.
    from lhotse import CutSet

    cut_lines = "".join(json.dumps(c.to_dict()) + "\n" for c in CutSet.from_manifests(recordings=recs)).encode()
    whole = gzip.compress(cut_lines)
    (tmp_path / "cuts_cut_off.jsonl.gz").write_bytes(whole[: len(whole) * 2 // 3])
    with pytest.raises(DataError, match=r"cuts_cut_off.jsonl.gz is corrupt or cut off after [1-9][0-9]* item\(s\)"):
        list(manifest_items(tmp_path / "cuts_cut_off.jsonl.gz", 16000))
    for name in ("cut_off", "garbled", "plain"):
        with pytest.raises(DataError, match=rf"manifest {tmp_path / name}.jsonl.gz is corrupt or cut off.*write it again"):
            list(manifest_items(tmp_path / f"{name}.jsonl.gz", 16000))


def test_audio_shorter_than_one_window_fails_alone(tmp_path: Path) -> None:
    tr = Transcriber(_ctc_model_dir(tmp_path / "m"), method="greedy")
    short = tmp_path / "one_sample.wav"
    sf.write(short, np.array([0.1], dtype=np.float32), 16000)
    files = [short, _tone(tmp_path / "good.wav", 0.5)]
    out = io.StringIO()
    summary = transcribe_to(tr, file_items(files, tr.sampling_rate), out)
    assert summary.transcribed == 1 and out.getvalue().startswith("good")
    assert summary.failed == [f"{short}: audio too short for one frame (1 samples; one frame needs 400, 25 ms at 16000 Hz)"]


def test_transcribe_refuses_same_ids_and_names_its_output_file(tmp_path: Path, capsys) -> None:
    d = _ctc_model_dir(tmp_path / "m")
    wav = _tone(tmp_path / "good.wav", 0.3)
    sf.write(tmp_path / "good.flac", sf.read(wav)[0], 16000)
    base = ["transcribe", "--model-dir", str(d), "--method", "greedy"]
    assert cli_main(base + [str(wav), str(tmp_path / "good.flac")]) == 1
    assert f"{wav} and {tmp_path / 'good.flac'} would both be transcribed as 'good'" in capsys.readouterr().err
    assert cli_main(base + [str(wav), "--output", str(tmp_path / "no_dir" / "out.txt")]) == 1
    assert f"--output {tmp_path / 'no_dir' / 'out.txt'}: the folder {tmp_path / 'no_dir'} does not exist" in capsys.readouterr().err
    assert cli_main(base + [str(tmp_path)]) == 1
    assert f"{tmp_path} is a directory, not an audio file" in capsys.readouterr().err
    if os.path.exists("/dev/full"):  # every write there fails with ENOSPC, as on a full disk
        assert cli_main(base + [str(wav), "--output", "/dev/full"]) == 1
        err = capsys.readouterr().err.splitlines()[-1]
        assert err == ("asr-kd transcribe: error: --output /dev/full: cannot write it (No space left on device); "
                       "free space there, fix its permissions or pass another --output")


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _hybrid_search_dir(d: Path, num_pdfs: int = 4) -> Path:
    d.mkdir()
    (d / MODEL_JSON).write_text(ModelSpec("hybrid", FeatureConfig(), "utterance").to_json())
    (d / WORDS_FILE).write_text("<eps> 0\nA 1\n")
    np.save(d / TID2PDF_FILE, np.arange(num_pdfs, dtype=np.int32))
    np.save(d / TID2PHONE_FILE, np.ones(num_pdfs, dtype=np.int32))
    np.savetxt(d / PRIORS_FILE, np.log(np.full(num_pdfs, 1.0 / num_pdfs)))
    fst = kaldifst.StdVectorFst()
    for _ in range(3):
        fst.add_state()
    fst.start = 0
    fst.add_arc(0, kaldifst.StdArc(1, 1, 0.5, 1))
    fst.add_arc(1, kaldifst.StdArc(2, 0, 0.5, 2))
    fst.set_final(2, 0.0)
    fst.write(str(d / "HCLG.fst"))
    return d


def test_corrupt_or_missing_model_directory_files_name_the_file_and_make_model_dir(tmp_path: Path) -> None:
    d = _hybrid_search_dir(tmp_path / "h")
    spec = ModelSpec("hybrid", FeatureConfig(), "utterance")
    Searcher(d, spec)  # whole: loads
    np.savetxt(d / PRIORS_FILE, np.zeros(3))  # one line lost: not a network-HMM mismatch
    with pytest.raises(DataError, match=f"log_priors.txt holds 3 senone log priors but tid2pdf.npy has 4 pdfs; {REBUILD}"):
        Searcher(d, spec)
    (d / PRIORS_FILE).write_text("0.1\nnot-a-number\n0.2\n0.3\n")
    with pytest.raises(DataError, match=f"log_priors.txt is not a list of numbers .*; {REBUILD}"):
        Searcher(d, spec)
    np.savetxt(d / PRIORS_FILE, np.zeros(4))
    _truncate(d / "HCLG.fst")
    with pytest.raises(DataError, match=rf"HCLG.fst is not a readable OpenFst file \(truncated or corrupt\); {REBUILD}"):
        Searcher(d, spec)
    (d / "HCLG.fst").unlink()
    with pytest.raises(DataError, match=f"HCLG.fst does not exist; {REBUILD}"):
        Searcher(d, spec)

    c = _ctc_model_dir(tmp_path / "c")
    _truncate(c / MODEL_PT)
    with pytest.raises(DataError, match=f"model.pt is not a readable network .*; {REBUILD}"):
        load_network(c)
    stats = CmvnStats.empty(40)
    stats.accumulate("global", np.ones((5, 40), dtype=np.float32))
    stats.save(c / CMVN_FILE)
    global_spec = ModelSpec("ctc", FeatureConfig(), "global", 4, units="phone")
    assert load_cmvn(c, global_spec) is not None
    _truncate(c / CMVN_FILE)
    with pytest.raises(DataError, match=f"cmvn.npz is not readable CMVN statistics .*; {REBUILD}"):
        load_cmvn(c, global_spec)
    (c / CMVN_FILE).unlink()
    with pytest.raises(DataError, match=f"cmvn.npz does not exist; {REBUILD}"):
        load_cmvn(c, global_spec)
    (c / "acoustic.onnx").write_bytes(b"\x08\x07truncated")
    with pytest.raises(DataError, match=r"acoustic.onnx is not a readable ONNX model .*; export it again with `asr-kd export --model-dir "):
        OnnxAcoustic(c / "acoustic.onnx")

    g = tmp_path / "g"
    g.mkdir()
    with pytest.raises(DataError, match=f"gmm.npz does not exist; {REBUILD}"):
        GmmAcoustic(g)
    (g / "gmm.npz").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(DataError, match=f"gmm.npz is not a readable GMM system file; {REBUILD}"):
        GmmAcoustic(g)


def test_ctc_model_dir_without_hlg_names_make_hlg_and_writes_nothing(tmp_path: Path) -> None:
    units = tmp_path / "units"
    units.mkdir()
    (units / "tokens.txt").write_text("<blk> 0\nA 1\n")
    (units / "units.json").write_text('{"kind": "phone"}')
    (tmp_path / "best.pt").write_bytes(b"checkpoint")
    (tmp_path / "words.txt").write_text("<eps> 0\n")
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"CTC decoding graph .*graph/HLG.fst does not exist; .*`asr-kd make-hlg --lang-dir <lang dir> --graph-dir "):
        assemble_ctc_model_dir(out, checkpoint=tmp_path / "best.pt", units_dir=units, hlg=tmp_path / "graph" / "HLG.fst",
                               words=tmp_path / "words.txt", features=FeatureConfig(), train_cmvn=None)
    assert not out.exists()


def test_sherpa_export_of_a_hybrid_model_is_refused_before_any_onnx_file(tmp_path: Path, capsys) -> None:
    d = _hybrid_search_dir(tmp_path / "h")
    assert cli_main(["export", "--model-dir", str(d), "--sherpa-dir", str(tmp_path / "sherpa")]) == 1
    assert "holds a hybrid model, and sherpa-onnx runs CTC models only" in capsys.readouterr().err
    assert not list(d.glob("*.onnx")) and not (tmp_path / "sherpa").exists()


def test_load_audio_names_a_directory() -> None:
    with pytest.raises(DataError, match="is a directory, not an audio file"):
        load_audio(Path(__file__).parent, 16000)


def test_compute_wer_warns_about_case_and_punctuation_and_names_an_empty_reference(tmp_path: Path) -> None:
    from asr_kd.metrics.wer import convention_mismatches

    refs, hyps = {"u1": "hello, world!"}, {"u1": "HELLO WORLD"}
    warnings = convention_mismatches(refs, hyps, "ref.txt", "hyp.txt")
    assert len(warnings) == 2
    assert warnings[0].startswith("ref.txt has lower-case letters and hyp.txt only upper-case ones")
    assert warnings[1].startswith("ref.txt has punctuation that hyp.txt lacks (! ,)")
    assert convention_mismatches({"u1": "IT'S A <UNK> WELL-KNOWN WORD"}, {"u1": "ITS A WORD"}) == []
    assert convention_mismatches({"u1": "hello world"}, {"u1": "hello"}) == []
    (tmp_path / "ref.txt").write_text("\n")
    (tmp_path / "hyp.txt").write_text("u1 A\n")
    with pytest.raises(DataError, match=f"reference file {tmp_path / 'ref.txt'} holds no transcript"):
        score_transcript_files(tmp_path / "ref.txt", tmp_path / "hyp.txt")
