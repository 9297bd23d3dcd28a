"""Stage 2 of the main recipe: build the lang directory from the corpus transcripts.

:func:`prepare_lang` runs the steps in order: vocabulary of every split (plus the words of
extra LM text or of an existing ARPA LM) -> lexicon restricted to it (a LibriSpeech lexicon file
extending CMUdict, or replacing it with ``lang.lexicon_mode=replace``; or CMUdict) -> espeak-ng
G2P pronunciations for the words still without one (``lexicon_g2p.txt``; the LM-only words too
unless ``lang.g2p_lm_words`` is off) -> OOV lists
per split (``oov_<split>.txt``) and the OOV-rate limit (``lang.max_oov_rate``, a one-line error
above it) -> disambiguation symbols -> symbol tables and phone sets -> L.fst and L_disambig.fst ->
Kneser-Ney LM on the training transcripts (plus the extra text), or the existing ARPA LM
restricted to the lexicon -> G.fst -> perplexity on the dev split -> lang.json. Each step is
also a function of its own.

Words of the dev and test transcripts get pronunciations (so that their alignments are right),
but only words the LM has seen can be decoded: G.fst has no path for the others. With the
training transcripts alone as LM text, dev/test words unseen in training are therefore
unreachable, as on real LibriSpeech; pass ``--lm-arpa`` (e.g. openslr.org/11's 3-gram) or
``--lm-text`` for a realistic LM. There is deliberately no unigram floor for them: the lexicon
knows them only from the test transcripts, and decoding them would leak the test vocabulary.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping, Sequence, Union

from lhotse import SupervisionSet

from asr_kd.config import DEFAULT_DEV_PART, DEFAULT_TRAIN_PART, LangConfig
from asr_kd.data.librispeech import read_manifest
from asr_kd.errors import ConfigError, DataError
from asr_kd.kaldi import kaldifst
from asr_kd.lang.lang_dir import make_phone_table, make_word_table, write_phone_sets
from asr_kd.lang.lexicon import (
    Lexicon,
    Pron,
    add_disambig_symbols,
    add_word_position,
    cmudict_lexicon,
    cmudict_phones,
    lexicon_entries,
    lexicon_phones,
    normalize_word,
    position_dependent_phones,
    read_librispeech_lexicon,
    restrict_lexicon,
    write_lexicon,
)
from asr_kd.lang.g2p import espeak_pronunciations
from asr_kd.lang.lexicon_fst import make_lexicon_fst, make_lexicon_fst_disambig
from asr_kd.lang.lm import arpa_unigrams, compile_grammar_fst, filter_arpa, lm_text_sentences, perplexity, train_ngram_lm
from asr_kd.lang.symbols import SymbolTable
from asr_kd.utils import atomic_path, write_text_atomic

logger = logging.getLogger(__name__)

Transcripts = Union[SupervisionSet, Sequence[str]]
MANIFEST_PATTERN = "librispeech_supervisions_{split}.jsonl.gz"


# --------------------------------------------------------------------------------------------
# Transcripts
# --------------------------------------------------------------------------------------------


def supervision_manifest_path(manifest_dir: Path | str, split: str) -> Path:
    """Return the path of ``split``'s supervision manifest (lhotse's LibriSpeech naming)."""
    return Path(manifest_dir) / MANIFEST_PATTERN.format(split=split)


def discover_splits(manifest_dir: Path | str) -> list[str]:
    """Return the splits that have a supervision manifest in ``manifest_dir``, sorted."""
    prefix, suffix = MANIFEST_PATTERN.split("{split}")
    return sorted(p.name[len(prefix) : -len(suffix)] for p in Path(manifest_dir).glob(MANIFEST_PATTERN.format(split="*")))


def load_supervisions(manifest_dir: Path | str, splits: Iterable[str]) -> dict[str, SupervisionSet]:
    """Read each split's supervision manifest; DataError naming the first missing file."""
    out = {}
    for split in splits:
        path = supervision_manifest_path(manifest_dir, split)
        if not path.is_file():
            raise DataError(
                f"supervision manifest {path} does not exist; run stage 0 (corpus preparation) "
                f"or drop split {split!r} from --splits/--train-split/--dev-split"
            )
        out[split] = read_manifest(path, "supervisions")
    return out


