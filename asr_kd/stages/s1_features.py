"""Stage 1: fbank (networks) and MFCC (GMMs) features with lilcom storage, plus CMVN statistics.

One record, ``<data>/fbank/provenance.json``, covers both feature folders (``<data>/mfcc`` is
emptied with ``<data>/fbank`` on a redo): the feature config, the parts and kinds, and stage 0's
manifest fingerprint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from asr_kd.config import FeatureConfig, save_config
from asr_kd.data.features import FeatureReport, cmvn_path, compute_features_for_parts, cuts_path
from asr_kd.stages.layout import FEATURES_YAML
from asr_kd.stages.provenance import StageGuard, StageRecord, input_fingerprint

FEATURE_KINDS = ("fbank", "mfcc")


def compute(manifest_dir: Path | str, output_dir: Path | str, parts: Sequence[str], cfg: FeatureConfig,
            kinds: Sequence[str] = FEATURE_KINDS, command: str = "") -> list[FeatureReport] | StageRecord:
    """Compute ``kinds`` of features of ``parts`` into ``output_dir/<kind>`` (skipped when the
    record matches); return the reports, or the record when nothing was redone."""
    output_dir = Path(output_dir)
    manifests = input_fingerprint(manifest_dir, sorted(Path(manifest_dir).glob("librispeech_*.jsonl.gz")))
    folders = [output_dir / k for k in kinds]
    guard = StageGuard("stage 1 (features)", folders[0], {"features": cfg, "parts": list(parts), "kinds": list(kinds)},
                       {"manifests": manifests}, command, extra_folders=folders[1:])
    if not guard.needs_work():
        assert guard.record is not None
        return guard.record
    reports = compute_features_for_parts(manifest_dir, output_dir, parts, cfg, kinds)
    outputs = [f for k in kinds for p in parts for f in (cuts_path(output_dir / k, p), cmvn_path(output_dir / k, p))]
    if "fbank" in kinds:
        # The networks' front end, as decode-part and the model directories read it: written once
        # the fbank features exist, and only by a run that made them (an MFCC-only run with other
        # settings must not describe the fbank features).
        save_config(cfg, output_dir / FEATURES_YAML)
        outputs.append(output_dir / FEATURES_YAML)
    guard.finish(outputs)
    return reports
