"""Deployment end to end on the 'tiny' corpus: a hybrid DNN and a CTC encoder trained briefly,
gathered into model directories from the recipe's folders, transcribed from audio files (torch,
ONNX fp32 and int8), exported for sherpa-onnx and decoded there, and measured in the cost table.

The tiny models are poor recognisers (the recipe's own tiny Table 1 has WERs near 90%); these
tests check that every runtime computes the same thing, not that the words are right.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse import load_manifest_lazy

from asr_kd.bin.cli import main as cli_main
from asr_kd.config import CtcConfig, DecodeConfig, TrainConfig, load_config
from asr_kd.data.features import CmvnStats, cmvn_path, cuts_path
from asr_kd.deploy.model_dir import load_network, load_spec, pooled_cmvn
from asr_kd.deploy.onnx_export import export_onnx
from asr_kd.deploy.recipe_paths import make_model_dir_from_recipe
from asr_kd.deploy.report import SystemSpec, deploy_report, normalisation_wers
from asr_kd.deploy.sherpa import SherpaCtc, export_sherpa
from asr_kd.deploy.transcribe import Transcriber, manifest_items
from asr_kd.errors import ConfigError
from asr_kd.metrics.wer import compute_wer
from asr_kd.models.dnn import dnn_preset
from asr_kd.report.results_md import read_section
from asr_kd.train.frame_classifier import load_frame_classifier, train_frame_classifier
from tests.conftest import REPO_ROOT

# Set-up (stages 0-3 on tiny when no other test ran them, two trainings) takes minutes on a busy CPU.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500), pytest.mark.usefixtures("one_torch_thread")]

TEST = "test-clean"
# The tiny example's DNN schedule (about ten seconds on one thread).
DNN_TRAIN = load_config(TrainConfig, REPO_ROOT / "egs" / "tiny_kd" / "conf" / "train.yaml")
# A CTC encoder needs many more updates than the recipe's tiny 40 steps before it emits anything
# but blanks; short batches and a constant rate get there on the 80 training utterances.
CTC_TRAIN = TrainConfig(max_duration=8.0, num_epochs=1000, max_steps=800, warmup_steps=20, lr=5e-3, lr_schedule="constant",
                        log_every_steps=100, checkpoint_every_steps=100000, amp="none", device="cpu", bucketing=False,
                        best_metric="token_error_rate", best_mode="min")
CTC = CtcConfig(units="phone", model_size="tiny", dropout=0.0)


@pytest.fixture(scope="module")
def recipe(tiny_stage3, tmp_path_factory, one_torch_thread) -> tuple[Path, Path]:
    """``(data, exp)``: the session's stage 3 on 'tiny' plus, where the recipe keeps them, a DNN
    student (``students/distilled``) and a CTC student (``ctc/phone/students/frame``) with its HLG."""
    from asr_kd.stages.common import read_senones
    from asr_kd.ctc.training import train_ctc_model
    from asr_kd.stages.ctc_common import prepare_units
    from asr_kd.stages.ctc_s7_decode import build_ctc_graph
    from asr_kd.stages.layout import RecipeLayout

    data, _lang, exp3 = tiny_stage3
    exp = tmp_path_factory.mktemp("deploy") / "exp"
    exp.mkdir()
    (exp / "gmm").symlink_to(Path(exp3) / "gmm")
    layout = RecipeLayout(Path(data), exp)
    train, dev = layout.train_part, layout.dev_part
    train_frame_classifier(layout.ali_cuts(train), layout.ali_cuts(dev), layout.cmvn(train), layout.cmvn(dev),
                           read_senones(layout).num_senones, dnn_preset("tiny"), DNN_TRAIN, layout.student_dir("distilled"))
    units = prepare_units(layout, CTC)
    train_ctc_model(layout.open_cuts(layout.fbank_cuts(train)), layout.open_cuts(layout.fbank_cuts(dev)), layout.open_cmvn(train),
                    layout.open_cmvn(dev), units, CTC, CTC_TRAIN, layout.ctc_student_dir("frame"))
    build_ctc_graph(layout, units)
    return layout.data_dir, exp


@pytest.fixture(scope="module")
def model_dirs(recipe, tmp_path_factory) -> dict[str, Path]:
    """Model directories of the hybrid and the CTC student, with their ONNX exports."""
    data, exp = recipe
    root = tmp_path_factory.mktemp("model_dirs")
    dirs = {"hybrid": make_model_dir_from_recipe(exp, data, "distilled", root / "hybrid"),
            "ctc": make_model_dir_from_recipe(exp, data, "ctc-frame", root / "ctc")}
    for d in dirs.values():
        export_onnx(d, int8=True)
    return dirs


def _test_audio(data: Path, n: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    cuts = list(load_manifest_lazy(cuts_path(data / "fbank", TEST)))[:n]
    refs = {c.id: " ".join(s.text for s in c.supervisions) for c in cuts}
    audio = {u: s for u, _, s in manifest_items(cuts_path(data / "fbank", TEST), 16000) if u in refs}
    return audio, refs


def _texts(tr: Transcriber, audio: dict[str, np.ndarray], batch_size: int = 4) -> dict[str, str]:
    return {t.utt_id: t.hypothesis.text for t in tr.transcribe(((u, u, s) for u, s in audio.items()), batch_size=batch_size) if t.hypothesis}


def test_model_dir_is_self_contained_and_safe(model_dirs) -> None:
    hybrid, ctc = model_dirs["hybrid"], model_dirs["ctc"]
    assert {p.name for p in hybrid.iterdir()} >= {"model.json", "model.pt", "cmvn.npz", "log_priors.txt", "HCLG.fst", "words.txt",
                                                  "tid2pdf.npy", "tid2phone.npy", "acoustic.onnx", "acoustic.int8.onnx"}
    assert {p.name for p in ctc.iterdir()} >= {"model.json", "model.pt", "cmvn.npz", "tokens.txt", "units.json", "HLG.fst", "words.txt"}
    for d in (hybrid, ctc):
        torch.load(d / "model.pt", weights_only=True)  # no pickled objects
        assert not any(p.is_symlink() for p in d.iterdir())
    assert load_spec(ctc).subsampling == 4 and load_spec(hybrid).subsampling == 1


def test_transcribe_command_formats_and_a_bad_file(recipe, model_dirs, tmp_path, capsys) -> None:
    data, _ = recipe
    flacs = sorted((data / "corpus" / TEST).rglob("*.flac"))[:3]
    x, rate = sf.read(flacs[0], dtype="float32")
    stereo = tmp_path / "stereo8k.wav"
    from asr_kd.deploy.audio import resample

    y = resample(x, rate, 8000)
    sf.write(stereo, np.stack([y, y], axis=1), 8000)
    bad = tmp_path / "broken.flac"
    bad.write_bytes(b"fLaC but not really")
    files = [str(p) for p in (*flacs, bad, stereo)]
    out = tmp_path / "hyp.txt"
    rc = cli_main(["transcribe", "--model-dir", str(model_dirs["hybrid"]), "--output", str(out), *files])
    err = capsys.readouterr().err
    assert rc == 1
    assert "broken.flac: cannot read audio" in err and "transcribed 4 of 5 inputs" in err
    lines = out.read_text().splitlines()
    assert [ln.split()[0] for ln in lines] == [p.stem for p in flacs] + ["stereo8k"]
    assert cli_main(["transcribe", "--model-dir", str(model_dirs["hybrid"]), "--format", "jsonl", "--output", str(tmp_path / "h.jsonl"), *files[:3]]) == 0
    assert cli_main(["transcribe", "--model-dir", str(model_dirs["hybrid"]), "--format", "ctm", "--output", str(tmp_path / "h.ctm"), *files[:3]]) == 0
    records = [json.loads(ln) for ln in (tmp_path / "h.jsonl").read_text().splitlines()]
    ctm = [ln.split() for ln in (tmp_path / "h.ctm").read_text().splitlines()]
    assert [r["text"] for r in records] == [" ".join(ln.split()[1:]) for ln in lines[:3]]
    words = [(r["id"], w) for r in records for w in r["words"]]
    assert [c[4] for c in ctm] == [w["word"] for _, w in words] and len(ctm) > 0
    for r in records:  # word times lie inside the file, in order, each at least one frame long
        starts = [w["start"] for w in r["words"]]
        assert starts == sorted(starts)
        assert all(0 <= w["start"] < w["end"] <= r["duration"] + 0.011 for w in r["words"])


def test_model_dir_decodes_like_the_recipe_path(recipe, model_dirs) -> None:
    """Same network and HCLG as stage 7 (decode_posteriors_batch) on the stored features with
    the pooled global CMVN: the model directory's search must give the same words on the same
    posteriors; from audio (features recomputed, not lilcom-compressed) nearly always."""
    from asr_kd.decode.hclg import load_hclg
    from asr_kd.decode.hybrid import decode_posteriors_batch
    from asr_kd.decode.priors import load_priors
    from asr_kd.gmm.train import GmmSystem
    from asr_kd.lang.symbols import SymbolTable
    from asr_kd.stages.common import read_senones
    from asr_kd.stages.layout import RecipeLayout

    data, exp = recipe
    layout = RecipeLayout(data, exp)
    senones = read_senones(layout)
    tm = GmmSystem.load(senones.model).tm
    cfg = DecodeConfig()
    stats = pooled_cmvn(CmvnStats.load(layout.cmvn(layout.train_part)))
    model = load_frame_classifier(layout.student_dir("distilled") / "best.pt")
    tr = Transcriber(model_dirs["hybrid"], decode_config=cfg)
    cuts = list(load_manifest_lazy(cuts_path(data / "fbank", TEST)))
    posteriors = {}
    with torch.no_grad():
        for c in cuts:
            f = torch.from_numpy(stats.normalize(c.load_features(), "global"))[None]
            posteriors[c.id] = torch.log_softmax(model(f, torch.tensor([f.shape[1]])), -1)[0].numpy()
    words = SymbolTable.from_file(senones.graph / "words.txt")
    reference = decode_posteriors_batch(load_hclg(senones.graph), tm, posteriors, load_priors(layout.log_priors), cfg).texts(words)
    ours = {u: tr.search(lp, u).text for u, lp in posteriors.items()}
    assert ours == reference
    from_audio = _texts(tr, _test_audio(data)[0])
    same = sum(from_audio[u] == reference[u] for u in reference)
    assert same >= 0.8 * len(reference), f"{same} of {len(reference)} utterances decode alike from audio and from stored features"


@pytest.mark.parametrize("kind", ["hybrid", "ctc"])
def test_onnx_backends_decode_like_pytorch(recipe, model_dirs, kind) -> None:
    audio, refs = _test_audio(recipe[0], 10)
    d = model_dirs[kind]
    torch_hyps = _texts(Transcriber(d, "torch"), audio)
    onnx_hyps = _texts(Transcriber(d, "onnx"), audio)
    int8_hyps = _texts(Transcriber(d, "onnx-int8"), audio)
    assert onnx_hyps == torch_hyps
    # int8 may change some words of a poor model; against fp32's words as the reference it must
    # keep most of them.
    drift = compute_wer({u: t for u, t in torch_hyps.items() if t}, int8_hyps)
    assert drift.ref_words == 0 or drift.wer <= 0.25, drift.summary()


def test_sherpa_onnx_transcribes_like_our_decoder(recipe, model_dirs, tmp_path) -> None:
    """sherpa-onnx computes its own fbank and reads the CMVN folded into the graph; its HLG
    search must give our decoder's words on at least 95% of the test utterances."""
    audio, _ = _test_audio(recipe[0])
    ours = _texts(Transcriber(model_dirs["ctc"], "torch"), audio)
    sherpa_dir = export_sherpa(model_dirs["ctc"], tmp_path / "sherpa", int8=False)
    sherpa = SherpaCtc(sherpa_dir)
    theirs = dict(zip(audio, (" ".join(w) for w in sherpa(list(audio.values())))))
    differ = {u: (ours[u], theirs[u]) for u in audio if ours[u] != theirs[u]}
    assert len(differ) <= 0.05 * len(audio), f"sherpa-onnx and our decoder differ on {len(differ)} of {len(audio)}: {differ}"
    assert sum(bool(t) for t in ours.values()) >= len(audio) // 2, "the CTC model emits words for too few utterances to compare"