def transcript_tokens(transcripts: Transcripts) -> list[list[str]]:
    """Return each non-empty transcript as a list of lexicon-spelled tokens (upper case).

    Accepts a lhotse SupervisionSet (its ``text`` fields) or plain strings; empty or missing
    texts are dropped.
    """
    texts = (s.text for s in transcripts) if isinstance(transcripts, SupervisionSet) else iter(transcripts)
    out = []
    for text in texts:
        tokens = [normalize_word(t) for t in (text or "").split()]
        if tokens:
            out.append(tokens)
    return out


@dataclasses.dataclass(frozen=True)
class OovStats:
    """Out-of-lexicon words in one split."""

    num_sentences: int
    num_words: int
    num_oov: int
    num_oov_types: int
    most_common: list[tuple[str, int]]

    @property
    def oov_rate(self) -> float:
        """Return the fraction of running words that are OOV (0 for an empty split)."""
        return self.num_oov / self.num_words if self.num_words else 0.0


def count_oov(sentences: Sequence[Sequence[str]], lexicon: Mapping[str, object], top: int = 10) -> OovStats:
    """Return the OOV statistics of ``sentences`` against the words of ``lexicon``."""
    oov = Counter(w for s in sentences for w in s if w not in lexicon)
    return OovStats(
        num_sentences=len(sentences),
        num_words=sum(len(s) for s in sentences),
        num_oov=sum(oov.values()),
        num_oov_types=len(oov),
        most_common=oov.most_common(top),
    )


def lm_training_text(sentences: Iterable[Sequence[str]], lexicon: Mapping[str, object], oov_word: str) -> tuple[list[str], int]:
    """Map OOV words to ``oov_word``; drop sentences made only of OOV words.

    Returns ``(sentences as strings, number dropped)``.
    """
    kept, dropped = [], 0
    for s in sentences:
        mapped = [w if w in lexicon else oov_word for w in s]
        if all(w == oov_word for w in mapped):
            dropped += 1
            continue
        kept.append(" ".join(mapped))
    return kept, dropped


# --------------------------------------------------------------------------------------------
# Lexicon and tables
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CorpusLexicon:
    """The lexicon of a corpus (``<UNK>`` included), its non-silence phones, the pronunciations
    that G2P generated, and a description of where the pronunciations came from."""

    lexicon: Lexicon
    nonsilence_phones: list[str]
    generated: dict[str, Pron]
    source: str


def _source_lexicon(vocabulary: set[str], config: LangConfig, lexicon_path: Path | None) -> tuple[Lexicon, list[str], str, bool]:
    """Return (pronunciations of ``vocabulary`` from the lexicon file and/or CMUdict, the base
    phone inventory, a description, whether the phones are CMUdict's so G2P may add words)."""
    if lexicon_path is None:
        return cmudict_lexicon(vocabulary, config.max_prons_per_word), cmudict_phones(), "CMUdict", True
    full = read_librispeech_lexicon(lexicon_path, config.max_prons_per_word)
    file_phones = lexicon_phones(full)
    lexicon = restrict_lexicon(full, vocabulary)
    arpabet = cmudict_phones()
    foreign = sorted(set(file_phones) - set(arpabet) - {config.silence_phone, config.oov_phone})
    if config.lexicon_mode == "replace":
        return lexicon, file_phones, f"{lexicon_path} (replacing CMUdict)", not foreign
    if foreign:
        logger.warning("lexicon %s uses phones outside CMUdict's set (%s): neither CMUdict nor G2P can extend it, "
                       "words it lacks stay <UNK>", lexicon_path, ", ".join(foreign[:10]))
        return lexicon, file_phones, str(lexicon_path), False
    added = cmudict_lexicon((w for w in vocabulary if w not in lexicon), config.max_prons_per_word)
    logger.info("lexicon %s: %d corpus words; CMUdict adds %d it lacks", lexicon_path, len(lexicon), len(added))
    merged = {**lexicon, **added}
    return merged, sorted(set(file_phones) | set(arpabet)), f"{lexicon_path} + CMUdict", True


