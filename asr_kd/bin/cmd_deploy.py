"""Deployment commands: make-model-dir, transcribe, export, deploy-report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``make-model-dir``, ``transcribe``, ``export`` and ``deploy-report`` to ``sub``."""
    from asr_kd.config import DEFAULT_TRAIN_PART
    from asr_kd.deploy.recipe_paths import SYSTEM_HELP

    p = sub.add_parser(
        "make-model-dir", help="gather a trained system of the recipe into a self-contained model directory",
        description="Copy the network (or, for mono and tri, the GMMs and their MFCC + deltas settings), its decoding graph "
                    "and symbol tables, the senone priors (hybrid) or units (CTC), the feature config and global CMVN statistics "
                    "(pooled over the training part's speakers) into one folder that `asr-kd transcribe` and `asr-kd export` "
                    "read and that can be copied to another machine. A hybrid or GMM-HMM directory decodes with the beam, "
                    "max-active and dev-tuned acoustic scale of the recipe's tables.",
    )
    p.add_argument("--exp", type=Path, required=True, help="the recipe's experiment folder")
    p.add_argument("--data", type=Path, required=True, help="the recipe's data folder")
    p.add_argument("--system", required=True, help=SYSTEM_HELP)
    p.add_argument("--out", type=Path, required=True, help="model directory to write")
    p.add_argument("--train-part", default=DEFAULT_TRAIN_PART, help=f"training part whose CMVN statistics are pooled (default {DEFAULT_TRAIN_PART})")
    p.add_argument("--units", default="phone", help="CTC units of a ctc-* system: phone or bpe (default phone)")
    p.add_argument("--normalization", default=None, choices=["global", "utterance"],
                   help="global CMVN from the training part, or each utterance's own mean and variance (a GMM-HMM: the mean only) "
                        "(default: utterance for a network trained on per-utterance CMVN, a *-uttcmvn system; else global)")
    p.add_argument("--tune-scale-on", type=Path, default=None, metavar="DEV_MANIFEST",
                   help="a hybrid network: choose its acoustic scale again for this directory (its own normalisation) on this lhotse "
                        "cut manifest of a dev part, never a test part; model.json keeps the sweep (default: the scale stage 7 "
                        "tuned for the system of its kind)")
    p.add_argument("--scales", type=float, nargs="+", default=None,
                   help="acoustic scales --tune-scale-on searches (default: the grid stage 7 searched)")
    p.set_defaults(func=run_make_model_dir)

    p = sub.add_parser(
        "transcribe", help="transcribe audio files or a lhotse manifest with a model directory",
        description="Audio in any format libsndfile reads (wav, flac, ogg, mp3), any sample rate (resampled), mono or "
                    "multi-channel (averaged). An unreadable file gets an error line and the others are still transcribed; "
                    "the exit status is 1 if any input failed.",
    )
    p.add_argument("files", nargs="*", type=Path, help="audio files")
    p.add_argument("--model-dir", required=True, metavar="DIR[,DIR...]",
                   help="model directory (asr-kd make-model-dir: a hybrid DNN, a GMM-HMM or a CTC model); several hybrid "
                        "ones over the same senones, comma-separated, decode as their ensemble (the mean of their posteriors; "
                        "torch backend; the first gives features, priors, graph and decoding settings: the acoustic scale "
                        "is the first member's, not one tuned for the ensemble)")
    p.add_argument("--manifest", type=Path, default=None, help="a lhotse cuts or recordings manifest instead of files")
    p.add_argument("--format", default="text", choices=["text", "jsonl", "ctm"], help="text ('<id> words'), JSON lines, or CTM word timings (default text)")
    p.add_argument("--output", type=Path, default=None, help="write here instead of standard output")
    p.add_argument("--backend", default="torch", choices=["torch", "onnx", "onnx-int8"], help="acoustic model runtime (default torch; a GMM-HMM directory runs its GMMs with numpy under torch only)")
    p.add_argument("--method", default=None, help="search: hclg (hybrid); hlg, greedy or beam (CTC; greedy and beam read the network alone, "
                        "so they take no --beam, --max-active, --acoustic-scale or --blank-penalty). Default: the graph")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--batch-size", type=int, default=8, help="files per acoustic-model batch (default 8)")
    p.add_argument("--num-threads", type=int, default=1, help="onnxruntime threads (default 1)")
    p.add_argument("--beam", type=float, default=None, help="graph search beam (default: the model directory's, the recipe's tables')")
    p.add_argument("--max-active", type=int, default=None,
                   help="most active states per frame (default: the model directory's; its min-active is lowered below it where needed)")
    p.add_argument("--acoustic-scale", type=float, default=None, help="acoustic scale of a hybrid or GMM-HMM model, or a CTC model's HLG scale (1 / LM weight) "
                        "(default: the model directory's, tuned on dev)")
    p.add_argument("--blank-penalty", type=float, default=None,
                   help="a CTC model's blank penalty on HLG, taken off the blank's log-probability on every frame before the scale "
                        "(default: the model directory's, chosen on dev by CTC stage 7; 0 where it searched none)")
    p.set_defaults(func=run_transcribe)

    p = sub.add_parser(
        "export", help="export a model directory's network to ONNX (fp32 and int8), and a CTC model for sherpa-onnx",
        description="Writes acoustic.onnx and acoustic.int8.onnx (dynamic int8 quantisation of MatMul/Gemm weights) into the "
                    "model directory: normalised features in, log-probabilities out, dynamic batch and time axes. With "
                    "--sherpa-dir, also a folder that sherpa-onnx's offline CTC recognizer loads (CMVN folded into the graph, "
                    "tokens.txt, HLG.fst, words.txt; model.int8.onnx too unless --no-int8); CTC models only.",
    )
    p.add_argument("--model-dir", type=Path, required=True, help="model directory (asr-kd make-model-dir)")
    p.add_argument("--no-int8", action="store_true", help="skip the int8 exports (acoustic.int8.onnx, and model.int8.onnx of --sherpa-dir)")
    p.add_argument("--sherpa-dir", type=Path, default=None, help="also write a sherpa-onnx folder here (CTC models)")
    p.set_defaults(func=run_export)

    p = sub.add_parser(
        "sherpa-transcribe", help="transcribe audio files with sherpa-onnx's offline CTC recognizer (an `export --sherpa-dir` folder)",
        description="sherpa-onnx computes the fbank itself, runs model.onnx (model.int8.onnx with --int8; CMVN folded in) and searches HLG.fst; the word "
                    "ids it returns are mapped with words.txt. Prints '<file id> <words>' lines.",
    )
    p.add_argument("files", nargs="+", type=Path, help="audio files (any libsndfile format; resampled to 16 kHz, mixed to mono)")
    p.add_argument("--sherpa-dir", type=Path, required=True, help="folder written by `asr-kd export --sherpa-dir`")
    p.add_argument("--feature-dim", type=int, default=None,
                   help="fbank bins the model was trained on (default: the one the export records)")
    p.add_argument("--int8", action="store_true", help="run model.int8.onnx (the dynamic int8 export) instead of model.onnx")
    p.add_argument("--num-threads", type=int, default=1, help="onnxruntime threads (default 1)")
    p.set_defaults(func=run_sherpa_transcribe)
    register_report(sub)


