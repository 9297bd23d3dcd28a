"""Data commands: corpus manifests (stage 0) and features (stage 1)."""

from __future__ import annotations

import argparse
from pathlib import Path

from asr_kd.bin.common import command_line
from asr_kd.config import FeatureConfig, load_config, parse_overrides


def register(sub: argparse._SubParsersAction) -> None:
    """Add the data commands to ``sub``."""
    p = sub.add_parser(
        "prepare-manifests",
        help="stage 0: lhotse manifests for a LibriSpeech-layout corpus (real or synthetic)",
        description="Scan <corpus-dir>/<part>/<speaker>/<chapter>/ and write validated lhotse "
        "recordings and supervisions manifests (librispeech_{recordings,supervisions}_<part>.jsonl.gz). "
        "Unreadable audio, audio without transcript and transcripts without audio are skipped, "
        "counted and listed in skipped_<part>.txt.",
    )
    p.add_argument("--corpus-dir", type=Path, required=True, help="folder holding train-clean-100/, dev-clean/, ...")
    p.add_argument("--output-dir", type=Path, required=True, help="where the manifests go")
    p.add_argument("--parts", nargs="+", required=True,
                   help="parts to prepare, e.g. train-clean-100 dev-clean test-clean; train-960, train-clean-460 or a+b "
                   "combine several folders into one part")
    p.add_argument("--num-jobs", type=int, default=2, help="threads reading audio headers (default 2)")
    p.set_defaults(func=_prepare_manifests)

    p = sub.add_parser(
        "relocate",
        help="after moving a data or experiment folder: rewrite the absolute paths in its manifests",
        description="lhotse manifests hold absolute paths (audio, feature storage, stored alignments and soft targets). "
        "After `mv data /new/place/data`, run `asr-kd relocate --dir /new/place/data --from /old/place/data`: every "
        "path under --from in every manifest under --dir is rewritten to --to (default: --dir). Exits 1 if a "
        "rewritten path does not exist.",
    )
    p.add_argument("--dir", type=Path, required=True, help="the moved folder (its manifests are rewritten in place)")
    p.add_argument("--from", dest="old_prefix", type=Path, required=True, help="the folder's former absolute path")
    p.add_argument("--to", dest="new_prefix", type=Path, default=None, help="the new prefix (default: --dir)")
    p.add_argument("--dry-run", action="store_true", help="only count what would change")
    p.set_defaults(func=_relocate)

    p = sub.add_parser(
        "download-librispeech",
        help="download LibriSpeech parts with lhotse (needs internet)",
        description="Download and unpack LibriSpeech parts from openslr.org with lhotse.",
    )
    p.add_argument("--target-dir", type=Path, required=True, help="download folder")
    p.add_argument("--parts", nargs="+", required=True, help="parts to download (train-960, train-clean-460 and a+b name their folders)")
    p.set_defaults(func=_download)

    p = sub.add_parser(
        "compute-features",
        help="stage 1: fbank (networks) and MFCC (GMMs) features with lilcom storage, plus CMVN stats",
        description="Compute features for each part's cuts and write <output-dir>/<kind>/cuts_<part>.jsonl.gz, "
        "feats_<part>.lca and cmvn_<part>.npz. Cuts whose audio cannot be decoded are skipped and listed.",
    )
    p.add_argument("--manifest-dir", type=Path, required=True, help="stage 0 output")
    p.add_argument("--output-dir", type=Path, required=True, help="features go to <output-dir>/fbank and <output-dir>/mfcc")
    p.add_argument("--parts", nargs="+", required=True, help="parts to process")
    p.add_argument("--kinds", nargs="+", default=["fbank", "mfcc"], choices=["fbank", "mfcc"], help="feature kinds")
    p.add_argument("--config", type=Path, default=None, help="YAML file of FeatureConfig fields")
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE", help="override a config field")
    p.set_defaults(func=_compute_features)

    p = sub.add_parser(
        "data-summary",
        help="print hours, utterances and speakers per part, vocabulary, OOV rates and LM perplexity",
        description="Summarise stages 0-2: reads the supervision manifests and <lang-dir>/lang.json.",
    )
    p.add_argument("--manifest-dir", type=Path, required=True)
    p.add_argument("--lang-dir", type=Path, default=None)
    p.add_argument("--parts", nargs="+", required=True)
    p.set_defaults(func=_data_summary)

    p = sub.add_parser(
        "import-results",
        help="put another run's RESULTS.md into this one as one section, above this file's own (a headline run)",
        description="Copy every '## ' section of --from (the RESULTS.md that another run's --results named) into --into as "
                    "one section, '## <heading>', above the sections already there (or in its place when it exists), each "
                    "imported heading one level down so that the stages writing --into never replace them. Run it again "
                    "to bring the section up to date; --from is never changed. Files the sections link to by a relative path "
                    "(stage 8's plot) are copied from --from's folder into imported/<the heading's slug>/ beside --into, and "
                    "the links point at the copies.",
    )
    p.add_argument("--from", dest="source", type=Path, required=True, help="the other run's RESULTS.md")
    p.add_argument("--into", type=Path, required=True, help="the RESULTS.md that gets the section")
    p.add_argument("--heading", required=True, help="the section's heading, without its '## '")
    p.add_argument("--note", action="append", default=[],
                   help="a paragraph written by hand, printed after the section's lead as 'Noted by hand: ...' (repeatable)")
    p.set_defaults(func=_import_results)


