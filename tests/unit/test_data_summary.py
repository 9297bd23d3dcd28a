"""`asr-kd data-summary`: OOV rates of the parts stage 2 saw, and of a part it did not see."""

from __future__ import annotations

from pathlib import Path

from lhotse import SupervisionSegment, SupervisionSet

from asr_kd.config import LangConfig
from asr_kd.data.librispeech import manifest_path
from asr_kd.lang.prepare import prepare_lang
from asr_kd.report.data_summary import summarize_data


def _sups(texts: list[str], prefix: str) -> SupervisionSet:
    return SupervisionSet.from_segments(
        SupervisionSegment(id=f"{prefix}-{k}", recording_id=f"{prefix}-{k}", start=0.0, duration=2.0, text=t, speaker=f"s{k % 2}")
        for k, t in enumerate(texts))


def test_a_part_stage_2_did_not_see_gets_its_oov_rate_counted(tmp_path: Path) -> None:
    parts = {"train-clean-100": _sups(["THE CAT SAT ON THE MAT", "A DOG READ THE BOOK"], "tr"),
             "dev-clean": _sups(["THE DOG SAT"], "dv")}
    prepare_lang(parts, tmp_path / "lang", LangConfig(g2p="none", max_oov_rate=1.0))
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    # A user's own part: 2 of its 8 running words (ZORBLAX twice) are in no lexicon.
    parts["my-test"] = _sups(["THE CAT ZORBLAX", "A DOG SAT ON ZORBLAX"], "mt")
    for name, sups in parts.items():
        sups.to_file(manifest_path(manifests, "supervisions", name))
    text = summarize_data(manifests, tmp_path / "lang", ["train-clean-100", "my-test"])
    rows = {line.split()[0]: line.split() for line in text.splitlines()[1:3]}
    assert rows["train-clean-100"][4] == "0.00"
    assert rows["my-test"][1:5] == ["0.00", "2", "2", "25.00*"]
    assert text.splitlines()[-1].startswith(f"* a part stage 2 did not see: running words not in {tmp_path / 'lang' / 'words.txt'}")
