#!/usr/bin/env python3
"""Validation and test errors of 784-800-800-10 student variants distilled from (or trained
beside) a finished MNIST-recipe teacher, one seed each: the quick measurements behind the
fashion preset's student settings (issue 16). Prints one line per variant.

    python recipes/mnist/local/student_variants.py recipes/mnist/exp/fashion hard:1:0.1:1:40 kd:1:0.1:1:40

A variant is KIND:T:HARD_WEIGHT:JITTER:EPOCHS; KIND is hard (T and HARD_WEIGHT unused) or kd.
The other settings are MnistConfig's defaults (batch 100, learning rate 1e-3, the recipe's
student seed), so a variant matches the recipe's own student of those settings.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from asr_kd.config_secondary import MnistConfig
from asr_kd.errors import ConfigError
from asr_kd.experiments import mnist
from asr_kd.experiments.classifier import count_errors, predict_logits


def parse_variant(text: str) -> tuple[str, float, float, int, int]:
    """Return (kind, temperature, hard weight, jitter pixels, epochs) from ``text``."""
    parts = text.split(":")
    if len(parts) != 5 or parts[0] not in ("hard", "kd"):
        raise ConfigError(f"variant {text!r} is not KIND:T:HARD_WEIGHT:JITTER:EPOCHS with KIND hard or kd, e.g. kd:1:0.1:1:40")
    return parts[0], float(parts[1]), float(parts[2]), int(parts[3]), int(parts[4])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("exp", type=Path, help="the recipe's experiment folder (its prepare and teacher stages finished)")
    ap.add_argument("variants", nargs="+", help="KIND:T:HARD_WEIGHT:JITTER:EPOCHS")
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/mnist_student_variants"), help="TensorBoard logs [%(default)s]")
    args = ap.parse_args()
    torch.set_num_threads(1)
    try:
        variants = [parse_variant(v) for v in args.variants]
    except ConfigError as e:
        ap.error(str(e))  # one line, exit status 2
    splits = mnist._splits(args.exp)
    shifted: dict[int, torch.Tensor] = {}  # the teacher's logits on each shift, per jitter
    for text, (kind, t, hard_weight, jitter, epochs) in zip(args.variants, variants):
        cfg = MnistConfig(student_epochs=epochs, hard_weight=hard_weight, student_jitter=jitter)
        logits = None
        if kind == "kd" and jitter:
            if jitter not in shifted:
                shifted[jitter] = mnist._transfer_logits(cfg, args.exp, splits)
            logits = shifted[jitter]
        elif kind == "kd":
            logits = mnist._teacher_logits(args.exp)["train"]
        start = time.time()
        model, _ = mnist._train_student(cfg, args.scratch, splits, cfg.student_hidden, logits, t if kind == "kd" else None, jitter=jitter)
        errors = {k: count_errors(predict_logits(model, splits[k].inputs()), splits[k].targets()) for k in ("val", "test")}
        print(f"{text}: {errors['val']} of {len(splits['val'])} validation, {errors['test']} of {len(splits['test'])} test errors ({time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
