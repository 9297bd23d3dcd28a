"""GMM-HMM speed: training with 1 and with N processes side by side, EM accumulation per frame
(Kaldi's per-frame call against our vectorised statistics), alignment throughput and HCLG
decoding real-time factor per core, monophone and triphone side by side.

Uses the stage-3 outputs of a recipe run (``--data``/``--exp``, e.g. the 'mini' demo); without
them, builds the 'tiny' synthetic corpus with recipes/librispeech/run.sh (stages 0-2) and runs
stage 3 on it with the test sizes, in a temporary folder. Both systems then align and decode the
same evaluation parts in this process on one core; times are CPU time of the process (the
aligner and decoder are single-threaded, and wall time would also count other load on a shared
machine). Alignment throughput = feature frames aligned per CPU second; RTF = decoding CPU time /
audio time (10 ms frames), lower is faster.

Training (monophone then triphone, with the sizes in the experiment's gmm.yaml) runs once per
``--train-jobs`` value on the training part, in this process and its workers: wall time is what
more processes buy; CPU time (this process and its workers) what they cost. The models must
come out the same (alignments identical, parameters to float tolerance); the table says how
close they are. Writes its section of bench/RESULTS.md.

    python bench/gmm_speed.py [--data recipes/librispeech/data --exp recipes/librispeech/exp]
"""

from __future__ import annotations

import argparse
import os
import pickle
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from asr_kd.config import DecodeConfig, GmmConfig, load_config
from asr_kd.decode.gmm_decode import decode_gmm_batch
from asr_kd.decode.hclg import load_hclg
from asr_kd.gmm.accumulate import GmmParams, accumulate, ml_update
from asr_kd.gmm.parallel import map_chunks
from asr_kd.stages.layout import GMM_SYSTEMS as SYSTEMS, RecipeLayout
from asr_kd.stages.s3_gmm import PartData, _corpus_name, load_part, read_tids, run_gmm_stage
from asr_kd.gmm.train import GmmSystem, GraphInputs, TrainingResult, Utterance, align_utterances, train_monophone, train_triphone
from asr_kd.kaldi import khg
from asr_kd.lang.lang_dir import Lang
from asr_kd.metrics.wer import compute_wer

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FRAME_SHIFT = 0.01
HEADING = "## GMM-HMM alignment and decoding speed"


def build_tiny(root: Path) -> tuple[Path, Path]:
    """Run stages 0-2 of the recipe on the 'tiny' corpus and stage 3 with the test sizes under
    ``root``; return ``(data, exp)``."""
    data, exp = root / "data", root / "exp"
    cmd = ["bash", str(ROOT / "recipes/librispeech/run.sh"), "--preset", "tiny", "--data", str(data), "--exp", str(exp), "--stop-stage", "2"]
    subprocess.run(cmd, check=True, capture_output=True)
    config = load_config(GmmConfig, ROOT / "recipes/librispeech/conf/gmm_tiny.yaml")  # the sizes run.sh uses for --preset tiny
    run_gmm_stage(data, data / "lang", exp, config, "train-clean-100", ["train-clean-100", "dev-clean", "test-clean"], num_jobs=2)
    return data, exp


def measure(system: GmmSystem, inputs: GraphInputs, lang: Lang, graph_dir: Path, parts: list[PartData], config: GmmConfig, decode_config: DecodeConfig) -> dict[str, float]:
    """Return alignment frames per CPU second, decoding RTF and WER of one system on ``parts``."""
    utts = [u for p in parts for u in p.utterances]
    frames = sum(u.feats.shape[0] for u in utts)
    start = time.process_time()
    alignments, failed = align_utterances(system, inputs, utts, config)
    align_cpu = time.process_time() - start
    hclg = load_hclg(graph_dir)
    start = time.process_time()
    batch = decode_gmm_batch(hclg, system.am, system.tm, {u.id: u.feats for u in utts}, decode_config)
    decode_cpu = time.process_time() - start
    refs = {k: v for p in parts for k, v in p.refs.items()}
    return {
        "frames": frames,
        "align_fps": frames / align_cpu,
        "align_failed": failed,
        "rtf": decode_cpu / (frames * FRAME_SHIFT),
        "wer": compute_wer(refs, batch.texts(lang.words)).wer,
        "decode_failed": len(batch.failed),
        "graph_states": hclg.num_states,
    }


