"""Stage 2: the lang folder: lexicon, phones, L.fst, the n-gram LM and G.fst.

``<data>/lang/provenance.json`` records the lang config, the parts, stage 0's manifest
fingerprint and the SHA-256 of any user file read (``--lexicon``, ``--lm-text``, ``--lm-arpa``),
so that an edited lexicon or LM redoes the lang and everything after it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from asr_kd.config import LangConfig
from asr_kd.errors import DataError
from asr_kd.lang.prepare import LangSummary, prepare_lang_from_manifests
from asr_kd.stages.provenance import StageGuard, StageRecord, file_sha256, input_fingerprint


def prepare(
    manifest_dir: Path | str, output_dir: Path | str, config: LangConfig, lexicon: Path | None = None, train_split: str = "train-clean-100",
    dev_split: str | None = "dev-clean", splits: Sequence[str] | None = None, lm_arpa: Path | None = None, lm_text: Path | None = None,
    command: str = "",
) -> LangSummary | StageRecord:
    """Build the lang folder (skipped when the record matches); return its summary, or the record."""
    inputs = {"manifests": input_fingerprint(manifest_dir, sorted(Path(manifest_dir).glob("librispeech_supervisions_*.jsonl.gz")))}
    for name, path in (("lexicon", lexicon), ("lm_text", lm_text), ("lm_arpa", lm_arpa)):
        if path is not None:
            if not Path(path).is_file():
                raise DataError(f"--{name.replace('_', '-')} {path} does not exist; pass an existing file")
            inputs[name] = file_sha256(path)[:16]
    settings = {"lang": config, "train_split": train_split, "dev_split": dev_split, "splits": None if splits is None else list(splits)}
    guard = StageGuard("stage 2 (lang)", output_dir, settings, inputs, command)
    if not guard.needs_work():
        assert guard.record is not None
        return guard.record
    summary = prepare_lang_from_manifests(manifest_dir, output_dir, config, lexicon, train_split, dev_split, splits, lm_arpa, lm_text)
    guard.finish(guard.all_files())
    return summary