def decode_config_for(model_dir: Path, beam: float | None = None, max_active: int | None = None, acoustic_scale: float | None = None,
                      blank_penalty: float | None = None):
    """Return the DecodeConfig a model directory records (the recipe's beam, max-active, tuned
    acoustic scale and, for a CTC model, blank penalty), with the given options replacing its
    values; ConfigError for a blank penalty on a model that is not CTC."""
    import dataclasses
    import math

    from asr_kd.deploy.model_dir import load_spec
    from asr_kd.deploy.speed import SearchSetting, with_setting
    from asr_kd.errors import ConfigError

    spec = load_spec(model_dir)
    cfg = spec.decode_config()
    if beam is not None or max_active is not None:
        cfg = with_setting(cfg, SearchSetting(cfg.beam if beam is None else beam, cfg.max_active if max_active is None else max_active))
    if acoustic_scale is not None:
        # A CTC model's HLG search reads ctc_acoustic_scale (1 / LM weight), a hybrid's acoustic_scale.
        cfg = dataclasses.replace(cfg, **{"ctc_acoustic_scale" if spec.kind == "ctc" else "acoustic_scale": acoustic_scale})
    if blank_penalty is not None:
        if spec.kind != "ctc":
            raise ConfigError(f"--blank-penalty applies to a CTC model's HLG search; {model_dir} holds a {spec.kind} model")
        if not math.isfinite(blank_penalty):
            raise ConfigError(f"--blank-penalty must be a finite number, got {blank_penalty}")
        cfg = dataclasses.replace(cfg, ctc_blank_penalty=blank_penalty)
    return cfg