def _cpu_seconds() -> tuple[float, float]:
    """CPU seconds of this process and of its finished child processes (the workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def _spin(chunk: range) -> float:
    """Busy work for about 0.2 s of CPU; return the CPU seconds it took."""
    start = time.process_time()
    while time.process_time() - start < 0.2:
        sum(range(10_000))
    return time.process_time() - start


def available_cores(num_jobs: int) -> float:
    """Return how many cores ``num_jobs`` busy workers got just now (CPU seconds / wall seconds):
    on a shared machine this is what a speed-up can be at most."""
    used: list[float] = []
    start = time.perf_counter()
    map_chunks(_spin, [range(i, i + 1) for i in range(4 * num_jobs)], num_jobs, "spin", used.append)
    return sum(used) / (time.perf_counter() - start)


def _parameters(am: khg.AmDiagGmm) -> tuple[np.ndarray, np.ndarray]:
    pdfs = [am.get_pdf(p) for p in range(am.num_pdfs)]
    return np.concatenate([g.means for g in pdfs]), np.concatenate([g.vars for g in pdfs])


def _model_difference(a: TrainingResult, b: TrainingResult) -> dict[str, float]:
    """Return how far two training results are apart: alignment mismatches, the largest mean
    difference in standard deviations and the largest relative variance difference."""
    if a.system.am.num_gauss != b.system.am.num_gauss:
        return {"ali_diff": float("nan"), "mean_diff": float("nan"), "var_diff": float("nan")}
    (ma, va), (mb, vb) = _parameters(a.system.am), _parameters(b.system.am)
    ali = sum(not np.array_equal(a.alignments.get(k), b.alignments.get(k)) for k in set(a.alignments) | set(b.alignments))
    return {"ali_diff": ali, "mean_diff": float(np.max(np.abs(ma - mb) / np.sqrt(va))), "var_diff": float(np.max(np.abs(va - vb) / va))}


def measure_training(inputs: GraphInputs, utterances: list[Utterance], config: GmmConfig, jobs: list[int]) -> dict[int, dict[str, float]]:
    """Train monophone and triphone systems with each number of jobs; return per number of
    jobs, per system: wall seconds, CPU seconds of this process (``_cpu``) and of the workers
    (``_workers_cpu``), and the difference from the first run's models."""
    out: dict[int, dict[str, float]] = {}
    first: tuple[TrainingResult, TrainingResult] | None = None
    for n in jobs:
        row: dict[str, float] = {"cores": available_cores(n)}
        results = []
        for name in SYSTEMS:
            wall, (own, workers) = time.perf_counter(), _cpu_seconds()
            if name == "mono":
                results.append(train_monophone(inputs, utterances, config, num_jobs=n))
            else:
                results.append(train_triphone(inputs, utterances, results[0].system, results[0].alignments, config, num_jobs=n))
            own_after, workers_after = _cpu_seconds()
            row |= {f"{name}_wall": time.perf_counter() - wall, f"{name}_cpu": own_after - own, f"{name}_workers_cpu": workers_after - workers}
        first = first or (results[0], results[1])
        for name, ref, new in zip(SYSTEMS, first, results):
            row |= {f"{name}_{k}": v for k, v in _model_difference(ref, new).items()}
        out[n] = row
        print(f"training with {n} job(s) on {row['cores']:.2f} available cores: mono {row['mono_wall']:.1f} s, tri {row['tri_wall']:.1f} s (wall)", flush=True)
    return out