def _import_results(args: argparse.Namespace) -> int:
    from asr_kd.report.results_md import import_run, sections

    lead = (f"Imported by `{command_line()}` from that run's results file: its sections, unchanged but for their headings "
            "(one level down), each naming the command that wrote it. The sections after this one are this file's own.")
    lead += "".join(f"\n\nNoted by hand: {note.strip()}" for note in args.note)
    import_run(args.source, args.into, args.heading, lead)
    print(f"{args.into}: section '## {args.heading}' holds the {len(sections(args.source))} sections of {args.source}")
    return 0


def _relocate(args: argparse.Namespace) -> int:
    from asr_kd.data.relocate import relocate_manifests
    from asr_kd.utils import setup_logging

    setup_logging()
    r = relocate_manifests(args.dir, args.old_prefix, args.new_prefix, args.dry_run)
    print(f"{args.dir}: {r.paths_changed} paths in {r.manifests_changed} of {r.manifests} manifests "
          f"{'would be ' if args.dry_run else ''}rewritten; {r.missing} of them missing at the new place"
          + (f", e.g. {r.missing_examples[0]}" if r.missing else ""))
    return 1 if r.missing else 0


def _prepare_manifests(args: argparse.Namespace) -> int:
    from asr_kd.stages.s0_corpus import prepare

    reports = prepare(args.corpus_dir, args.output_dir, args.parts, num_jobs=args.num_jobs, command=command_line())
    if not isinstance(reports, dict):
        print(f"{args.output_dir}: up to date ({reports.finished}, {args.output_dir / 'provenance.json'})")
        return 0
    for r in reports.values():
        skipped = f", skipped {sum(r.skipped.values())} ({', '.join(f'{k}: {v}' for k, v in r.skipped.items())})" if r.skipped else ""
        print(f"{r.part:>16}: {r.utterances:6d} utterances, {r.hours:7.2f} h, {r.speakers:4d} speakers{skipped}")
    return 0


def _download(args: argparse.Namespace) -> int:
    from asr_kd.data.librispeech import download_librispeech

    print(download_librispeech(args.target_dir, args.parts))
    return 0


def _compute_features(args: argparse.Namespace) -> int:
    from asr_kd.stages.s1_features import compute

    cfg = load_config(FeatureConfig, args.config, parse_overrides(args.overrides))
    reports = compute(args.manifest_dir, args.output_dir, args.parts, cfg, args.kinds, command=command_line())
    if not isinstance(reports, list):
        print(f"{args.output_dir}: features up to date ({reports.finished})")
        return 0
    for r in reports:
        speed = r.audio_seconds / max(r.wall_seconds, 1e-9)
        skipped = f", {r.skipped} skipped" if r.skipped else ""
        print(f"{r.kind:>5} {r.part:>16}: {r.cuts:6d} cuts, {r.frames:9d} frames x {r.dim}, {speed:6.0f}x real time{skipped}")
    return 0


def _data_summary(args: argparse.Namespace) -> int:
    from asr_kd.report.data_summary import summarize_data

    print(summarize_data(args.manifest_dir, args.lang_dir, args.parts))
    return 0