def run_make_model_dir(args: argparse.Namespace) -> int:
    """Assemble the model directory and print its path."""
    from asr_kd.deploy.recipe_paths import make_model_dir_from_recipe

    if args.scales and args.tune_scale_on is None:
        from asr_kd.errors import ConfigError

        raise ConfigError("--scales is the grid of --tune-scale-on; pass a dev manifest with --tune-scale-on too")
    out = make_model_dir_from_recipe(args.exp, args.data, args.system, args.out, args.train_part, args.units, args.normalization,
                                     args.tune_scale_on, args.scales)
    print(out)
    return 0


def run_transcribe(args: argparse.Namespace) -> int:
    """Transcribe; return 1 if any input failed."""
    from asr_kd.deploy.transcribe import Transcriber, check_unique_ids, file_items, manifest_items, transcribe_to
    from asr_kd.errors import ConfigError

    if bool(args.files) == bool(args.manifest):
        raise ConfigError("pass audio files or --manifest (one of them)")
    check_unique_ids(args.files)
    if args.output is not None and not args.output.parent.is_dir():
        raise ConfigError(f"--output {args.output}: the folder {args.output.parent} does not exist; create it or write elsewhere")
    dirs = [Path(d) for d in args.model_dir.split(",") if d]
    if not dirs:
        raise ConfigError("--model-dir names no model directory")
    if args.method in ("greedy", "beam"):
        # These read the network's output alone: a graph-search option would be silently ignored.
        given = [flag for flag, value in (("--beam", args.beam), ("--max-active", args.max_active), ("--acoustic-scale", args.acoustic_scale),
                                          ("--blank-penalty", args.blank_penalty)) if value is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} {'apply' if len(given) > 1 else 'applies'} to the graph search (HLG); --method {args.method} reads the network's output "
                              "without a graph, scale or penalty: leave the option out, or use --method hlg")
    acoustic = None
    if len(dirs) > 1:
        from asr_kd.deploy.acoustic import ensemble_acoustic

        if args.backend != "torch":
            raise ConfigError(f"an ensemble runs with the torch backend, not --backend {args.backend}")
        acoustic = ensemble_acoustic(dirs, args.device)
    tr = Transcriber(dirs[0], args.backend, args.method, decode_config_for(dirs[0], args.beam, args.max_active, args.acoustic_scale, args.blank_penalty),
                     args.device, args.num_threads, acoustic=acoustic)
    if args.manifest:
        items, total = manifest_items(args.manifest, tr.sampling_rate), None
    else:
        items, total = file_items(args.files, tr.sampling_rate, tr.timings), len(args.files)
    try:
        out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
        try:
            summary = transcribe_to(tr, items, out, args.format, args.batch_size, total)
        finally:
            if args.output:
                out.close()
    except OSError as err:
        # Opening names the file; a write or flush on a full disk names none.
        from asr_kd.utils import STORAGE_ERRNOS

        ours = err.filename is not None and Path(err.filename) == args.output
        if args.output is None or not (ours or (err.filename is None and err.errno in STORAGE_ERRNOS)):
            raise
        fix = "free space there, fix its permissions or " if err.errno in STORAGE_ERRNOS else ""
        raise ConfigError(f"--output {args.output}: cannot write it ({err.strerror}); {fix}pass another --output") from None
    print(f"transcribed {summary.transcribed} of {summary.transcribed + len(summary.failed)} inputs "
          f"({summary.audio_seconds:.1f} s of audio); {len(summary.failed)} failed", file=sys.stderr)
    return 1 if summary.failed else 0


