"""Acoustic-model speed per core: PyTorch fp32 vs onnxruntime fp32 vs onnxruntime dynamic int8.

The recipe's tiny and mini models are trained on little data; what the runtimes cost depends on
the network's shape, not its weights, so this measures the DNN presets (mini, paper) and the mini
CTC encoder with random weights on random 40-dim features: 60 s of audio in 10 s utterances, one
utterance per call, one thread. RTF = CPU time of this process / audio time (best of 3 passes),
so other load on a shared machine does not count. Also reports how far int8 moves the
posteriors (mean frames whose best class changes; real WER effects are the quantisation gate's
business, asr-kd deploy-report). Writes its section of bench/RESULTS.md.

    python bench/deploy_speed.py [--seconds 60] [--models dnn-mini dnn-paper ctc-mini]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from asr_kd.ctc.model import CtcEncoder
from asr_kd.deploy.acoustic import OnnxAcoustic, TorchAcoustic
from asr_kd.deploy.onnx_export import ExportableAcoustic, export_module, quantize_int8
from asr_kd.deploy.report import macs_per_frame
from asr_kd.models.dnn import SplicedDnn, dnn_preset

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402

MODELS = {
    "dnn-mini": lambda: SplicedDnn(dnn_preset("mini"), 2000),
    "dnn-paper": lambda: SplicedDnn(dnn_preset("paper"), 14000),
    "ctc-mini": lambda: CtcEncoder(40, 42, "mini", 4, 0.0),
}


def cpu_seconds(fn, feats, repeats: int = 3) -> float:
    """Best-of-``repeats`` CPU seconds of running ``fn`` on each feature matrix in turn."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for f in feats:
            fn([f])
        best = min(best, time.process_time() - start)
    return best


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60.0, help="audio seconds per model (10 s utterances)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--results", type=Path, default=Path(__file__).parent / "RESULTS.md")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    feats = [rng.standard_normal((1000, 40)).astype(np.float32) for _ in range(max(1, int(args.seconds // 10)))]
    audio = sum(f.shape[0] for f in feats) * 0.01
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model = MODELS[name]().eval()
            fp32 = export_module(ExportableAcoustic(model), 40, Path(tmp) / f"{name}.onnx")
            int8 = quantize_int8(fp32, Path(tmp) / f"{name}.int8.onnx")
            runners = {"torch fp32": TorchAcoustic(model), "onnx fp32": OnnxAcoustic(fp32), "onnx int8": OnnxAcoustic(int8)}
            rtf = {k: cpu_seconds(r, feats) / audio for k, r in runners.items()}
            ref, q = runners["torch fp32"](feats[:2]), runners["onnx int8"](feats[:2])
            flips = float(np.mean(np.concatenate([a.argmax(1) != b.argmax(1) for a, b in zip(ref, q)])))
            results[name] = {"params": sum(x.numel() for x in model.parameters()), "macs_per_s": macs_per_frame(model, 40) * 100,
                             "rtf": rtf, "mb": {"fp32": fp32.stat().st_size / 1e6, "int8": int8.stat().st_size / 1e6}, "flips": flips}
    cmd = " ".join(["python", "bench/deploy_speed.py", *(argv if argv is not None else sys.argv[1:])])
    lines = [
        "## Acoustic model runtimes (bench/deploy_speed.py)", "",
        f"`{cmd}` on {platform.processor() or platform.machine()}, one thread; random weights and features, {audio:.0f} s of "
        "audio in 10 s utterances, one utterance per call; RTF = CPU time / audio time, best of 3 passes. int8 = onnxruntime "
        "dynamic quantisation of MatMul/Gemm weights; 'best class changed' = frames whose arg-max differs from PyTorch fp32 "
        "(random weights: an upper bound on what a trained, peakier model sees).", "",
        "| Model | Params | MMACs / s audio | RTF torch fp32 | RTF onnx fp32 | RTF onnx int8 | int8 speed-up vs torch | Size fp32 / int8 (MB) | best class changed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        t = r["rtf"]
        lines.append(f"| {name} | {r['params']:,} | {r['macs_per_s'] / 1e6:.0f} | {t['torch fp32']:.4f} | {t['onnx fp32']:.4f} | "
                     f"{t['onnx int8']:.4f} | {t['torch fp32'] / t['onnx int8']:.2f}x | {r['mb']['fp32']:.1f} / {r['mb']['int8']:.1f} | "
                     f"{100 * r['flips']:.1f}% |")
    text = "\n".join(lines) + "\n"
    print(text)
    write_section(args.results, "## Acoustic model runtimes", text)
    return results


if __name__ == "__main__":
    main()
