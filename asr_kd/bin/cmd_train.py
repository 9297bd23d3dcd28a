"""Training commands: the frame-level DNN acoustic model (stages 4 and 6)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from asr_kd.config import DEFAULT_DNN_PRESET, SENONES_FIELD


def register(sub: argparse._SubParsersAction) -> None:
    """Add the training commands to ``sub``."""
    p = sub.add_parser(
        "train-dnn",
        help="stages 4/6: train the spliced-frame DNN on frame labels (senone alignments) with cross entropy",
        description="Train a DNN acoustic model (Hinton et al. 2015, section 4) on fbank cuts carrying frame "
        "labels. Writes <exp-dir>/train.yaml, model.yaml, checkpoints/, best.pt, final.pt, tensorboard/ and "
        "log/train.log. Run it under `torchrun --nproc_per_node N` for DDP; --resume continues from the "
        "latest checkpoint.",
    )
    p.add_argument("--cuts", type=Path, required=True, help="training cuts with fbank features and labels (jsonl.gz)")
    p.add_argument("--dev-cuts", type=Path, default=None, help="dev cuts with labels: frame accuracy each epoch")
    p.add_argument("--cmvn", type=Path, default=None, help="CMVN statistics of the training part (stage 1 cmvn_<part>.npz)")
    p.add_argument("--dev-cmvn", type=Path, default=None, help="CMVN statistics of the dev part")
    p.add_argument("--labels-name", default=SENONES_FIELD, help=f"the cuts' custom field of frame labels (default {SENONES_FIELD})")
    p.add_argument("--num-classes", type=int, required=True, help="number of label classes (senones)")
    p.add_argument("--model-config", default=DEFAULT_DNN_PRESET,
                   help=f"DNN preset (paper, mini, tiny) or YAML file of DnnConfig fields (default {DEFAULT_DNN_PRESET})")
    p.add_argument("--model-set", dest="model_overrides", action="append", metavar="KEY=VALUE", help="override a DnnConfig field")
    p.add_argument("--config", type=Path, default=None, help="YAML file of TrainConfig fields")
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE", help="override a TrainConfig field")
    p.add_argument("--exp-dir", type=Path, required=True, help="experiment folder")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in <exp-dir>/checkpoints")
    p.set_defaults(func=_train_dnn)


def _train_dnn(args: argparse.Namespace) -> int:
    from asr_kd.config import TrainConfig, load_config, parse_overrides
    from asr_kd.models.dnn import load_dnn_config
    from asr_kd.train.frame_classifier import train_frame_classifier
    from asr_kd.utils import setup_logging

    rank = int(os.environ.get("RANK", "0"))
    setup_logging(args.exp_dir / "log" / ("train.log" if rank == 0 else f"train.rank{rank}.log"))
    result = train_frame_classifier(
        args.cuts, args.dev_cuts, args.cmvn, args.dev_cmvn, args.num_classes,
        load_dnn_config(args.model_config, parse_overrides(args.model_overrides)),
        load_config(TrainConfig, args.config, parse_overrides(args.overrides)),
        args.exp_dir, labels_name=args.labels_name, resume=args.resume,
    )
    if rank == 0:
        print(f"{result.final_path} ({result.state.stop_reason}); best {result.best_path}")
    return 0