def run_export(args: argparse.Namespace) -> int:
    """Export and print the files written."""
    from asr_kd.deploy.onnx_export import export_onnx

    if args.sherpa_dir is not None:  # refuse a model sherpa-onnx cannot run before writing any ONNX file
        from asr_kd.deploy.sherpa import check_sherpa_exportable

        check_sherpa_exportable(args.model_dir)
    for kind, path in export_onnx(args.model_dir, int8=not args.no_int8).items():
        print(f"{kind}: {path}")
    if args.sherpa_dir is not None:
        from asr_kd.deploy.sherpa import export_sherpa

        print(f"sherpa-onnx: {export_sherpa(args.model_dir, args.sherpa_dir, int8=not args.no_int8)}")
    return 0


def run_sherpa_transcribe(args: argparse.Namespace) -> int:
    """Decode the readable files with sherpa-onnx; return 1 if any file could not be read or was
    too short for one fbank frame."""
    import logging

    from asr_kd.config import FeatureConfig
    from asr_kd.data.features import too_short
    from asr_kd.deploy.audio import load_audio
    from asr_kd.deploy.sherpa import SHERPA_FRAME_LENGTH, SherpaCtc
    from asr_kd.deploy.transcribe import check_unique_ids
    from asr_kd.errors import DataError

    check_unique_ids(args.files)
    recognizer = SherpaCtc(args.sherpa_dir, args.feature_dim, num_threads=args.num_threads, int8=args.int8)
    failed = 0
    for path in args.files:
        try:
            samples = load_audio(path, recognizer.sampling_rate)
            short = too_short(len(samples), FeatureConfig(sampling_rate=recognizer.sampling_rate, frame_length=SHERPA_FRAME_LENGTH))
            if short is not None:
                raise DataError(f"{path}: {short}")
        except DataError as err:
            logging.getLogger(__name__).error("%s", err)
            failed += 1
            continue
        print(f"{path.stem} {' '.join(recognizer([samples])[0])}".rstrip())
    print(f"transcribed {len(args.files) - failed} of {len(args.files)} files; {failed} failed", file=sys.stderr)
    return 1 if failed else 0


