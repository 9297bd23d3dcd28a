"""The decoding commands: make-hclg / make-hlg on real files, compute-wer, and their errors."""

from __future__ import annotations

import json

import numpy as np
from decode_toy import make_lang, topology

from asr_kd.bin.cli import main
from asr_kd.decode.hclg import load_hclg
from asr_kd.decode.hlg import load_hlg
from asr_kd.gmm.topology import topology_text
from asr_kd.gmm.system import GmmSystem
from asr_kd.gmm.tree import monophone_tree
from asr_kd.kaldi import khg


def _monophone_system(lang) -> GmmSystem:
    """A GMM system with one standard-normal Gaussian per pdf (enough to build graphs)."""
    text = topology_text(lang.nonsilence_phone_ids, lang.silence_phone_ids)
    topo = topology(lang)
    tree = monophone_tree(dict(zip(topo.phones, (topo.num_pdf_classes(p) for p in topo.phones))))
    tm = khg.TransitionModel(ctx_dep=tree.to_context_dependency(), hmm_topo=topo)
    am = khg.AmDiagGmm()
    for _ in range(tree.num_pdfs):
        g = khg.DiagGmm(nmix=1, dim=3)
        g.set_weights(np.ones(1, dtype=np.float32))
        g.set_means(np.zeros((1, 3), dtype=np.float32))
        g.set_invvars(np.ones((1, 3), dtype=np.float32))
        g.compute_gconsts()
        am.add_pdf(g)
    return GmmSystem(text, tree, tm, am)


def test_make_graphs_from_the_command_line(tmp_path, capsys) -> None:
    lang = make_lang(tmp_path / "data")
    model = tmp_path / "mono.npz"
    _monophone_system(lang).save(model)
    assert main(["make-hclg", "--lang-dir", str(lang.lang_dir), "--model", str(model), "--graph-dir", str(tmp_path / "graph")]) == 0
    info = json.loads((tmp_path / "graph" / "hclg.json").read_text())
    assert load_hclg(tmp_path / "graph").num_states == info["num_states"] > 0
    assert main(["make-hlg", "--lang-dir", str(lang.lang_dir), "--graph-dir", str(tmp_path / "ctc")]) == 0
    assert load_hlg(tmp_path / "ctc").num_states > 0
    out = capsys.readouterr().out
    assert "HCLG.fst:" in out and "HLG.fst:" in out
    # A missing model is a one-line user error, exit status 1.
    assert main(["make-hclg", "--lang-dir", str(lang.lang_dir), "--model", str(tmp_path / "nope.npz"), "--graph-dir", str(tmp_path / "g2")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope.npz does not exist" in err


def test_compute_wer_command(tmp_path, capsys) -> None:
    (tmp_path / "ref").write_text("u1 A B C\nu2 D E\n")
    (tmp_path / "hyp").write_text("u1 A X C\n")
    assert main(["compute-wer", "--ref", str(tmp_path / "ref"), "--hyp", str(tmp_path / "hyp"), "--report", str(tmp_path / "wer_details")]) == 0
    assert capsys.readouterr().out.strip() == "%WER 60.00 [ 3 / 5, 0 ins, 2 del, 1 sub ]"
    assert json.loads((tmp_path / "wer_details.json").read_text())["missing"] == ["u2"]
    assert main(["compute-wer", "--ref", str(tmp_path / "missing"), "--hyp", str(tmp_path / "hyp")]) == 1