def build_lexicon(vocabulary: Iterable[str], config: LangConfig, lexicon_path: Path | None = None, g2p_words: Iterable[str] = ()) -> CorpusLexicon:
    """Return the corpus lexicon and its non-silence phone inventory (word-position suffixes
    applied if configured).

    Pronunciations come from ``lexicon_path`` (LibriSpeech format; it extends CMUdict unless
    ``config.lexicon_mode`` is ``replace``) or CMUdict, restricted to ``vocabulary``; the words of
    ``g2p_words`` still without one get espeak-ng's (``config.g2p``). The OOV word is added,
    pronounced with the OOV phone. The phone inventory is that of the whole source dictionary,
    so the phone set does not depend on the corpus size.
    """
    vocabulary = set(vocabulary)
    silence = (config.silence_phone, config.oov_phone)
    lexicon, base_phones, source, arpabet = _source_lexicon(vocabulary, config, lexicon_path)
    generated: dict[str, Pron] = {}
    missing = sorted(set(g2p_words) - set(lexicon))
    if config.g2p == "espeak" and arpabet and missing:
        generated, failed = espeak_pronunciations(missing)
        generated = {w: p for w, p in generated.items() if w not in ("<EPS>", "<S>", "</S>") and not w.startswith("#")}
        lexicon.update({w: [p] for w, p in generated.items()})
        source += f" + espeak-ng G2P ({len(generated)} words)"
        logger.info("G2P (espeak-ng): pronunciations for %d of %d words without one%s", len(generated), len(missing),
                    f"; none for {failed[:10]}" if failed else "")
    base_phones = [p for p in base_phones if p not in silence]
    bad = [p for p in base_phones if p.startswith("#") or p == "<eps>"]
    if bad:
        raise DataError(f"lexicon {lexicon_path} uses reserved phone names {bad}; rename them")
    if config.position_dependent_phones:
        lexicon = {w: [add_word_position(p, silence) for p in prons] for w, prons in lexicon.items()}
        nonsilence = position_dependent_phones(base_phones)
    else:
        nonsilence = sorted(base_phones)
    # Symbols that words.txt reserves can never be lexicon words.
    reserved = [w for w in lexicon if w in ("<EPS>", "<S>", "</S>") or w.startswith("#")]
    for w in reserved:
        logger.warning("dropped reserved word %r from the lexicon", w)
        del lexicon[w]
    lexicon[config.oov_word] = [(config.oov_phone,)]
    return CorpusLexicon({w: lexicon[w] for w in sorted(lexicon)}, nonsilence, generated, source)


def oov_list_path(lang_dir: Path | str, split: str) -> Path:
    """Path of ``oov_<split>.txt``: every word of the split that the lexicon file or CMUdict
    lacks, with its count and what it got (``g2p`` or ``<UNK>``), most frequent first."""
    return Path(lang_dir) / f"oov_{split}.txt"


