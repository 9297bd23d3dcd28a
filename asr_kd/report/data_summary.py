"""The summary printed after stages 0-2: corpus sizes, vocabulary, OOV rates, LM perplexity."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from asr_kd.data.librispeech import manifest_path, read_manifest
from asr_kd.errors import DataError


def summarize_data(manifest_dir: Path | str, lang_dir: Path | str | None, parts: Sequence[str]) -> str:
    """Return a short text table: hours, utterances and speakers per part, then (when
    ``lang_dir`` is given; DataError where it has no ``lang.json``) vocabulary, lexicon size,
    OOV rate per part, dev perplexity.
    A part that stage 2 did not see (a user's own test set) gets its OOV rate counted now against
    the lang's ``words.txt``, marked with ``*``."""
    lines = [f"{'part':<18}{'hours':>8}{'utts':>8}{'speakers':>10}{'OOV %':>8}"]
    lang = None
    unseen = False
    if lang_dir is not None:
        lang_json = Path(lang_dir) / "lang.json"
        if not Path(lang_dir).is_dir():
            raise DataError(f"lang directory {lang_dir} does not exist; run stage 2 (asr-kd prepare-lang) or leave out --lang-dir")
        if not lang_json.is_file():
            raise DataError(f"{lang_json} does not exist; run stage 2 (asr-kd prepare-lang) into {lang_dir} or leave out --lang-dir")
        lang = json.loads(lang_json.read_text())
    for part in parts:
        path = manifest_path(manifest_dir, "supervisions", part)
        if not path.is_file():
            raise DataError(f"manifest {path} does not exist; run stage 0 first")
        sups = read_manifest(path, "supervisions")
        hours = sum(s.duration for s in sups) / 3600
        oov = ""
        if lang is not None and part in lang["oov"]:
            oov = f"{100 * float(lang['oov'][part]['oov_rate']):.2f}"
        elif lang is not None:
            words = _lang_words(Path(lang_dir)) if lang_dir is not None else set()
            tokens = [w for s in sups for w in (s.text or "").split()]
            oov = f"{100 * sum(w not in words for w in tokens) / max(len(tokens), 1):.2f}*"
            unseen = True
        lines.append(f"{part:<18}{hours:>8.2f}{len(sups):>8d}{len({s.speaker for s in sups}):>10d}{oov:>8}")
    if lang is not None:
        lines.append(
            f"vocabulary {lang['vocab_size']} words, lexicon {lang['lexicon_entries']} pronunciations "
            f"({lang['lexicon_source']}), {lang['num_phones']} phones"
        )
        if lang.get("dev_perplexity") is not None:
            lines.append(f"{lang['lm_order']}-gram LM perplexity on {lang['dev_split']}: {lang['dev_perplexity']:.1f}")
    if unseen:
        lines.append(f"* a part stage 2 did not see: running words not in {Path(str(lang_dir)) / 'words.txt'} (stage 2 gave none of them a "
                     "G2P pronunciation; rerun stage 2 with the part to include them)")
    return "\n".join(lines)


def _lang_words(lang_dir: Path) -> set[str]:
    """The words of ``lang_dir/words.txt`` (first column)."""
    path = lang_dir / "words.txt"
    if not path.is_file():
        raise DataError(f"{path} does not exist; run stage 2 first")
    return {line.split()[0] for line in path.read_text().splitlines() if line.strip()}
