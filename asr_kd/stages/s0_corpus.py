"""Stage 0: the corpus as lhotse manifests: the synthetic offline corpus (``synthesize``) and the
manifests of a LibriSpeech-layout folder, real or synthetic (``prepare``).

The synthetic corpus folder (``<data>/corpus``) and the manifest folder (``<data>/manifests``)
each get a ``provenance.json``: the synthesis settings, or the parts and a fingerprint of the
corpus files (relative paths and sizes), so that a changed corpus or part list redoes the
manifests and every stage after them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from asr_kd.config import SynthConfig
from asr_kd.data.librispeech import PartReport, manifest_path, prepare_manifests, source_parts
from asr_kd.data.synth import MARKER_NAME, SynthSummary, synthesize_corpus
from asr_kd.data.voices import plan_engines
from asr_kd.stages.provenance import StageGuard, StageRecord, fingerprint, listing_fingerprint, read_record


def synthesize(corpus_dir: Path | str, config: SynthConfig, command: str = "") -> SynthSummary | StageRecord:
    """Write the synthetic corpus into ``corpus_dir`` (skipped when its record matches
    ``config``); return the synthesis summary, or the record when nothing was redone."""
    corpus_dir = Path(corpus_dir)
    # A corpus without a record (an older version's, or a folder of the user's) is never emptied:
    # synthesize_corpus reuses it when its SYNTHETIC.json matches and refuses it otherwise.
    # The engines that will actually speak (installed or not) are an input: installing Festival or
    # Kokoro later makes a new corpus rather than keep the espeak-only one.
    plan = plan_engines(config.engines, config.ood_engine)
    guard = StageGuard("stage 0 (synthetic corpus)", corpus_dir, config,
                       {"engines": fingerprint([plan.train, plan.ood, plan.ood_accents])}, command, adopt_unrecorded=True)
    if not guard.needs_work():
        assert guard.record is not None
        return guard.record
    summary = synthesize_corpus(corpus_dir, config)
    guard.finish([corpus_dir / MARKER_NAME, *sorted(corpus_dir.rglob("*.trans.txt"))])
    return summary


def prepare(corpus_dir: Path | str, output_dir: Path | str, parts: Sequence[str], num_jobs: int = 1,
            command: str = "") -> dict[str, PartReport] | StageRecord:
    """Write the manifests of ``parts`` of ``corpus_dir`` into ``output_dir`` (skipped when the
    record matches the parts and the corpus files); return the per-part reports, or the record."""
    corpus_dir, output_dir = Path(corpus_dir), Path(output_dir)
    folders = sorted({p for part in parts for p in source_parts(part)})
    inputs = {"corpus_files": listing_fingerprint(corpus_dir, folders)}
    synth = read_record(corpus_dir)
    if synth is not None:
        inputs["synthetic_corpus"] = synth.fingerprint
    guard = StageGuard("stage 0 (manifests)", output_dir, {"parts": list(parts)}, inputs, command)
    if not guard.needs_work():
        assert guard.record is not None
        return guard.record
    reports = prepare_manifests(corpus_dir, output_dir, parts, num_jobs=num_jobs)
    guard.finish([manifest_path(output_dir, kind, part) for part in parts for kind in ("recordings", "supervisions")])
    return reports