def write_oov_lists(lang_dir: Path, sentences: Mapping[str, Sequence[Sequence[str]]], lexicon: CorpusLexicon, oov_word: str) -> None:
    """Write :func:`oov_list_path` for every split and ``lexicon_g2p.txt`` (the generated
    pronunciations, to inspect; put corrected ones in a --lexicon file, which wins over G2P)."""
    lang_dir.mkdir(parents=True, exist_ok=True)
    write_lexicon(lang_dir / "lexicon_g2p.txt", sorted(lexicon.generated.items()))
    for split, sents in sentences.items():
        counts = Counter(w for s in sents for w in s if w in lexicon.generated or w not in lexicon.lexicon)
        lines = [f"{w}\t{n}\t{'g2p' if w in lexicon.generated else oov_word}\n" for w, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
        write_text_atomic(oov_list_path(lang_dir, split), "".join(lines))


def check_oov_rates(oov: Mapping[str, OovStats], max_rate: float, lang_dir: Path) -> None:
    """Raise a one-line DataError when a split's OOV rate (words without any pronunciation)
    exceeds ``max_rate``."""
    for split, st in oov.items():
        if st.oov_rate > max_rate:
            raise DataError(
                f"{100 * st.oov_rate:.1f}% of the words of {split} ({st.num_oov} of {st.num_words}) have no pronunciation, above "
                f"lang.max_oov_rate={max_rate:g} (list: {oov_list_path(lang_dir, split)}); pass a lexicon covering them with --lexicon, "
                "use lang.lexicon_mode=extend and lang.g2p=espeak, or raise lang.max_oov_rate"
            )


def write_lang_tables(
    lang_dir: Path,
    entries: Sequence[tuple[str, Pron]],
    entries_disambig: Sequence[tuple[str, Pron]],
    max_disambig: int,
    nonsilence_phones: Sequence[str],
    config: LangConfig,
) -> tuple[SymbolTable, SymbolTable]:
    """Write lexicon(.txt, _disambig.txt), words.txt, phones.txt, phones/*, oov.txt.

    Returns ``(phones, words)`` symbol tables.
    """
    silence = [config.silence_phone, config.oov_phone]
    phones = make_phone_table(silence, nonsilence_phones, max_disambig + 1)
    words = make_word_table(w for w, _ in entries)
    disambig = [f"#{k}" for k in range(max_disambig + 1)]
    write_lexicon(lang_dir / "lexicon.txt", entries)
    write_lexicon(lang_dir / "lexicon_disambig.txt", entries_disambig)
    phones.to_file(lang_dir / "phones.txt")
    words.to_file(lang_dir / "words.txt")
    write_phone_sets(
        lang_dir,
        phones,
        {"silence": silence, "nonsilence": sorted(nonsilence_phones), "optional_silence": [config.silence_phone], "disambig": disambig},
    )
    write_text_atomic(lang_dir / "oov.txt", f"{config.oov_word}\n")
    return phones, words


def write_fst(fst: kaldifst.StdVectorFst, path: Path) -> None:
    """Write ``fst`` in OpenFst binary format, atomically."""
    with atomic_path(path) as tmp:
        fst.write(str(tmp))


# --------------------------------------------------------------------------------------------
# The whole stage
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LangSummary:
    """What :func:`prepare_lang` built, as recorded in lang.json."""

    lang_dir: str
    lexicon_source: str
    vocab_size: int  # words in words.txt, without <eps>, #0, <s>, </s>
    lexicon_entries: int
    num_phones: int  # silence + non-silence phones
    num_disambig: int  # #0 .. #K
    oov: dict[str, dict[str, object]]  # split -> OovStats fields and oov_rate
    lm_order: int
    lm_train_sentences: int
    lm_skipped_all_oov: int
    dev_split: str | None
    dev_perplexity: float | None
    dev_lm_oov: int | None  # dev words unknown to the LM (not scored)
    config: dict[str, object]
    lm_source: str = "training transcripts"  # or "+ extra text <file>", or "ARPA <file>"
    lm_ngrams: dict[str, int] | None = None  # n-grams per order in lm/lm.arpa

    def to_json(self) -> str:
        """Return the summary as indented JSON."""
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    def format(self) -> str:
        """Return a one-screen, human-readable summary."""
        lines = [
            f"lang directory   {self.lang_dir}",
            f"lexicon          {self.lexicon_source}: {self.lexicon_entries} pronunciations, vocabulary {self.vocab_size} words",
            f"phones           {self.num_phones} (+ {self.num_disambig} disambiguation symbols)",
            "OOV rate per split:",
        ]
        for split, st in self.oov.items():
            lines.append(f"  {split:<20} {100 * float(st['oov_rate']):6.2f}%  ({st['num_oov']} of {st['num_words']} words, {st['num_oov_types']} types)")
        if self.lm_source.startswith("ARPA"):
            lines.append(f"LM               {self.lm_order}-gram from {self.lm_source}, restricted to the lexicon: {self.lm_ngrams} n-grams")
        else:
            lines.append(
                f"LM               {self.lm_order}-gram Kneser-Ney on {self.lm_train_sentences} sentences of the {self.lm_source} "
                f"({self.lm_skipped_all_oov} all-OOV sentences skipped)"
            )
        if self.dev_perplexity is not None:
            lines.append(f"dev perplexity   {self.dev_perplexity:.1f} on {self.dev_split} ({self.dev_lm_oov} words unknown to the LM)")
        else:
            lines.append("dev perplexity   not computed (no dev split)")
        return "\n".join(lines)


def prepare_lang(
    supervisions: Mapping[str, Transcripts],
    output_dir: Path | str,
    config: LangConfig,
    lexicon_path: Path | None = None,
    train_split: str = DEFAULT_TRAIN_PART,
    dev_split: str | None = DEFAULT_DEV_PART,
    lm_arpa: Path | None = None,
    lm_text: Path | None = None,
) -> LangSummary:
    """Build the lang directory ``output_dir`` from per-split transcripts.

    ``supervisions`` maps split names to lhotse SupervisionSets or lists of transcript strings;
    every split contributes to the vocabulary, only ``train_split`` to the LM, ``dev_split`` (if
    present) gives the perplexity. ``lm_text`` (one sentence per line, ``.gz`` allowed) adds its
    sentences to the LM training text and its words to the vocabulary; ``lm_arpa`` (``.gz``
    allowed) replaces the trained LM by an existing one, restricted to the words with a
    pronunciation (its words join the vocabulary). Returns the summary also written to
    ``lang.json``. Raises DataError if the training split is missing or has no transcript, and
    ConfigError if both ``lm_arpa`` and ``lm_text`` are given.
    """
    output_dir = Path(output_dir)
    if train_split not in supervisions:
        raise DataError(f"training split {train_split!r} is not among the splits {sorted(supervisions)}; pass --train-split with one of them")
    sentences = {split: transcript_tokens(sups) for split, sups in supervisions.items()}
    if not sentences[train_split]:
        raise DataError(f"training split {train_split!r} has no transcripts (no supervision with text); check its manifest or pass another --train-split")

    if lm_arpa is not None and lm_text is not None:
        raise ConfigError("pass an existing ARPA LM (--lm-arpa) or extra LM text (--lm-text), not both: the ARPA LM is used as it is")
    # The extra LM text gets the transcripts' normalisation (stage 0's), so that its words match them.
    extra_text = lm_text_sentences(lm_text) if lm_text is not None else []
    arpa_words = arpa_unigrams(lm_arpa, normalize_word) if lm_arpa is not None else []

    transcript_words = {w for sents in sentences.values() for s in sents for w in s}
    vocabulary = transcript_words | {w for s in extra_text for w in s} | set(arpa_words)
    # G2P reads the transcripts' words and, with lang.g2p_lm_words, the LM's own: without it a word
    # that only the extra LM text or ARPA LM has stays without pronunciation, and out of G.
    built = build_lexicon(vocabulary, config, lexicon_path, g2p_words=vocabulary if config.g2p_lm_words else transcript_words)
    lm_only = vocabulary - transcript_words
    if lm_only:
        logger.info("%d words only the LM text/ARPA LM has: %d with a pronunciation (%d from G2P)%s", len(lm_only),
                    sum(w in built.lexicon for w in lm_only), sum(w in built.generated for w in lm_only),
                    "" if config.g2p_lm_words else "; lang.g2p_lm_words=false leaves the others out of L and G")
    lexicon, nonsilence, source = built.lexicon, built.nonsilence_phones, built.source
    logger.info("lexicon from %s: %d of %d corpus words have pronunciations", source, len(lexicon) - 1, len(vocabulary))

    oov = {split: count_oov(sents, lexicon) for split, sents in sentences.items()}
    for split, st in oov.items():
        logger.info("%s: %d OOV of %d words (%.2f%%), e.g. %s (all in %s)", split, st.num_oov, st.num_words, 100 * st.oov_rate,
                    st.most_common[:5], oov_list_path(output_dir, split))
    write_oov_lists(output_dir, sentences, built, config.oov_word)
    check_oov_rates(oov, config.max_oov_rate, output_dir)

    entries = lexicon_entries(lexicon)
    entries_disambig, max_disambig = add_disambig_symbols(entries)
    phones, words = write_lang_tables(output_dir, entries, entries_disambig, max_disambig, nonsilence, config)
    logger.info("%d phones, disambiguation symbols #0..#%d", 2 + len(nonsilence), max_disambig)

    write_fst(make_lexicon_fst(entries, phones, words, config.silence_phone, config.silence_prob), output_dir / "L.fst")
    write_fst(make_lexicon_fst_disambig(entries_disambig, phones, words, config.silence_phone, config.silence_prob), output_dir / "L_disambig.fst")

    arpa = output_dir / "lm" / "lm.arpa"
    train_text: list[str] = []
    skipped = 0
    if lm_arpa is not None:
        stats = filter_arpa(lm_arpa, arpa, set(lexicon), normalize_word)
        lm_order, lm_source, lm_ngrams = stats.order, f"ARPA {lm_arpa}", {str(n): c for n, c in stats.ngrams_kept.items()}
    else:
        train_text, skipped = lm_training_text(sentences[train_split] + extra_text, lexicon, config.oov_word)
        if skipped:
            logger.warning("skipped %d LM training sentences made only of OOV words", skipped)
        if not train_text:
            raise DataError(f"every transcript of training split {train_split!r} is out of the lexicon; pass a lexicon covering it with --lexicon")
        write_text_atomic(output_dir / "lm" / "train.txt", "".join(f"{s}\n" for s in train_text))
        train_ngram_lm(train_text, config.lm_order, arpa)
        lm_order, lm_ngrams = config.lm_order, None
        lm_source = "training transcripts" + (f" + extra text {lm_text} ({len(extra_text)} sentences)" if lm_text is not None else "")
    write_fst(compile_grammar_fst(arpa, output_dir / "words.txt"), output_dir / "G.fst")

    dev_ppl = dev_oov = None
    if dev_split is not None and dev_split in sentences:
        dev = [[w if w in lexicon else config.oov_word for w in s] for s in sentences[dev_split]]
        ppl = perplexity(arpa, dev)
        dev_ppl, dev_oov = ppl.ppl, ppl.num_oov
        logger.info("LM perplexity on %s: %.1f (%d words unknown to the LM)", dev_split, ppl.ppl, ppl.num_oov)
    elif dev_split is not None:
        logger.warning("dev split %r not given: LM perplexity not computed", dev_split)

    summary = LangSummary(
        lang_dir=str(output_dir),
        lexicon_source=source,
        vocab_size=len(words) - 4,
        lexicon_entries=len(entries),
        num_phones=2 + len(nonsilence),
        num_disambig=max_disambig + 1,
        oov={split: {**dataclasses.asdict(st), "oov_rate": st.oov_rate} for split, st in oov.items()},
        lm_order=lm_order,
        lm_train_sentences=len(train_text),
        lm_skipped_all_oov=skipped,
        dev_split=dev_split if dev_ppl is not None else None,
        dev_perplexity=dev_ppl,
        dev_lm_oov=dev_oov,
        config=dataclasses.asdict(config),
        lm_source=lm_source,
        lm_ngrams=lm_ngrams,
    )
    write_text_atomic(output_dir / "lang.json", summary.to_json())
    return summary


def prepare_lang_from_manifests(
    manifest_dir: Path | str,
    output_dir: Path | str,
    config: LangConfig,
    lexicon_path: Path | None = None,
    train_split: str = DEFAULT_TRAIN_PART,
    dev_split: str | None = DEFAULT_DEV_PART,
    splits: Sequence[str] | None = None,
    lm_arpa: Path | None = None,
    lm_text: Path | None = None,
) -> LangSummary:
    """Run :func:`prepare_lang` on the supervision manifests in ``manifest_dir``.

    ``splits`` defaults to every split with a manifest there; the training and dev splits are
    always read. Returns the summary; DataError names any missing manifest.
    """
    manifest_dir = Path(manifest_dir)
    if not manifest_dir.is_dir():
        raise DataError(f"manifest directory {manifest_dir} does not exist; run stage 0 (corpus preparation) first")
    wanted = lang_splits(manifest_dir, train_split, dev_split, splits)
    return prepare_lang(load_supervisions(manifest_dir, wanted), output_dir, config, lexicon_path, train_split, dev_split, lm_arpa, lm_text)


def lang_splits(manifest_dir: Path | str, train_split: str, dev_split: str | None, splits: Sequence[str] | None) -> list[str]:
    """Return the splits that :func:`prepare_lang_from_manifests` reads: ``splits`` (default:
    every split with a manifest in ``manifest_dir``), plus the training and dev splits."""
    wanted = list(splits) if splits is not None else discover_splits(manifest_dir)
    for split in (train_split, dev_split):
        if split is not None and split not in wanted:
            wanted.append(split)
    return wanted