def measure_accumulation(system: GmmSystem, utterances: list[Utterance], tids: dict[str, list[int]], config: GmmConfig, rounds: int = 3) -> dict[str, float]:
    """Return CPU microseconds per frame of one EM accumulation pass, Kaldi's per-frame call
    against :func:`asr_kd.gmm.accumulate.accumulate` (best of ``rounds`` interleaved rounds), and
    how far apart the two updated models are."""
    have = [u for u in utterances if u.id in tids]
    alis = [np.asarray(tids[u.id], dtype=np.int32) for u in have]
    frames = sum(len(a) for a in alis)
    am, tm = system.am, system.tm
    tid_to_pdf = np.asarray(tm.transition_id_to_pdf_array(), dtype=np.int64)

    def kaldi() -> khg.AccumAmDiagGmm:
        acc = khg.AccumAmDiagGmm()
        acc.init(model=am, flags=khg.GmmUpdateFlags.kGmmAll)
        for u, ali in zip(have, alis):
            feats = np.ascontiguousarray(u.feats, dtype=np.float32)
            for t, pdf in enumerate(tid_to_pdf[ali].tolist()):
                acc.accumulate_for_gmm(model=am, data=feats[t], gmm_index=pdf, weight=1.0)
        return acc

    def ours():
        return accumulate(GmmParams.of(am), tid_to_pdf, tm.num_transition_ids, [u.feats for u in have], alis)

    times: dict[str, list[float]] = {"kaldi": [], "ours": []}
    results = {}
    for _ in range(rounds):
        for name, func in (("kaldi", kaldi), ("ours", ours)):
            start = time.process_time()
            results[name] = func()
            times[name].append(time.process_time() - start)
    ref_am, new_am, new_tm = pickle.loads(pickle.dumps(am)), pickle.loads(pickle.dumps(am)), pickle.loads(pickle.dumps(tm))
    options = khg.MleDiagGmmOptions(min_gaussian_occupancy=config.min_gaussian_occupancy, min_variance=config.min_variance)
    khg.mle_am_diag_gmm_update(config=options, amdiag_gmm_acc=results["kaldi"], flags=khg.str_to_gmm_flags("mvwt"), am_gmm=ref_am)
    ml_update(new_am, new_tm, results["ours"], config.min_gaussian_occupancy, config.min_variance)
    (mr, vr), (mn, vn) = _parameters(ref_am), _parameters(new_am)
    return {
        "frames": frames,
        "kaldi_us": 1e6 * min(times["kaldi"]) / frames,
        "ours_us": 1e6 * min(times["ours"]) / frames,
        "mean_diff": float(np.max(np.abs(mr - mn) / np.sqrt(vr))),
        "var_diff": float(np.max(np.abs(vr - vn) / vr)),
    }


