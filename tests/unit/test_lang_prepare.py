"""prepare_lang end to end on small supervision sets: the lang-directory contract, OOVs, errors."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from lhotse import SupervisionSegment, SupervisionSet

from asr_kd.bin.cli import main as cli_main
from asr_kd.config import LangConfig
from asr_kd.errors import DataError
from asr_kd.kaldi import kaldifst
from asr_kd.lang.lang_dir import Lang, SymbolTable
from asr_kd.lang.prepare import (
    count_oov,
    lm_training_text,
    prepare_lang,
    prepare_lang_from_manifests,
    supervision_manifest_path,
)

TRAIN = [
    "THE CAT SAT ON THE MAT",
    "A DOG READ THE BOOK",
    "THE RED DOG RAN TO THE CAT",
    "XYZZYQ QWRTXZ",  # only OOV words: skipped for the LM
    "THE BOOK WAS RED ZORBLAX",  # one OOV word: mapped to <UNK>
]
DEV = ["THE DOG SAT ON A BOOK", "THE CAT READ FOOBARXQ"]
TEST = ["A CAT AND A DOG"]
NO_G2P = LangConfig(g2p="none", max_oov_rate=1.0)


def supervisions(texts: list[str], prefix: str) -> SupervisionSet:
    """Return a SupervisionSet with one segment per text."""
    return SupervisionSet.from_segments(
        SupervisionSegment(id=f"{prefix}-{k}", recording_id=f"{prefix}-{k}", start=0.0, duration=1.0, text=t, speaker="s1")
        for k, t in enumerate(texts)
    )


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("lang_prep") / "lang"
    sups = {"train-clean-100": supervisions(TRAIN, "tr"), "dev-clean": supervisions(DEV, "dv"), "test-clean": supervisions(TEST, "te")}
    # No G2P and no OOV limit: these tests follow the words that stay without pronunciation.
    summary = prepare_lang(sups, out, NO_G2P)
    return summary, Lang.load(out)


def read_table_lines(path: Path) -> list[tuple[str, int]]:
    lines = path.read_text().splitlines()
    assert all(re.fullmatch(r"\S+ \d+", line) for line in lines), f"{path} is not Kaldi 'NAME ID' text"
    return [(name, int(i)) for name, i in (line.split() for line in lines)]


def test_lang_dir_has_every_contract_file(prepared) -> None:
    _, lang = prepared
    for name in [
        "lexicon.txt", "words.txt", "phones.txt", "oov.txt", "L.fst", "L_disambig.fst", "G.fst", "lm/lm.arpa", "lang.json",
        *(f"phones/{s}.{ext}" for s in ("silence", "nonsilence", "optional_silence", "disambig") for ext in ("txt", "int")),
    ]:
        assert (lang.lang_dir / name).is_file(), name
    assert (lang.lang_dir / "oov.txt").read_text() == "<UNK>\n"
    assert not list(lang.lang_dir.rglob("*.tmp*")), "temporary files left behind"


def test_phones_txt_follows_the_contract(prepared) -> None:
    _, lang = prepared
    pairs = read_table_lines(lang.lang_dir / "phones.txt")
    names = [n for n, _ in pairs]
    assert [i for _, i in pairs] == list(range(len(pairs)))  # contiguous ids
    assert names[:3] == ["<eps>", "SIL", "SPN"]
    nonsil = [n for n in names[3:] if not n.startswith("#")]
    disambig = [n for n in names if n.startswith("#")]
    assert nonsil == sorted(nonsil) and len(nonsil) == 39  # CMUdict's phone set
    assert names == ["<eps>", "SIL", "SPN", *nonsil, *disambig]
    assert disambig == [f"#{k}" for k in range(len(disambig))]
    # READ (R EH D) and RED are homophones: #1 and #2 are needed.
    assert len(disambig) >= 3
    assert lang.silence_phones == ("SIL", "SPN") and lang.optional_silence == "SIL"
    assert lang.nonsilence_phones == tuple(nonsil) and lang.disambig_phones == tuple(disambig)
    for set_name, ids in [("silence", lang.silence_phone_ids), ("disambig", lang.disambig_phone_ids), ("nonsilence", lang.nonsilence_phone_ids)]:
        assert [int(x) for x in (lang.lang_dir / "phones" / f"{set_name}.int").read_text().split()] == ids


def test_words_txt_follows_the_contract(prepared) -> None:
    _, lang = prepared
    pairs = read_table_lines(lang.lang_dir / "words.txt")
    names = [n for n, _ in pairs]
    assert [i for _, i in pairs] == list(range(len(pairs)))
    assert names[0] == "<eps>" and names[-3:] == ["#0", "<s>", "</s>"]
    assert names[1:-3] == sorted(names[1:-3])
    assert set(names[1:-3]) == set(lang.lexicon)  # every lexicon word, and only those
    assert "<UNK>" in lang.words and "ZORBLAX" not in lang.words
    assert SymbolTable.from_file(lang.lang_dir / "words.txt") == lang.words


def test_lexicon_txt(prepared) -> None:
    _, lang = prepared
    text = (lang.lang_dir / "lexicon.txt").read_text()
    assert "<UNK> SPN\n" in text
    assert not re.search(r"\d", text), "stress digits must be removed"
    assert ("R", "EH", "D") in lang.lexicon["READ"] and lang.lexicon["RED"] == [("R", "EH", "D")]
    # Vocabulary of all splits (AND comes from the test split), never all of CMUdict.
    assert "AND" in lang.lexicon and len(lang.lexicon) < 30


def test_oov_counted_and_mapped_to_unk(prepared) -> None:
    summary, lang = prepared
    assert summary.oov["train-clean-100"]["num_oov"] == 3
    assert summary.oov["train-clean-100"]["num_words"] == sum(len(t.split()) for t in TRAIN)
    assert summary.oov["dev-clean"]["num_oov"] == 1
    assert summary.oov["dev-clean"]["oov_rate"] == pytest.approx(1 / 10)
    assert summary.oov["test-clean"]["num_oov"] == 0
    assert summary.lm_skipped_all_oov == 1 and summary.lm_train_sentences == 4
    assert lang.word_ids(["THE", "FOOBARXQ"]) == [lang.words.id("THE"), lang.words.id("<UNK>")]
    lm_text = (lang.lang_dir / "lm" / "train.txt").read_text()
    assert "THE BOOK WAS RED <UNK>" in lm_text and "XYZZYQ" not in lm_text
    arpa = (lang.lang_dir / "lm" / "lm.arpa").read_text()
    assert "\t<UNK>" in arpa and "ZORBLAX" not in arpa


def test_lang_json_summary(prepared) -> None:
    summary, lang = prepared
    data = json.loads((lang.lang_dir / "lang.json").read_text())
    assert data["vocab_size"] == len(lang.lexicon) == summary.vocab_size
    assert data["lexicon_entries"] == sum(len(p) for p in lang.lexicon.values())
    assert data["num_phones"] == 41 and data["lm_order"] == 3
    assert data["config"]["silence_prob"] == 0.5
    assert math.isfinite(data["dev_perplexity"]) and data["dev_perplexity"] > 1.0
    assert "dev-clean" in summary.format() and "OOV" in summary.format()


def test_arpa_has_all_orders_and_no_zero_probabilities(prepared) -> None:
    _, lang = prepared
    arpa = (lang.lang_dir / "lm" / "lm.arpa").read_text()
    assert "\\3-grams:" in arpa and "<s> THE CAT" in arpa
    # Only <s> may carry kaldingram's log10(0) stand-in (-99).
    zero = [line.split("\t")[1] for line in arpa.splitlines() if line.startswith("-99")]
    assert zero == ["<s>"]


def test_pronunciation_phone_ids(prepared) -> None:
    _, lang = prepared
    (cat,), unk = lang.pronunciation_phone_ids(["CAT", "NOTAWORDQ"])
    assert cat == tuple(lang.phone_ids(["K", "AE", "T"]))
    assert unk == [(lang.phones.id("SPN"),)]


def test_position_dependent_phones(tmp_path) -> None:
    prepare_lang({"train": ["THE CAT SAT", "A CAT"]}, tmp_path, LangConfig(position_dependent_phones=True), train_split="train", dev_split=None)
    lang = Lang.load(tmp_path)
    assert lang.lexicon["CAT"] == [("K_B", "AE_I", "T_E")]
    assert ("AH_S",) in lang.lexicon["A"] and lang.lexicon["<UNK>"] == [("SPN",)]
    assert len(lang.nonsilence_phones) == 4 * 39
    assert lang.phones.names()[:3] == ["<eps>", "SIL", "SPN"]


def test_librispeech_lexicon_file(tmp_path) -> None:
    lex = tmp_path / "librispeech-lexicon.txt"
    lex.write_text("HELLO\tHH AH0 L OW1\nHELLO\tHH EH0 L OW1\nWORLD\tW ER1 L D\nUNUSED\tAH0 N Y UW1 Z D\n")
    # lexicon_mode=replace: only the file's words have pronunciations.
    replace = LangConfig(lexicon_mode="replace", g2p="none", max_oov_rate=0.5)
    summary = prepare_lang({"train": ["hello world", "hello there"]}, tmp_path / "lang", replace, lex, "train", None)
    lang = Lang.load(tmp_path / "lang")
    assert lang.lexicon == {"<UNK>": [("SPN",)], "HELLO": [("HH", "AH", "L", "OW"), ("HH", "EH", "L", "OW")], "WORLD": [("W", "ER", "L", "D")]}
    # The phone set is the lexicon file's, including phones only UNUSED has.
    assert set(lang.nonsilence_phones) == {"HH", "AH", "L", "OW", "EH", "W", "ER", "D", "N", "Y", "UW", "Z"}
    assert summary.oov["train"]["num_oov"] == 1 and summary.dev_perplexity is None
    assert (lang.lang_dir / "oov_train.txt").read_text() == "THERE\t1\t<UNK>\n"
    # The default, extend: the file's pronunciations win, CMUdict fills in THERE, the phone set is
    # CMUdict's (the file's phones are all ARPAbet).
    summary = prepare_lang({"train": ["hello world", "hello there"]}, tmp_path / "ext", LangConfig(), lex, "train", None)
    lang = Lang.load(tmp_path / "ext")
    assert lang.lexicon["HELLO"] == [("HH", "AH", "L", "OW"), ("HH", "EH", "L", "OW")]  # the file's entries
    assert lang.lexicon["THERE"] == [("DH", "EH", "R")] and summary.oov["train"]["num_oov"] == 0
    assert len(lang.nonsilence_phones) == 39 and summary.lexicon_source == f"{lex} + CMUdict"


def test_helpers() -> None:
    lex = {"A": 1, "B": 1}
    st = count_oov([["A", "X"], ["X", "Y", "B"]], lex)
    assert (st.num_words, st.num_oov, st.num_oov_types, st.most_common[0]) == (5, 3, 2, ("X", 2))
    assert lm_training_text([["A", "X"], ["X", "Y"]], lex, "<UNK>") == (["A <UNK>"], 1)


def test_empty_training_split_is_a_one_line_error(tmp_path) -> None:
    with pytest.raises(DataError, match="training split 'train-clean-100' has no transcripts") as err:
        prepare_lang({"train-clean-100": supervisions([], "x"), "dev-clean": ["A CAT"]}, tmp_path, LangConfig())
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="training split 'train-other' is not among"):
        prepare_lang({"dev-clean": ["A CAT"]}, tmp_path, LangConfig(), train_split="train-other")
    with pytest.raises(DataError, match="out of the lexicon"):
        prepare_lang({"train": ["QQXQ ZZXZ"]}, tmp_path, NO_G2P, train_split="train", dev_split=None)


def test_lang_load_errors(tmp_path, prepared) -> None:
    with pytest.raises(DataError, match="does not exist"):
        Lang.load(tmp_path / "none")
    _, lang = prepared
    import shutil

    copy = tmp_path / "lang"
    shutil.copytree(lang.lang_dir, copy)
    (copy / "phones" / "disambig.txt").unlink()
    with pytest.raises(DataError, match=r"disambig.txt is missing"):
        Lang.load(copy)
    (copy / "G.fst").unlink()
    shutil.copy(lang.lang_dir / "phones" / "disambig.txt", copy / "phones" / "disambig.txt")
    with pytest.raises(DataError, match=r"G.fst does not exist"):
        Lang.load(copy).load_fst("G")


def test_manifests_and_cli(tmp_path, capsys) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    supervisions(TRAIN, "tr").to_file(supervision_manifest_path(manifests, "train-clean-100"))
    with pytest.raises(DataError, match=r"librispeech_supervisions_dev-clean.jsonl.gz does not exist"):
        prepare_lang_from_manifests(manifests, tmp_path / "lang", LangConfig())
    assert cli_main(["prepare-lang", "--manifest-dir", str(manifests), "--output-dir", str(tmp_path / "lang")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dev-clean" in err[0]

    supervisions(DEV, "dv").to_file(supervision_manifest_path(manifests, "dev-clean"))
    rc = cli_main(["prepare-lang", "--manifest-dir", str(manifests), "--output-dir", str(tmp_path / "lang"), "--set", "lm_order=2"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "dev perplexity" in out and "2-gram" in out
    assert json.loads((tmp_path / "lang" / "lang.json").read_text())["lm_order"] == 2
    assert "\\3-grams:" not in (tmp_path / "lang" / "lm" / "lm.arpa").read_text()


def test_relative_folders_on_the_command_line(tmp_path, monkeypatch) -> None:
    # `--output-dir lang` from the folder above: the record lists the stage's files relative to
    # the folder it made (a relative folder once sent it looking for lang/lang/G.fst and failed).
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    supervisions(TRAIN, "tr").to_file(supervision_manifest_path(manifests, "train-clean-100"))
    supervisions(DEV, "dv").to_file(supervision_manifest_path(manifests, "dev-clean"))
    monkeypatch.chdir(tmp_path)
    assert cli_main(["prepare-lang", "--manifest-dir", "manifests", "--output-dir", "lang", "--set", "lm_order=2"]) == 0
    record = json.loads((tmp_path / "lang" / "provenance.json").read_text())
    assert {"G.fst", "L.fst", "words.txt"} <= set(record["outputs"])
    assert record["outputs"]["G.fst"]["bytes"] == (tmp_path / "lang" / "G.fst").stat().st_size


# --------------------------------------------------------------------------------------------
# An existing ARPA LM, extra LM text
# --------------------------------------------------------------------------------------------

# LM text beyond the transcripts: FROG and JUMPED are real words absent from every split,
# ZZQXWV has no pronunciation anywhere.
LM_TEXT = ["the frog jumped on the cat", "a dog sat on the frog", "the zzqxwv sat", "and the red cat ran"]


def _sups() -> dict[str, SupervisionSet]:
    return {"train-clean-100": supervisions(TRAIN, "tr"), "dev-clean": supervisions(DEV, "dv"), "test-clean": supervisions(TEST, "te")}


def _arpa_sections(text: str) -> tuple[dict[int, int], dict[int, list[str]]]:
    """Return the ``\\data\\`` counts and the n-gram lines of each order of an ARPA text."""
    counts = {int(n): int(c) for n, c in re.findall(r"^ngram (\d+)=(\d+)$", text, flags=re.M)}
    lines: dict[int, list[str]] = {}
    section = None
    for line in text.splitlines():
        m = re.fullmatch(r"\\(\d+)-grams:", line)
        if m:
            section = int(m.group(1))
            lines[section] = []
        elif line == "\\end\\":
            section = None
        elif section and line.strip():
            lines[section].append(line)
    return counts, lines


def test_existing_arpa_lm_is_restricted_to_the_lexicon(tmp_path) -> None:
    import gzip

    from asr_kd.lang.lm import train_ngram_lm

    # A lower-case ARPA (its words are normalised like the transcripts), gzip-compressed.
    source = tmp_path / "other.arpa"
    train_ngram_lm(LM_TEXT, 3, source)
    gz = tmp_path / "other.arpa.gz"
    gz.write_bytes(gzip.compress(source.read_bytes()))
    summary = prepare_lang(_sups(), tmp_path / "lang", LangConfig(g2p_lm_words=False), lm_arpa=gz)
    lang = Lang.load(tmp_path / "lang")
    # Without G2P of the LM's words: those with a pronunciation join the vocabulary; the one
    # without is dropped.
    assert "FROG" in lang.words and "JUMPED" in lang.words and "ZZQXWV" not in lang.words
    assert "CAT" in lang.words and "BOOK" in lang.words  # the transcripts' words stay (alignment needs them)
    arpa = (lang.lang_dir / "lm" / "lm.arpa").read_text()
    counts, lines = _arpa_sections(arpa)
    assert counts == {n: len(v) for n, v in lines.items()} and set(counts) == {1, 2, 3}
    assert "ZZQXWV" not in arpa and not (lang.lang_dir / "lm" / "train.txt").exists()
    _, original = _arpa_sections(source.read_text())
    assert counts[1] == len(original[1]) - 1  # exactly the one unigram without a pronunciation
    assert all(len(original[n]) > counts[n] for n in (2, 3))  # its bigrams and trigrams went with it
    assert summary.lm_source == f"ARPA {gz}" and summary.lm_ngrams == {str(n): c for n, c in counts.items()}
    assert summary.lm_train_sentences == 0 and math.isfinite(summary.dev_perplexity)
    # G accepts a sentence only the external LM knows, and none of the transcripts' own LM.
    g_words = {arc.olabel for s in kaldifst.StateIterator(lang.load_fst("G")) for arc in kaldifst.ArcIterator(lang.load_fst("G"), s)}
    assert lang.words.id("FROG") in g_words and lang.words.id("BOOK") not in g_words
    assert "from ARPA" in summary.format()
    # By default (lang.g2p_lm_words) G2P reads the LM's words too: nothing of the LM is dropped.
    prepare_lang(_sups(), tmp_path / "lang_g2p", LangConfig(), lm_arpa=gz)
    lang = Lang.load(tmp_path / "lang_g2p")
    counts, _ = _arpa_sections((lang.lang_dir / "lm" / "lm.arpa").read_text())
    assert "ZZQXWV" in lang.words and counts == {n: len(original[n]) for n in (1, 2, 3)}
    assert "ZZQXWV" in (lang.lang_dir / "lexicon_g2p.txt").read_text()
    g = lang.load_fst("G")
    assert lang.words.id("ZZQXWV") in {arc.olabel for st in kaldifst.StateIterator(g) for arc in kaldifst.ArcIterator(g, st)}


def test_extra_lm_text_joins_the_training_transcripts(tmp_path) -> None:
    import gzip

    text = tmp_path / "lm.txt.gz"
    messy = ["The frog jumped, on the \u201ccat\u201d."] + LM_TEXT[1:]  # normalised like the transcripts
    text.write_bytes(gzip.compress(("\n".join(messy) + "\n\n").encode()))
    summary = prepare_lang(_sups(), tmp_path / "lang", LangConfig(g2p_lm_words=False), lm_text=text)
    lang = Lang.load(tmp_path / "lang")
    assert "FROG" in lang.words and "ZZQXWV" not in lang.words
    train_txt = (lang.lang_dir / "lm" / "train.txt").read_text().splitlines()
    # G2P gave every transcript word a pronunciation, but not ZZQXWV, which only the LM text has.
    assert "THE FROG JUMPED ON THE CAT" in train_txt and "THE <UNK> SAT" in train_txt
    assert summary.lm_train_sentences == len(TRAIN) + len(LM_TEXT) and "XYZZYQ QWRTXZ" in train_txt
    assert "extra text" in summary.lm_source and "FROG" in (lang.lang_dir / "lm" / "lm.arpa").read_text()
    # By default the LM text's own words are read by G2P too, so ZZQXWV can be decoded.
    prepare_lang(_sups(), tmp_path / "lang_g2p", LangConfig(), lm_text=text)
    lang = Lang.load(tmp_path / "lang_g2p")
    assert "ZZQXWV" in lang.words and "THE ZZQXWV SAT" in (lang.lang_dir / "lm" / "train.txt").read_text().splitlines()


def test_lm_options_reject_bad_input(tmp_path) -> None:
    from asr_kd.errors import ConfigError

    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(DataError, match=r"empty.txt has no usable line \(every line is empty\); pass a file with one English sentence per line"):
        prepare_lang(_sups(), tmp_path / "a", LangConfig(), lm_text=empty)
    with pytest.raises(DataError, match="missing.arpa does not exist"):
        prepare_lang(_sups(), tmp_path / "b", LangConfig(), lm_arpa=tmp_path / "missing.arpa")
    with pytest.raises(DataError, match="no \\\\1-grams: section"):
        prepare_lang(_sups(), tmp_path / "c", LangConfig(), lm_arpa=empty)
    with pytest.raises(ConfigError, match="not both"):
        prepare_lang(_sups(), tmp_path / "d", LangConfig(), lm_arpa=empty, lm_text=empty)
    # An ARPA LM that shares no word with the lexicon.
    alien = tmp_path / "alien.arpa"
    alien.write_text("\\data\\\nngram 1=3\n\n\\1-grams:\n-1\t<s>\t-0.5\n-1\t</s>\n-1\tZZQXWV\n\n\\end\\\n")
    with pytest.raises(DataError, match="no word of the ARPA LM"):
        prepare_lang(_sups(), tmp_path / "e", LangConfig(g2p_lm_words=False), lm_arpa=alien)


# --------------------------------------------------------------------------------------------
# Stage 2's LM report: perplexity.json and the RESULTS.md section
# --------------------------------------------------------------------------------------------


def _section_rows(section: str) -> dict[str, list[str]]:
    """Return the table rows of the stage-2 section: part -> its cells."""
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("| ") and not line.startswith("| part")]
    return {r[0]: r[1:] for r in rows}


def test_stage2_reports_every_evaluation_part_in_json_and_results_md(tmp_path) -> None:
    from asr_kd.lang.lm import perplexity
    from asr_kd.lang.lm_eval import REPORT_NAME
    from asr_kd.report.results_md import read_section
    from asr_kd.stages.s2_lang import NEXT_HEADING, RESULTS_HEADING, prepare

    manifests, lang_dir, md = tmp_path / "manifests", tmp_path / "lang", tmp_path / "RESULTS.md"
    manifests.mkdir()
    for split, texts, prefix in (("train-clean-100", TRAIN, "tr"), ("dev-clean", DEV, "dv"), ("test-clean", TEST, "te")):
        supervisions(texts, prefix).to_file(supervision_manifest_path(manifests, split))
    md.write_text("# Results\n\n" + NEXT_HEADING + "\n\ngmm\n")
    prepare(manifests, lang_dir, NO_G2P, results_md=md, results_command="./run.sh --stage 2")

    data = json.loads((lang_dir / REPORT_NAME).read_text())
    assert list(data["parts"]) == ["dev-clean", "test-clean"]  # the training split is no evaluation part
    assert data["lm_order"] == 3 and data["lm_train_sentences"] == 4 and data["oov_word_in_lm"] is True
    assert data["lm_ngrams"]["1"] == sum(1 for line in (lang_dir / "lm" / "lm.arpa").read_text().split("\\2-grams:")[0].splitlines()
                                         if "\t" in line)
    dev, test = data["parts"]["dev-clean"], data["parts"]["test-clean"]
    assert (dev["num_sentences"], dev["num_words"], dev["num_oov"]) == (2, 10, 1)  # FOOBARXQ: no pronunciation
    assert (test["num_sentences"], test["num_words"], test["num_oov"], test["num_unscored"]) == (1, 5, 0, 1)  # AND: not in the LM

    # The perplexities, computed directly with the lang's LM on the same sentences (OOV -> <UNK>).
    words = set(Lang.load(lang_dir).words.names())
    arpa = lang_dir / "lm" / "lm.arpa"
    for split, texts in (("dev-clean", DEV), ("test-clean", TEST)):
        direct = perplexity(arpa, [[w if w in words else "<UNK>" for w in t.split()] for t in texts])
        assert data["parts"][split]["perplexity"] == pytest.approx(direct.ppl, rel=1e-12)
        assert data["parts"][split]["num_unscored"] == direct.num_oov
        scored = sum(len(t.split()) + 1 for t in texts) - direct.num_oov  # one </s> per sentence
        assert direct.ppl == pytest.approx(10 ** (-direct.logprob10 / scored))
    assert dev["perplexity"] == pytest.approx(json.loads((lang_dir / "lang.json").read_text())["dev_perplexity"], rel=1e-12)

    # The section shows the JSON's numbers, before stage 3's section.
    text = md.read_text()
    assert text.index(RESULTS_HEADING) < text.index(NEXT_HEADING)
    section = read_section(md, RESULTS_HEADING)
    assert section is not None and "`./run.sh --stage 2`" in section and "4 sentences" in section and "3-gram" in section
    for split, cells in _section_rows(section).items():
        p = data["parts"][split]
        assert cells == [str(p["num_sentences"]), str(p["num_words"]), f"{100 * p['oov_rate']:.2f}% ({p['num_oov']})",
                         str(p["num_unscored"]), f"{p['perplexity']:.1f}"]
    assert set(_section_rows(section)) == {"dev-clean", "test-clean"}

    # A skipped stage (its record matches) still writes the section: from the JSON, or, when an
    # older run left none, measuring the parts again; the record stays as it was.
    record = (lang_dir / "provenance.json").read_text()
    (lang_dir / REPORT_NAME).unlink()
    md.write_text("# Results\n\n" + NEXT_HEADING + "\n\ngmm\n")
    prepare(manifests, lang_dir, NO_G2P, results_md=md, results_command="./run.sh --stage 2")
    assert (lang_dir / "provenance.json").read_text() == record
    assert json.loads((lang_dir / REPORT_NAME).read_text()) == data
    assert read_section(md, RESULTS_HEADING) == section


def test_stage2_section_goes_before_stage3s_heading() -> None:
    # s2_lang names the GMM section's heading without importing stage 3 (lhotse, the GMM code):
    # the two must stay equal, or stage 2's section would drift to the end of RESULTS.md.
    from asr_kd.stages import s2_lang, s3_gmm

    assert s2_lang.NEXT_HEADING == s3_gmm.RESULTS_HEADING
