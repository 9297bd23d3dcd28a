"""Stage 2: the lang folder: lexicon, phones, L.fst, the n-gram LM and G.fst.

``<data>/lang/provenance.json`` records the lang config, the parts, stage 0's manifest
fingerprint and the SHA-256 of any user file read (``--lexicon``, ``--lm-text``, ``--lm-arpa``),
so that an edited lexicon or LM redoes the lang and everything after it.

The LM's sentences, words, OOV rate and perplexity on every evaluation part go to
``<data>/lang/lm/perplexity.json`` (not in the record) and, with ``results_md``, to its RESULTS.md
section; a skipped stage writes the section too (measuring the parts then if an older run left no
such file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from asr_kd.config import DEFAULT_DEV_PART, DEFAULT_TRAIN_PART, LangConfig
from asr_kd.errors import DataError
from asr_kd.lang.lm_eval import REPORT_NAME, LmReport, measure_lm, read_report, results_section
from asr_kd.lang.prepare import LangSummary, lang_splits, load_supervisions, prepare_lang_from_manifests, transcript_tokens
from asr_kd.report.results_md import write_section
from asr_kd.stages.provenance import StageGuard, StageRecord, file_sha256, input_fingerprint
from asr_kd.utils import write_text_atomic

RESULTS_HEADING = "## Language model (stage 2)"
NEXT_HEADING = "## GMM-HMM (stage 3)"  # the section a new one goes before (asr_kd.stages.s3_gmm.RESULTS_HEADING)


def prepare(
    manifest_dir: Path | str, output_dir: Path | str, config: LangConfig, lexicon: Path | None = None, train_split: str = DEFAULT_TRAIN_PART,
    dev_split: str | None = DEFAULT_DEV_PART, splits: Sequence[str] | None = None, lm_arpa: Path | None = None, lm_text: Path | None = None,
    command: str = "", results_md: Path | str | None = None, results_command: str | None = None,
) -> LangSummary | StageRecord:
    """Build the lang folder (skipped when the record matches) and, with ``results_md``, write its
    section there (quoting ``results_command``, default ``command``); return the lang summary, or
    the record of a skipped stage."""
    inputs = {"manifests": input_fingerprint(manifest_dir, sorted(Path(manifest_dir).glob("librispeech_supervisions_*.jsonl.gz")))}
    for name, path in (("lexicon", lexicon), ("lm_text", lm_text), ("lm_arpa", lm_arpa)):
        if path is not None:
            if not Path(path).is_file():
                raise DataError(f"--{name.replace('_', '-')} {path} does not exist; pass an existing file")
            inputs[name] = file_sha256(path)[:16]
    settings = {"lang": config, "train_split": train_split, "dev_split": dev_split, "splits": None if splits is None else list(splits)}
    guard = StageGuard("stage 2 (lang)", output_dir, settings, inputs, command)
    result: LangSummary | StageRecord
    report: LmReport | None = None
    if guard.needs_work():
        result = prepare_lang_from_manifests(manifest_dir, output_dir, config, lexicon, train_split, dev_split, splits, lm_arpa, lm_text)
        guard.finish(guard.all_files())
    else:
        assert guard.record is not None
        result = guard.record
        report = read_report(output_dir)
    # The report is no recorded output: it is read off the recorded ones (lang.json, words.txt,
    # lm.arpa) and the manifests, in seconds, so a lang made by older code (or a deleted report)
    # gets one without redoing stage 2 and everything after it.
    report = report or lm_report(manifest_dir, output_dir, train_split, dev_split, splits)
    if results_md is not None:
        write_section(results_md, RESULTS_HEADING, results_section(report, RESULTS_HEADING, command if results_command is None else results_command),
                      before=NEXT_HEADING)
    return result


def lm_report(manifest_dir: Path | str, lang_dir: Path | str, train_split: str, dev_split: str | None,
              splits: Sequence[str] | None) -> LmReport:
    """Measure the LM of ``lang_dir`` on the evaluation parts that stage 2 read (every part but
    ``train_split``), write ``<lang_dir>/lm/perplexity.json`` and return the report."""
    parts = [p for p in lang_splits(manifest_dir, train_split, dev_split, splits) if p != train_split]
    sentences = {part: transcript_tokens(sups) for part, sups in load_supervisions(manifest_dir, parts).items()}
    report = measure_lm(lang_dir, sentences, train_split)
    write_text_atomic(Path(lang_dir) / REPORT_NAME, report.to_json())
    return report
