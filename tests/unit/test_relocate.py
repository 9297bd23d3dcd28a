"""Moving a data folder: its manifests' absolute paths are rewritten and the data loads again."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
from lhotse import load_manifest

from asr_kd.bin.cli import main as cli_main
from asr_kd.config import FeatureConfig
from asr_kd.data.features import compute_features_for_parts, cuts_path
from asr_kd.data.librispeech import manifest_path, prepare_manifests
from asr_kd.data.relocate import relocate_manifests
from asr_kd.errors import DataError
from tests.conftest import write_tone_corpus


def test_moved_data_folder_loads_after_relocation(tmp_path: Path, capsys) -> None:
    old = tmp_path / "old" / "data"
    write_tone_corpus(old / "corpus", {"train-clean-100": [11]}, utts_per_speaker=2)
    # A corpus outside the folder, which does not move.
    outside = write_tone_corpus(tmp_path / "LibriSpeech", {"dev-clean": [21]}, utts_per_speaker=2)
    prepare_manifests(old / "corpus", old / "manifests", ["train-clean-100"])
    prepare_manifests(outside, old / "manifests", ["dev-clean"])
    compute_features_for_parts(old / "manifests", old, ["train-clean-100", "dev-clean"], FeatureConfig(), kinds=["fbank"])
    reference = {c.id: c.load_features() for c in load_manifest(cuts_path(old / "fbank", "train-clean-100"))}

    new = tmp_path / "new" / "data"
    shutil.move(str(old.parent), str(new.parent))
    cuts = load_manifest(cuts_path(new / "fbank", "train-clean-100"))
    with pytest.raises(Exception):
        next(iter(cuts)).load_features()  # still pointing at the old place

    dry = relocate_manifests(new, old, dry_run=True)
    assert dry.paths_changed > 0 and dry.missing == 0
    assert str(old) in gzip.open(cuts_path(new / "fbank", "train-clean-100"), "rt").read()  # unchanged by the dry run
    # A wrong destination is caught: the rewritten paths would not exist.
    assert cli_main(["relocate", "--dir", str(new), "--from", str(old), "--to", str(tmp_path / "wrong"), "--dry-run"]) == 1
    assert "missing at the new place, e.g." in capsys.readouterr().out
    assert cli_main(["relocate", "--dir", str(new), "--from", str(old)]) == 0
    assert "0 of them missing" in capsys.readouterr().out
    for cut in load_manifest(cuts_path(new / "fbank", "train-clean-100")):
        assert np.array_equal(cut.load_features(), reference[cut.id])
        assert cut.load_audio().shape[1] > 0
    # The corpus outside the moved folder keeps its paths.
    dev_rec = next(iter(load_manifest(manifest_path(new / "manifests", "recordings", "dev-clean"))))
    assert dev_rec.sources[0].source.startswith(str(outside))
    again = relocate_manifests(new, old)  # nothing left to rewrite
    assert again.paths_changed == 0 and again.manifests == dry.manifests


def test_relocation_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        relocate_manifests(tmp_path / "nowhere", "/old")
    with pytest.raises(DataError, match="holds no lhotse manifest"):
        relocate_manifests(tmp_path, "/old")
    with pytest.raises(DataError, match="must be an absolute path"):
        relocate_manifests(tmp_path, "old")