def test_sherpa_onnx_decodes_at_the_model_directorys_hlg_scale(recipe, model_dirs, tmp_path) -> None:
    """sherpa-onnx's HLG search has no scale option: the model directory's ctc_acoustic_scale is
    folded into the exported graph and its max-active handed over, so sherpa-onnx still gives our
    decoder's words when the recorded scale is far from 1."""
    import dataclasses
    import shutil

    import onnxruntime as ort

    audio, _ = _test_audio(recipe[0])
    scaled = tmp_path / "ctc_scaled"
    shutil.copytree(model_dirs["ctc"], scaled)
    spec = dataclasses.replace(load_spec(scaled), decoding={"ctc_acoustic_scale": 0.1, "max_active": 2000, "beam": 16.0})
    (scaled / "model.json").write_text(spec.to_json())
    at_one = _texts(Transcriber(model_dirs["ctc"], "torch", decode_config=DecodeConfig(beam=16.0, max_active=2000)), audio)
    ours = _texts(Transcriber(scaled, "torch"), audio)
    # The test has power only if the scale changes our own words on many utterances.
    assert sum(at_one[u] != ours[u] for u in audio) > 0.1 * len(audio)
    plain, folded = export_sherpa(model_dirs["ctc"], tmp_path / "s1", int8=False), export_sherpa(scaled, tmp_path / "s2")
    x = np.random.default_rng(0).normal(size=(1, 50, 40)).astype(np.float32)
    feeds = {"x": x, "x_lens": np.array([50], dtype=np.int64)}
    lp1, lp2 = (ort.InferenceSession(str(d / "model.onnx")).run(None, feeds)[0] for d in (plain, folded))
    np.testing.assert_allclose(lp2, 0.1 * lp1, rtol=1e-4, atol=1e-5)
    sherpa = SherpaCtc(folded, feature_dim=40)
    # The int8 model carries the settings too, and loads without the fp32 file beside it.
    (folded / "model.onnx").rename(folded / "fp32.onnx")
    assert sherpa.max_active == SherpaCtc(folded, feature_dim=40, int8=True).max_active == 2000
    (folded / "fp32.onnx").rename(folded / "model.onnx")
    theirs = dict(zip(audio, (" ".join(w) for w in sherpa(list(audio.values())))))
    differ = {u: (ours[u], theirs[u]) for u in audio if ours[u] != theirs[u]}
    assert len(differ) <= 0.05 * len(audio), f"sherpa-onnx and our decoder differ on {len(differ)} of {len(audio)}: {differ}"


