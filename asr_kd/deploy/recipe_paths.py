"""Where today's recipe (recipes/librispeech/run.sh) keeps what a model directory needs.

:func:`recipe_model_paths` is the ONLY place in :mod:`asr_kd.deploy` that knows the recipe's
folder layout; everything else takes explicit paths. Repoint it when the layout changes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from asr_kd.config import FeatureConfig, load_config
from asr_kd.deploy.model_dir import assemble_ctc_model_dir, assemble_hybrid_model_dir
from asr_kd.errors import ConfigError, DataError

SYSTEM_HELP = "distilled, hard (the hybrid students), teacher<i>, or ctc-<student> (ctc-baseline, ctc-frame, ctc-sequence, ...)"


def _best(run_dir: Path) -> Path:
    for name in ("best.pt", "final.pt"):
        if (run_dir / name).is_file():
            return run_dir / name
    raise DataError(f"{run_dir} holds no best.pt or final.pt; train that model first (recipe stages 4-6)")


def recipe_model_paths(exp: Path | str, data: Path | str, system: str, train_part: str = "train-clean-100", units: str = "phone") -> dict[str, Path]:
    """Return the paths a model directory of ``system`` is assembled from, in the recipe's
    folders ``exp`` and ``data``: ``kind`` aside, the keyword arguments of
    :func:`assemble_hybrid_model_dir` or :func:`assemble_ctc_model_dir`."""
    exp, data = Path(exp), Path(data)
    common = {"features": data / "features.yaml", "train_cmvn": data / "fbank" / f"cmvn_{train_part}.npz"}
    if system in ("distilled", "hard") or re.fullmatch(r"teacher\d+", system):
        run = exp / "students" / system if system in ("distilled", "hard") else exp / "teachers" / system
        senones = exp / "gmm" / "ali" / "senones.json"
        if not senones.is_file():
            raise DataError(f"{senones} does not exist; run recipe stage 3 (GMM-HMM) first")
        info = json.loads(senones.read_text())
        return {**common, "checkpoint": _best(run), "log_priors": exp / "gmm" / "ali" / "log_priors.npy",
                "graph_dir": Path(info["graph"]), "gmm_model": Path(info["model"]), "lang_dir": data / "lang"}
    if system.startswith("ctc-"):
        root = exp / "ctc" / units
        return {**common, "checkpoint": _best(root / "students" / system[4:]), "units_dir": root / "units",
                "hlg": root / "graph" / "HLG.fst", "words": data / "lang" / "words.txt"}
    raise ConfigError(f"unknown system {system!r}; use {SYSTEM_HELP}")


def make_model_dir_from_recipe(
    exp: Path | str, data: Path | str, system: str, out_dir: Path | str, train_part: str = "train-clean-100", units: str = "phone",
    normalization: str = "global",
) -> Path:
    """Assemble the model directory of the recipe's ``system`` at ``out_dir``; return it."""
    paths = recipe_model_paths(exp, data, system, train_part, units)
    feature_yaml = paths.pop("features")
    if not feature_yaml.is_file():
        raise DataError(f"{feature_yaml} does not exist; run recipe stage 1 (features), which records the feature config there")
    features = load_config(FeatureConfig, feature_yaml)
    desc = f"{system} from {Path(exp).resolve()}"
    if "units_dir" in paths:
        return assemble_ctc_model_dir(out_dir, features=features, normalization=normalization, description=desc, **paths)
    return assemble_hybrid_model_dir(out_dir, features=features, normalization=normalization, description=desc, **paths)