def register_report(sub: argparse._SubParsersAction) -> None:
    """Add ``deploy-report`` to ``sub``."""
    from asr_kd.config import INT8_MAX_RELATIVE
    from asr_kd.deploy.speed import DEFAULT_GRID, DEFAULT_TOLERANCE, END_TO_END_TARGET

    p = sub.add_parser(
        "deploy-report", help="measure systems side by side (cost table) and gate int8 against fp32; write a RESULTS.md section",
        description="Every system transcribes the test manifest in one run with one thread: parameters, multiply-adds per "
                    "second of audio, acoustic and search real-time factors per core, peak memory, size on disk, test WER. "
                    "The quantisation gate fails (exit 1) when a --gate system's int8 WER is more than --max-relative "
                    "worse than its fp32 ONNX WER.",
    )
    p.add_argument("--test-manifest", type=Path, required=True, help="lhotse cuts of the test part (audio and transcripts)")
    p.add_argument("--system", action="append", required=True, metavar="NAME=DIR[,DIR...][@BACKEND]",
                   help="a system to measure; several hybrid dirs form an ensemble; backend torch (default), onnx or onnx-int8 "
                        "(a GMM-HMM dir: alone, torch)")
    p.add_argument("--gate", action="append", default=[], metavar="NAME",
                   help="system whose onnx and onnx-int8 rows the quantisation gate compares (repeat for several gates; "
                        "exit 1 when any fails)")
    p.add_argument("--max-relative", type=float, default=INT8_MAX_RELATIVE,
                   help=f"largest allowed relative WER increase of int8 (default {INT8_MAX_RELATIVE})")
    p.add_argument("--baseline", default=None, help="system whose acoustic RTF the speed-up column divides by")
    p.add_argument("--max-cuts", type=int, default=None, help="measure on the first N cuts only")
    p.add_argument("--speaker-cmvn", type=Path, default=None,
                   help="the test part's per-speaker CMVN statistics: also score each single torch system with per-speaker, "
                        "global and per-utterance normalisation (the test manifest must carry fbank features)")
    p.add_argument("--speed", action="append", default=[], metavar="NAME@BACKEND",
                   help="a system of --system (one model directory; BACKEND torch when left out) to measure end to end "
                        "(features + network + search) with the search pruning chosen on --dev-manifest, e.g. distilled@onnx-int8 "
                        "(repeat for several; each gets its own paragraph)")
    p.add_argument("--dev-manifest", type=Path, default=None, help="lhotse cuts of the dev part, where --speed chooses the pruning")
    p.add_argument("--search-grid", default=None, metavar="BEAM:MAX_ACTIVE,...",
                   help=f"settings --speed tries besides the model directory's own (default {DEFAULT_GRID})")
    p.add_argument("--search-tolerance", type=float, default=None,
                   help=f"largest relative increase of dev word errors over the model directory's own setting, for the count and for the "
                        f"upper end of the paired 95%% bootstrap interval of the WER difference (default {DEFAULT_TOLERANCE})")
    p.add_argument("--rtf-target", type=float, default=None,
                   help=f"end-to-end real-time factor per core that --speed checks; the search is narrowed only when the model "
                        f"directory's own setting misses it on dev (default {END_TO_END_TARGET:g}, the project's target on mini; "
                        "0: narrow as far as dev allows)")
    p.add_argument("--results", type=Path, default=None, help="RESULTS.md to write the section to")
    p.add_argument("--plot", type=Path, default=None, help="write a PNG of test WER against acoustic RTF here (linked when beside --results)")
    p.set_defaults(func=run_deploy_report)


def run_deploy_report(args: argparse.Namespace) -> int:
    """Measure, print the section, and return 1 if the gate failed."""
    from asr_kd.deploy.report import SystemSpec, deploy_report

    from asr_kd.deploy.speed import parse_search_grid
    from asr_kd.errors import ConfigError

    command = "asr-kd " + " ".join(sys.argv[1:]) if sys.argv[1:] else "asr-kd deploy-report"
    systems = [SystemSpec.parse(s) for s in args.system]
    speed = []
    for request in args.speed:
        name, _, backend = request.partition("@")
        found = next((s for s in systems if s.name == name and s.backend == (backend or "torch")), None)
        if found is None:
            raise ConfigError(f"--speed {request}: no such --system (NAME@BACKEND of one of them, e.g. distilled@onnx-int8)")
        if found not in speed:  # each system once (NAME and NAME@torch are one), in the order given
            speed.append(found)
    if not speed:
        given = [f for f, v in (("--dev-manifest", args.dev_manifest), ("--search-grid", args.search_grid),
                                ("--search-tolerance", args.search_tolerance), ("--rtf-target", args.rtf_target)) if v is not None]
        if given:
            raise ConfigError(f"{given[0]} applies to the speed measurement: add --speed NAME@BACKEND (one of the --system entries)")
    grid = parse_search_grid(args.search_grid) if args.search_grid else ()
    _, gates, text = deploy_report(systems, args.test_manifest, args.gate, args.max_relative,
                                  args.baseline, max_cuts=args.max_cuts, results_md=args.results, command=command,
                                  speaker_cmvn=args.speaker_cmvn, plot=args.plot, speed_system=speed, dev_manifest=args.dev_manifest,
                                  search_grid=grid, search_tolerance=args.search_tolerance, rtf_target=args.rtf_target)
    print(text)
    return 0 if all(g.passed for g in gates) else 1
