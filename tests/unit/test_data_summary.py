"""`asr-kd data-summary`: OOV rates of the parts stage 2 saw, and of a part it did not see."""

from __future__ import annotations

from pathlib import Path

import pytest
from lhotse import SupervisionSegment, SupervisionSet

from asr_kd.config import LangConfig
from asr_kd.data.librispeech import manifest_path
from asr_kd.errors import DataError
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


def test_a_missing_lang_dir_is_one_line_error(tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    _sups(["THE CAT"], "dv").to_file(manifest_path(manifests, "supervisions", "dev-clean"))
    with pytest.raises(DataError, match=rf"^lang directory {tmp_path / 'nonexistent'} does not exist; run stage 2"):
        summarize_data(manifests, tmp_path / "nonexistent", ["dev-clean"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=rf"^{tmp_path / 'empty' / 'lang.json'} does not exist; run stage 2"):
        summarize_data(manifests, tmp_path / "empty", ["dev-clean"])
    assert summarize_data(manifests, None, ["dev-clean"]).splitlines()[1].split() == ["dev-clean", "0.00", "1", "1"]


def test_a_truncated_manifest_is_one_line_error(tmp_path: Path) -> None:
    path = manifest_path(tmp_path, "supervisions", "dev-clean")
    _sups(["THE CAT SAT"] * 50, "dv").to_file(path)
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError, match=rf"^manifest {path} is corrupt or truncated \(Compressed file ended.*\); rerun stage 0 \(asr-kd prepare-manifests\)"):
        summarize_data(tmp_path, None, ["dev-clean"])