def test_a_blank_penalty_reaches_our_search_sherpa_onnx_and_transcribe(recipe, model_dirs, tmp_path, capsys) -> None:
    """The blank penalty a model directory records (``ctc_blank_penalty``, chosen on dev by CTC
    stage 7) is taken off the blank before the scale in our HLG search and, folded into the
    exported graph, in sherpa-onnx's, which then still gives our words; `asr-kd transcribe
    --blank-penalty` overrides it (a CTC model's only)."""
    import shutil

    import onnxruntime as ort

    from asr_kd.bin.cmd_deploy import decode_config_for
    from asr_kd.deploy.sherpa import sherpa_metadata

    audio, _ = _test_audio(recipe[0])
    scaled, penalised = tmp_path / "scaled", tmp_path / "penalised"
    for d, decoding in ((scaled, {"ctc_acoustic_scale": 0.5, "max_active": 2000, "beam": 16.0}),
                        (penalised, {"ctc_acoustic_scale": 0.5, "ctc_blank_penalty": 3.0, "max_active": 2000, "beam": 16.0})):
        shutil.copytree(model_dirs["ctc"], d)
        (d / "model.json").write_text(dataclasses.replace(load_spec(d), decoding=decoding).to_json())
    plain, ours = _texts(Transcriber(scaled, "torch"), audio), _texts(Transcriber(penalised, "torch"), audio)
    # The test has power only if the penalty changes our own words on many utterances.
    assert sum(plain[u] != ours[u] for u in audio) > 0.1 * len(audio)
    assert sum(len(ours[u].split()) for u in audio) > sum(len(plain[u].split()) for u in audio)  # fewer blanks: more words
    s0, s3 = export_sherpa(scaled, tmp_path / "s0", int8=False), export_sherpa(penalised, tmp_path / "s3", int8=False)
    assert float(sherpa_metadata(s3 / "model.onnx")["ctc_blank_penalty"]) == 3.0
    x = np.random.default_rng(0).normal(size=(1, 50, 40)).astype(np.float32)
    feeds = {"x": x, "x_lens": np.array([50], dtype=np.int64)}
    lp0, lp3 = (ort.InferenceSession(str(d / "model.onnx")).run(None, feeds)[0] for d in (s0, s3))
    np.testing.assert_allclose(lp3[..., 0], lp0[..., 0] - 0.5 * 3.0, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(lp3[..., 1:], lp0[..., 1:], rtol=1e-4, atol=1e-5)
    theirs = dict(zip(audio, (" ".join(w) for w in SherpaCtc(s3, feature_dim=40)(list(audio.values())))))
    differ = {u: (ours[u], theirs[u]) for u in audio if ours[u] != theirs[u]}
    assert len(differ) <= 0.05 * len(audio), f"sherpa-onnx and our decoder differ on {len(differ)} of {len(audio)}: {differ}"
    # The model directory's own ONNX export leaves the penalty (and the scale) to our search: applied once there too.
    export_onnx(penalised, int8=False)
    onnx = _texts(Transcriber(penalised, "onnx"), audio)
    assert sum(onnx[u] != ours[u] for u in audio) <= 0.05 * len(audio)
    # transcribe --blank-penalty: 0 gives the directory's words without its penalty; refused for a hybrid model.
    assert decode_config_for(penalised, blank_penalty=0.0).ctc_blank_penalty == 0.0
    assert decode_config_for(penalised).ctc_blank_penalty == 3.0
    utt = next(u for u in audio if plain[u] != ours[u])
    wav = tmp_path / f"{utt}.wav"
    sf.write(wav, audio[utt], 16000, subtype="FLOAT")
    capsys.readouterr()
    for option, words in ((["--blank-penalty", "0"], plain[utt]), ([], ours[utt])):
        assert cli_main(["transcribe", "--model-dir", str(penalised), *option, str(wav)]) == 0
        assert capsys.readouterr().out.strip() == f"{utt} {words}".strip()
    with pytest.raises(ConfigError, match="--blank-penalty applies to a CTC model's HLG search"):
        decode_config_for(model_dirs["hybrid"], blank_penalty=1.0)
    # greedy and beam read the network alone: a search option would be ignored, so it is refused.
    assert cli_main(["transcribe", "--model-dir", str(penalised), "--method", "greedy", "--blank-penalty", "1", str(wav)]) == 1
    assert "--blank-penalty applies to the graph search (HLG); --method greedy" in capsys.readouterr().err
    assert cli_main(["transcribe", "--model-dir", str(penalised), "--method", "beam", "--acoustic-scale", "0.5", "--beam", "9", str(wav)]) == 1
    assert "--beam, --acoustic-scale apply to the graph search (HLG); --method beam" in capsys.readouterr().err
    assert cli_main(["transcribe", "--model-dir", str(penalised), "--method", "greedy", str(wav)]) == 0
    assert capsys.readouterr().out.split()[0] == utt


def test_export_and_sherpa_transcribe_commands(recipe, model_dirs, tmp_path, capsys) -> None:
    """`asr-kd export --sherpa-dir` writes the int8 model too (not with --no-int8), and
    `asr-kd sherpa-transcribe --int8` runs it with the fbank size the export records. A wrong
    --feature-dim is refused; an older export without the max-active is used with a warning."""
    import dataclasses
    import shutil

    from asr_kd.deploy.onnx_export import add_metadata
    from asr_kd.deploy.sherpa import sherpa_metadata

    data, _ = recipe
    ctc = tmp_path / "ctc"
    shutil.copytree(model_dirs["ctc"], ctc)
    # A recorded max-active other than the default, so the older export's fallback shows.
    spec = dataclasses.replace(load_spec(ctc), decoding={"max_active": 2000, "beam": 16.0})
    (ctc / "model.json").write_text(spec.to_json())
    files = [str(p) for p in sorted((data / "corpus" / TEST).rglob("*.flac"))[:3]]
    s, s0 = tmp_path / "s", tmp_path / "s0"
    assert cli_main(["export", "--model-dir", str(ctc), "--sherpa-dir", str(s)]) == 0
    assert cli_main(["export", "--model-dir", str(ctc), "--no-int8", "--sherpa-dir", str(s0)]) == 0
    assert (s / "model.int8.onnx").is_file() and not (s0 / "model.int8.onnx").exists()
    assert int(sherpa_metadata(s / "model.int8.onnx")["ctc_max_active"]) == 2000
    # Only the int8 model is left: --int8 must run it, and the fp32 default must say it is missing.
    (s / "model.onnx").unlink()
    capsys.readouterr()
    assert cli_main(["sherpa-transcribe", "--sherpa-dir", str(s), "--int8", *files]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in out] == [Path(f).stem for f in files]
    assert cli_main(["sherpa-transcribe", "--sherpa-dir", str(s), *files]) == 1
    assert f"{s / 'model.onnx'} does not exist" in capsys.readouterr().err
    assert cli_main(["sherpa-transcribe", "--sherpa-dir", str(s0), "--feature-dim", "80", *files]) == 1
    assert "exported for 40 fbank bins, not 80" in capsys.readouterr().err
    assert cli_main(["sherpa-transcribe", "--sherpa-dir", str(s0), "--int8", *files]) == 1
    assert "model.int8.onnx does not exist; run `asr-kd export --model-dir <model dir> --sherpa-dir" in capsys.readouterr().err
    # Exporting again without int8 removes the int8 model, which would no longer match the folder.
    assert cli_main(["export", "--model-dir", str(ctc), "--no-int8", "--sherpa-dir", str(s)]) == 0
    assert (s / "model.onnx").is_file() and not (s / "model.int8.onnx").exists() and not (ctc / "acoustic.int8.onnx").exists()
    # An export made before the max-active was recorded.
    meta = sherpa_metadata(s0 / "model.onnx")
    del meta["ctc_max_active"]
    add_metadata(s0 / "model.onnx", meta)
    # cli_main set up logging to stderr above, so the warning is read there.
    capsys.readouterr()
    old = SherpaCtc(s0)
    assert old.max_active == DecodeConfig().max_active == 7000
    assert "records no ctc_max_active (an older export): using 7000" in capsys.readouterr().err
    # A clip shorter than one 25 ms window fails alone (it crashed the whole run); two inputs of
    # the same name are refused before anything is decoded (their output lines would share an id).
    short = tmp_path / "short.wav"
    sf.write(short, np.full(100, 0.1, dtype=np.float32), 16000)
    assert cli_main(["sherpa-transcribe", "--sherpa-dir", str(s0), str(short), files[0]]) == 1
    out, err = capsys.readouterr()
    assert [ln.split()[0] for ln in out.splitlines()] == [Path(files[0]).stem]
    assert f"{short}: audio too short for one frame (100 samples; one frame needs 400, 25 ms at 16000 Hz)" in err
    assert "transcribed 1 of 2 files; 1 failed" in err
    twin = tmp_path / "twin" / Path(files[0]).name
    twin.parent.mkdir()
    shutil.copy(files[0], twin)
    assert cli_main(["sherpa-transcribe", "--sherpa-dir", str(s0), files[0], str(twin)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and f"{files[0]} and {twin} would both be transcribed as '{Path(files[0]).stem}'" in err


def test_model_dir_tunes_its_acoustic_scale_on_dev(recipe, tmp_path, capsys) -> None:
    """make-model-dir --tune-scale-on: the sweep's word errors are what the directory makes on the
    dev audio at each scale (decoded here on their own), the search starts at the directory's own
    scale, which wins ties, and model.json then decodes at the best; a CTC system, a test part and
    a missing grid are refused before anything is built."""
    from asr_kd.decode.tuning import choose_scale
    from asr_kd.deploy.model_dir import MODEL_JSON
    from asr_kd.deploy.recipe_paths import tune_model_dir_scale

    data, exp = recipe
    dev = cuts_path(data / "fbank", "dev-clean")
    for system, manifest, scales, match in (("distilled", dev, None, "--scales"),  # stage 7 has not run here: no recorded grid
                                            ("distilled", cuts_path(data / "fbank", TEST), [0.1], "test part"),
                                            ("ctc-frame", dev, [0.5, 1.0], "not a hybrid network")):
        with pytest.raises(ConfigError, match=match):
            make_model_dir_from_recipe(exp, data, system, tmp_path / "refused", tune_on=manifest, scales=scales)
        assert not (tmp_path / "refused").exists()
    out = make_model_dir_from_recipe(exp, data, "distilled", tmp_path / "tuned")
    own = 0.15  # the directory's scale before tuning: where the search starts, and the winner of a tie
    spec = load_spec(out)
    (out / MODEL_JSON).write_text(dataclasses.replace(spec, decoding={**spec.decoding, "acoustic_scale": own}).to_json())
    grid = [0.2, 0.05, 0.1, 0.0667, 0.15, 0.3]
    tune_model_dir_scale(out, dev, grid)
    spec = load_spec(out)
    sweep = spec.scale_sweep
    assert sweep["part"] == "dev-clean" and own in sweep["scales"] and 3 <= len(sweep["scales"]) <= len(grid)
    assert spec.decoding["acoustic_scale"] == sweep["best"] == choose_scale(sweep["scales"], sweep["errors"], own)
    refs = {c.id: " ".join(s.text for s in c.supervisions) for c in load_manifest_lazy(dev)}
    audio = {u: s for u, _, s in manifest_items(dev, 16000)}
    for scale, errors in zip(sweep["scales"], sweep["errors"]):
        tr = Transcriber(out, "torch", decode_config=dataclasses.replace(spec.decode_config(), acoustic_scale=scale))
        assert compute_wer(refs, _texts(tr, audio)).errors == errors, scale
    assert Transcriber(out, "torch").search.config.acoustic_scale == sweep["best"]
    assert cli_main(["make-model-dir", "--exp", str(exp), "--data", str(data), "--system", "distilled", "--out", str(tmp_path / "x"),
                     "--scales", "0.1"]) == 1
    assert "--tune-scale-on" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_ctc_model_dir_before_ctc_stage_7_says_it_is_untuned(recipe, tmp_path, caplog) -> None:
    # This recipe trained a CTC student but never ran CTC stage 7: the defaults, and a warning.
    data, exp = recipe
    with caplog.at_level("WARNING"):
        d = make_model_dir_from_recipe(exp, data, "ctc-frame", tmp_path / "ctc")
    assert load_spec(d).decoding == {} and "CTC stage 7 has not run" in caplog.text


def test_sherpa_export_refuses_the_hybrid_model(model_dirs, tmp_path) -> None:
    with pytest.raises(ConfigError, match="sherpa-onnx runs CTC models only"):
        export_sherpa(model_dirs["hybrid"], tmp_path / "s")


def test_deploy_report_cost_table_and_gate(recipe, model_dirs, tmp_path) -> None:
    data, _ = recipe
    h = model_dirs["hybrid"]
    systems = [SystemSpec("ensemble", (h, h)), SystemSpec("distilled", (h,)), SystemSpec("distilled", (h,), "onnx"),
               SystemSpec("distilled", (h,), "onnx-int8"), SystemSpec("ctc", (model_dirs["ctc"],))]
    md = tmp_path / "RESULTS.md"
    rows, gates, _ = deploy_report(systems, cuts_path(data / "fbank", TEST), gate_system="distilled", baseline="ensemble",
                                  max_cuts=6, results_md=md, command="test", plot=tmp_path / "wer_cost.png")
    by = {(r.system, r.runtime): r for r in rows}
    params = sum(p.numel() for p in load_network(h).parameters())
    assert by[("distilled", "torch")].params == params
    assert by[("ensemble", "torch")].params == 2 * params
    assert by[("ensemble", "torch")].macs_per_second == pytest.approx(2 * by[("distilled", "torch")].macs_per_second)
    assert by[("distilled", "onnx-int8")].size_mb < 0.6 * by[("distilled", "onnx")].size_mb
    assert all(r.acoustic_rtf > 0 and r.search_rtf > 0 and r.ref_words == by[("ensemble", "torch")].ref_words for r in rows)
    assert len(gates) == 1 and gates[0].passed == (gates[0].relative <= 0.02)
    gate = gates[0]
    section = read_section(md, "## Deployment")
    assert section is not None and gate.markdown() in section and section.count("\n| ") == 1 + len(rows)
    assert "![WER against acoustic cost](wer_cost.png)" in section
    # Where and with which code it ran: speeds depend on the CPU, WERs on the code.
    from asr_kd.stages.provenance import code_version, environment, environment_text

    env = environment()
    env.pop("torch_threads")
    assert section.rstrip().endswith(environment_text(env, code_version())) and " torch thread(s)" not in section
    wers = normalisation_wers(h, cuts_path(data / "fbank", TEST), cmvn_path(data / "fbank", TEST), max_cuts=6)
    assert set(wers) == {"per speaker", "global", "per utterance"}
    assert len({w.ref_words for w in wers.values()}) == 1 and wers["global"].ref_words == by[("distilled", "torch")].ref_words


def test_deployment_search_is_chosen_on_dev_and_measured_end_to_end(recipe, model_dirs) -> None:
    from asr_kd.deploy.report import load_test_audio
    from asr_kd.deploy.speed import SearchSetting, choose_setting, measure_speed, parse_search_grid, speed_markdown, with_setting
    from asr_kd.stages.layout import RecipeLayout

    data, exp = recipe
    h = model_dirs["hybrid"]
    layout = RecipeLayout(data, exp)
    dev_audio, dev_refs = load_test_audio(layout.fbank_cuts(layout.dev_part), 16000, 6)
    test_audio, test_refs = _test_audio(data, 6)
    # target 0: narrow as far as dev allows (the tiny model's search may already meet the 0.02 target).
    result = measure_speed(h, "onnx-int8", dev_audio, dev_refs, test_audio, test_refs, parse_search_grid("9:500,5:20"), tolerance=0.5,
                           target=0.0)
    assert not result.reference_meets_target and result.dev_end_to_end_reference > 0
    spec_cfg = load_spec(h).decode_config()
    # The measurement runs one utterance per call, as the cost table does; so does transcription
    # here (dynamic int8 quantises each batch's activations with its own scale, so a batch of
    # four gives slightly different posteriors, and at a narrow beam, different words).
    # The first dev point is the model directory's own decoding: the errors transcription makes with it.
    assert result.dev_points[0].setting == result.reference == SearchSetting(spec_cfg.beam, spec_cfg.max_active)
    assert result.dev_points[0].errors == compute_wer(dev_refs, _texts(Transcriber(h, "onnx-int8"), dev_audio, 1)).errors
    narrow = Transcriber(h, "onnx-int8", decode_config=with_setting(spec_cfg, SearchSetting(5.0, 20)))
    assert result.dev_points[2].errors == compute_wer(dev_refs, _texts(narrow, dev_audio, 1)).errors
    assert result.chosen == choose_setting(result.dev_points, result.reference, 0.5)
    # Test at the tables' setting and at the chosen one: what transcription gives with each.
    assert result.test_reference.errors == compute_wer(test_refs, _texts(Transcriber(h, "onnx-int8"), test_audio, 1)).errors
    chosen = Transcriber(h, "onnx-int8", decode_config=with_setting(spec_cfg, result.chosen.setting))
    assert result.test_chosen.errors == compute_wer(test_refs, _texts(chosen, test_audio, 1)).errors
    assert min(result.features_rtf, result.acoustic_rtf, result.search_rtf_chosen) > 0
    text = speed_markdown(result, "distilled (onnx-int8)", "dev-clean", TEST, 0.5)
    assert f"Test WER {100 * result.test_chosen.wer:.2f}% against {100 * result.test_reference.wer:.2f}%" in text
    assert f"**{result.end_to_end_rtf:.4f}**" in text
    # With nothing narrower to try, the tables' setting is chosen and the test part is searched once, not twice.
    same = measure_speed(h, "onnx-int8", dev_audio, dev_refs, test_audio, test_refs, (), tolerance=0.5, target=0.0)
    assert same.chosen.setting == same.reference and same.test_chosen is same.test_reference
    assert same.search_rtf_chosen == same.search_rtf_reference and same.test_reference.errors == result.test_reference.errors
    # A target any search meets keeps the tables' setting, whatever dev says of the narrower ones.
    kept = measure_speed(h, "onnx-int8", dev_audio, dev_refs, test_audio, test_refs, parse_search_grid("9:500,5:20"), tolerance=0.5,
                         target=1e6)
    assert kept.reference_meets_target and kept.chosen.setting == kept.reference and kept.test_chosen is kept.test_reference
    assert kept.dev_end_to_end_reference > 0 and [p.errors for p in kept.dev_points] == [p.errors for p in result.dev_points]


def test_deploy_report_times_the_hybrid_and_the_ctc_student_each_on_its_own_search(recipe, model_dirs, tmp_path) -> None:
    """Two --speed systems: one paragraph each, in the order given, and the CTC one's HLG search at the
    chosen pruning gives the errors its transcription gives there (what its paragraph reports)."""
    from asr_kd.deploy.speed import SearchSetting, parse_search_grid, with_setting
    from asr_kd.stages.layout import RecipeLayout

    data, exp = recipe
    h, c = model_dirs["hybrid"], model_dirs["ctc"]
    layout = RecipeLayout(data, exp)
    dev = layout.fbank_cuts(layout.dev_part)
    speed = [SystemSpec("distilled", (h,), "onnx-int8"), SystemSpec("ctc-frame", (c,), "onnx-int8")]
    _, _, text = deploy_report(speed, cuts_path(data / "fbank", TEST), max_cuts=4, speed_system=speed, dev_manifest=dev,
                               search_grid=parse_search_grid("5:20"), search_tolerance=10.0, rtf_target=0.0)
    paragraphs = re.findall(r"Search pruning for deployment, (\S+) \(onnx-int8\)", text)
    assert paragraphs == ["distilled", "ctc-frame"]
    # A tolerance of 10 (1000%) lets the narrow setting through for both: each paragraph's test WER is
    # its own transcription's at beam 5, max-active 20.
    test_audio, test_refs = _test_audio(data, 4)
    for (system, d), part in zip((("distilled", h), ("ctc-frame", c)), text.split("Search pruning for deployment, ")[1:]):
        assert "(chosen)" in part and "| 5 (chosen) | 20 |" in part, part
        narrow = Transcriber(d, "onnx-int8", decode_config=with_setting(load_spec(d).decode_config(), SearchSetting(5.0, 20)))
        wer = compute_wer(test_refs, _texts(narrow, test_audio, 1))
        assert f"Test WER {100 * wer.wer:.2f}% against" in part, (system, part)


def test_gmm_model_dir_decodes_like_stage_3(recipe, tmp_path) -> None:
    """A GMM-HMM model directory (stage 3's tri system): fed the recipe's own features (per-speaker
    CMN), its GMMs and search give stage 3's test hypotheses word for word; from audio, its MFCCs
    are the stored ones; it refuses what only networks do."""
    from asr_kd.data.features import cmvn_key
    from asr_kd.deploy.acoustic import GmmAcoustic
    from asr_kd.deploy.search import Searcher
    from asr_kd.gmm.features import gmm_features
    from asr_kd.metrics.wer import read_transcripts

    data, exp = recipe
    d = make_model_dir_from_recipe(exp, data, "tri", tmp_path / "tri")
    spec = load_spec(d)
    assert spec.kind == "gmm" and not (d / "model.pt").exists() and (d / "gmm.npz").is_file()
    g = spec.gmm_features
    acoustic, search = GmmAcoustic(d), Searcher(d, spec)
    stats = CmvnStats.load(cmvn_path(data / "mfcc", TEST))
    cuts = list(load_manifest_lazy(cuts_path(data / "mfcc", TEST)))
    hyps = {}
    for cut in cuts:
        x = gmm_features(stats.normalize(cut.load_features(), cmvn_key(cut, "speaker"), variance=False),
                         g["delta_order"], g["delta_window"], g["utterance_cmvn"])
        hyps[cut.id] = search(acoustic([x])[0], cut.id).text
    stage3 = read_transcripts(exp / "gmm" / f"decode_tri_{TEST}" / "hyp.txt")
    assert hyps == {u: stage3.get(u, "") for u in hyps} and len(hyps) == len(stage3)
    # From audio: the model directory computes the MFCCs stage 1 stored.
    tr = Transcriber(d)
    (_, _, samples), = [i for i in manifest_items(cuts_path(data / "fbank", TEST), 16000) if i[0] == cuts[0].id]
    stored = cuts[0].load_features()  # lilcom-compressed on disk: equal to a small fraction of the range
    assert np.abs(tr.extract(samples) - stored).max() < 0.01 * np.abs(stored).max()
    assert tr.features(samples).shape == (cuts[0].num_frames, 13 * (1 + g["delta_order"]))
    # Its cost-table row: every Gaussian costs 2 x dim multiply-adds a frame; the WER is transcription's.
    from asr_kd.deploy.report import measure_system

    audio, refs = _test_audio(data, 4)
    row, _ = measure_system("tri", [d], "torch", audio, refs)
    gauss, dim = int(acoustic.scorer.sizes.sum()), acoustic.scorer.dim
    assert row.params == gauss * (2 * dim + 1) and row.macs_per_second == pytest.approx(100 * gauss * 2 * dim)
    assert row.errors == compute_wer(refs, _texts(Transcriber(d), audio, 1)).errors and row.acoustic_rtf > 0
    with pytest.raises(ConfigError, match="GMM-HMM model directory: it has no network"):
        export_onnx(d)
    with pytest.raises(ConfigError, match="runs with numpy; --backend onnx applies to networks"):
        Transcriber(d, "onnx")


def test_transcribe_an_ensemble_of_model_dirs(recipe, model_dirs, tmp_path, capsys) -> None:
    """`transcribe --model-dir A,B` decodes the mean of the two networks' posteriors."""
    import shutil

    from asr_kd.deploy.acoustic import TorchAcoustic

    data, _ = recipe
    a = model_dirs["hybrid"]
    b = tmp_path / "other"
    shutil.copytree(a, b)
    payload = torch.load(b / "model.pt", weights_only=True)
    gen = torch.Generator().manual_seed(0)
    payload["model"] = {k: v + 0.3 * v.std() * torch.randn(v.shape, generator=gen) if v.is_floating_point() and v.numel() > 1 else v
                        for k, v in payload["model"].items()}
    torch.save(payload, b / "model.pt")
    audio, _ = _test_audio(data, 4)
    files = []
    for u, x in audio.items():
        sf.write(tmp_path / f"{u}.wav", x, 16000)
        files.append(str(tmp_path / f"{u}.wav"))
    out = tmp_path / "ens.txt"
    assert cli_main(["transcribe", "--model-dir", f"{a},{b}", "--output", str(out), *files]) == 0
    got = {ln.split()[0]: " ".join(ln.split()[1:]) for ln in out.read_text().splitlines()}
    tr = Transcriber(a)
    nets = [TorchAcoustic(load_network(d)) for d in (a, b)]
    expected = {}
    for f in files:
        feats = tr.features(sf.read(f, dtype="float32")[0])
        stack = np.stack([n([feats])[0] for n in nets])
        fused = np.log(np.exp(stack).mean(axis=0)).astype(np.float32)
        expected[Path(f).stem] = tr.search(fused, Path(f).stem).text
    assert got == expected
    capsys.readouterr()
    assert cli_main(["transcribe", "--model-dir", f"{a},{model_dirs['ctc']}", *files[:1]]) != 0
    assert f"an ensemble fuses hybrid DNN model directories; {model_dirs['ctc']} is a ctc model" in capsys.readouterr().err