def training_lines(train: dict[int, dict[str, float]], acc: dict[str, float], part: str, num_utts: int, frames: int, config: GmmConfig) -> list[str]:
    """Return the RESULTS.md lines of the training measurements."""
    jobs = list(train)
    base = train[jobs[0]]
    lines = [
        "",
        f"Training on {part} ({num_utts} utterances, {frames} frames): monophone {config.mono_num_iters} iterations "
        f"({len(config.mono_realign_iters)} realigning), triphone {config.tri_num_iters} ({len(config.tri_realign_iters)} realigning), "
        f"one run per number of jobs on a machine with {os.cpu_count()} CPUs shared with other work. Cores: what that many busy "
        "workers got just before the run (CPU s / wall s), the ceiling of any speed-up. Speed-up: wall time with "
        f"{jobs[0]} job(s) / wall time. CPU: this process (the serial part: model updates, mixing up, merging) + the "
        "workers. Amdahl: the speed-up that 16 free cores would give with this split between serial and parallel CPU "
        "(multi-job runs only). Difference from the first run's models: utterances whose alignment differs, largest mean "
        "difference (standard deviations), largest relative variance difference.",
        "",
        "| system | jobs | cores | wall s | speed-up | CPU s (main + workers) | Amdahl, 16 cores | alignments differing | max mean diff (sd) | max var diff (rel) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in SYSTEMS:
        for n in jobs:
            r = train[n]
            own, workers = r[f"{name}_cpu"], r[f"{name}_workers_cpu"]
            amdahl = f"{(own + workers) / (own + workers / 16):.1f}x" if n > 1 and workers > 0 else "-"
            lines.append(
                f"| {name} | {n} | {r['cores']:.2f} | {r[f'{name}_wall']:.1f} | {base[f'{name}_wall'] / r[f'{name}_wall']:.2f}x | "
                f"{own:.1f} + {workers:.1f} | {amdahl} | {r[f'{name}_ali_diff']:.0f} | {r[f'{name}_mean_diff']:.1e} | {r[f'{name}_var_diff']:.1e} |"
            )
    lines += [
        "",
        f"One EM accumulation pass with the trained triphone system over the training alignments ({acc['frames']} frames, "
        f"CPU time, best of 3): Kaldi's per-frame `accumulate_for_gmm` {acc['kaldi_us']:.2f} us/frame, vectorised statistics "
        f"(asr_kd/gmm/accumulate.py) {acc['ours_us']:.2f} us/frame ({acc['kaldi_us'] / acc['ours_us']:.1f}x). Models updated "
        f"from the two agree to {acc['mean_diff']:.1e} standard deviations (means) and {acc['var_diff']:.1e} relative (variances).",
    ]
    return lines


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Run the benchmark; return ``{system: measurements}`` (alignment and decoding)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="recipe data folder (with lang/, mfcc/); default: build 'tiny'")
    parser.add_argument("--exp", type=Path, default=None, help="recipe experiment folder holding gmm/ (stage 3)")
    parser.add_argument("--parts", nargs="+", default=["dev-clean", "test-clean"], help="parts to align and decode")
    parser.add_argument("--beam", type=float, default=DecodeConfig().beam)
    parser.add_argument("--train-part", default="train-clean-100", help="part to train on (and to time accumulation on)")
    parser.add_argument("--train-jobs", type=int, nargs="+", default=[1, 2], help="numbers of training processes to compare (the first is the reference)")
    parser.add_argument("--train-utts", type=int, default=0, help="train on the first N utterances only (0: all)")
    parser.add_argument("--results", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    args = parser.parse_args(argv)
    if (args.data is None) != (args.exp is None):
        parser.error("give both --data and --exp, or neither (then the 'tiny' corpus is built)")

    with tempfile.TemporaryDirectory() as tmp:
        data, exp = (args.data, args.exp) if args.data else build_tiny(Path(tmp))
        corpus = _corpus_name(data) if args.data else "the synthetic 'tiny' corpus (built in a temporary folder)"
        paths = RecipeLayout(data, exp)
        config = load_config(GmmConfig, paths.gmm / "gmm.yaml")  # the sizes the systems were trained with
        lang = Lang.load(data / "lang")
        inputs = GraphInputs.from_lang(lang)
        parts = [load_part(data, p, lang, config) for p in args.parts]
        decode_config = DecodeConfig(beam=args.beam, acoustic_scale=config.acoustic_scale, num_jobs=1)
        train = load_part(data, args.train_part, lang, config)
        train_utts = train.utterances[: args.train_utts] if args.train_utts else train.utterances
        training = measure_training(inputs, train_utts, config, args.train_jobs)
        tri_tids = read_tids(paths.tids(args.train_part))
        accumulation = measure_accumulation(GmmSystem.load(paths.gmm_model("tri")), train_utts, tri_tids, config)
        train_frames = sum(u.feats.shape[0] for u in train_utts)
        results = {}
        for name in SYSTEMS:
            system = GmmSystem.load(paths.gmm_model(name))
            results[name] = measure(system, inputs, lang, paths.gmm_graph(name), parts, config, decode_config) | {
                "pdfs": system.num_pdfs, "gaussians": system.am.num_gauss,
            }

    frames = results["mono"]["frames"]
    command = " ".join(["python", "bench/gmm_speed.py", *(argv if argv is not None else sys.argv[1:])])
    lines = [
        HEADING + " (bench/gmm_speed.py)",
        "",
        f"`{command}` on {platform.processor() or platform.machine()}, one core, {corpus}: parts "
        f"{', '.join(args.parts)} ({frames} frames, {frames * FRAME_SHIFT:.0f} s). Features MFCC + CMN + deltas (39 dims). "
        f"Alignment: Viterbi with the training graph of the transcript (beam {config.beam:g}, retry {config.retry_beam:g}); "
        f"decoding: HCLG with the stage-2 LM, {decode_config.decoder} decoder, beam {decode_config.beam:g}, "
        f"max_active {decode_config.max_active}, acoustic scale {decode_config.acoustic_scale:g}. CPU time of the process.",
        "",
        "| system | senones | Gaussians | HCLG states | align frames/s per core | align x real time | not aligned | decode RTF per core | WER % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['pdfs']} | {r['gaussians']} | {r['graph_states']} | {r['align_fps']:.0f} | "
            f"{r['align_fps'] * FRAME_SHIFT:.0f} | {r['align_failed']} | {r['rtf']:.4f} | {100 * r['wer']:.2f} |"
        )
    lines += training_lines(training, accumulation, args.train_part, len(train_utts), train_frames, config)
    lines.append("")
    text = "\n".join(lines)
    print(text)
    write_section(args.results, HEADING, text)
    return results


if __name__ == "__main__":
    main()
