"""The spliced-frame DNN acoustic model of Hinton, Vinyals & Dean (2015), section 4.

Each output frame ``t`` sees the input frames ``t - left_context .. t + right_context`` (the paper:
26 frames of 40 log filter-bank coefficients, predicting the HMM state of the 21st, i.e. 20 frames
of left and 5 of right context), through ReLU hidden layers (8 of 2,560 units in the paper) to
logits over the senones (14,000 in the paper).

Splicing happens on the fly from a padded batch ``[B, T, D]``: one gather builds the window of
every frame with edge replication at each utterance's own first and last frame (not at the
batch's padded end), so nothing is stored 26 times on disk.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from asr_kd.config import DnnConfig, config_from_dict, load_config
from asr_kd.errors import ConfigError

# ``paper``: section 4 of the paper; ``mini``: the same window on a CPU-sized network; ``tiny``:
# for tests and egs/ (seconds on a CPU).
DNN_PRESETS: dict[str, DnnConfig] = {
    "paper": DnnConfig(feature_dim=40, left_context=20, right_context=5, hidden_dim=2560, num_hidden_layers=8),
    # The 'mini' recipe (make demo): the paper's input window (26 frames of 40 fbank, the 21st
    # predicted) on a network small enough that 4 teachers, 2 students and the 3% runs train in a
    # few minutes on 2 CPU cores.
    "mini": DnnConfig(feature_dim=40, left_context=20, right_context=5, hidden_dim=256, num_hidden_layers=3),
    "tiny": DnnConfig(feature_dim=40, left_context=5, right_context=2, hidden_dim=64, num_hidden_layers=2),
    # The compressed students (issue 15, the step beyond the paper): at most a quarter of one
    # teacher's multiply-adds, distilled from the ensemble. mini's teacher costs 525k MACs a frame
    # (1040 x 256 + 2 x 256 x 256 + 256 x 500 senones); this one 124k (23.6%): 16 frames of
    # context (10 left, 5 right) into 2 layers of 100 (640 x 100 + 100 x 100 + 100 x 500).
    "mini-compressed": DnnConfig(feature_dim=40, left_context=10, right_context=5, hidden_dim=100, num_hidden_layers=2),
    # The teacher's whole 26-frame window within the same budget (issue 15, bench/RESULTS.md
    # "Compressed students"): each frame's 40 fbank projected to 20 once (800), the window of 26
    # projections into 3 layers of 128 (520 x 128 + 2 x 128 x 128), a linear bottleneck of 48
    # before the 500 senones (128 x 48 + 48 x 500): 130,272 MACs a frame, 24.8% of the teacher's.
    # Measured with 30 training epochs (recipes/librispeech/conf/train_students_mini.yaml).
    # Chosen on dev over 5 variants; over 3 seeds an 11-frame window into 3 x 128 with a bottleneck
    # of 64 (129,280 MACs) was worse on dev and better on test, both within noise (bench/RESULTS.md).
    "mini-compressed-v2": DnnConfig(feature_dim=40, left_context=20, right_context=5, hidden_dim=128, num_hidden_layers=3,
                                    frame_projection_dim=20, bottleneck_dim=48),
    "tiny-compressed": DnnConfig(feature_dim=40, left_context=2, right_context=1, hidden_dim=24, num_hidden_layers=1),
}


def dnn_preset(name: str) -> DnnConfig:
    """Return the preset ``name`` (a key of :data:`DNN_PRESETS`: ``paper``, ``mini``, ``tiny``, the compressed ones)."""
    if name not in DNN_PRESETS:
        raise ConfigError(f"unknown DNN preset {name!r}; choose one of {sorted(DNN_PRESETS)} or pass a YAML file")
    return DNN_PRESETS[name]


def load_dnn_config(name_or_yaml: str, overrides: Mapping[str, Any] | None = None) -> DnnConfig:
    """Return a preset (``paper``, ``mini``, ``tiny``) or a YAML file of DnnConfig fields, with
    ``overrides`` (``key=value`` strings or values) applied on top."""
    if name_or_yaml in DNN_PRESETS:
        base = dataclasses.asdict(DNN_PRESETS[name_or_yaml])
        return config_from_dict(DnnConfig, {**base, **(overrides or {})}, f"DNN preset {name_or_yaml}")
    if not Path(name_or_yaml).is_file():
        raise ConfigError(f"--model-config {name_or_yaml!r} is neither a preset {sorted(DNN_PRESETS)} nor an existing YAML file")
    return load_config(DnnConfig, name_or_yaml, overrides)


def splice_frames(x: Tensor, lengths: Tensor, left: int, right: int, positions: Tensor | None = None) -> Tensor:
    """Return ``[B, T, (left + 1 + right) * D]``: for each frame, the frames ``t - left .. t + right``
    of ``x`` (``[B, T, D]``) concatenated oldest first, indices clamped to ``0 .. lengths[b] - 1``
    (edge replication per utterance). Frames at ``t >= lengths[b]`` are padding and hold
    replicated edge frames. With ``positions`` (``[P]`` frame indices), only those frames'
    windows: ``[B, P, (left + 1 + right) * D]``."""
    b, t, d = x.shape
    offsets = torch.arange(-left, right + 1, device=x.device)
    centres = torch.arange(t, device=x.device) if positions is None else positions.to(x.device)
    t = centres.numel()
    idx = centres[None, :, None] + offsets[None, None, :]  # [1, T, W]
    last = (lengths.to(x.device).clamp(min=1) - 1)[:, None, None]  # [B, 1, 1]
    idx = torch.minimum(idx.clamp(min=0), last)  # [B, T, W]
    rows = torch.arange(b, device=x.device)[:, None, None]
    return x[rows, idx].reshape(b, t, (left + 1 + right) * d)


class SplicedDnn(nn.Module):
    """[Linear frame projection ->] spliced window -> ``num_hidden_layers`` x (Linear, ReLU[,
    Dropout]) -> [linear bottleneck ->] Linear logits.

    ``forward(features [B, T, D], lengths [B])`` returns logits ``[B, T, num_classes]``; logits of
    padding frames are meaningless (mask them with the labels' ignore index). Without the
    compression options (``frame_projection_dim``, ``bottleneck_dim`` of 0) the projection and
    the bottleneck are identities with no parameters, so checkpoints made before they existed
    load unchanged.
    """

    def __init__(self, cfg: DnnConfig, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        self.cfg = cfg
        self.num_classes = num_classes
        frame_dim = cfg.frame_projection_dim or cfg.feature_dim
        # No bias: a per-frame constant added before the first hidden layer is that layer's bias.
        self.projection: nn.Module = nn.Linear(cfg.feature_dim, frame_dim, bias=False) if cfg.frame_projection_dim else nn.Identity()
        width = frame_dim * (cfg.left_context + 1 + cfg.right_context)
        layers: list[nn.Module] = []
        for _ in range(cfg.num_hidden_layers):
            layers += [nn.Linear(width, cfg.hidden_dim), nn.ReLU()]
            if cfg.dropout > 0:
                layers.append(nn.Dropout(cfg.dropout))
            width = cfg.hidden_dim
        self.hidden = nn.Sequential(*layers)
        # No bias either: the output layer's bias follows it.
        self.bottleneck: nn.Module = nn.Linear(width, cfg.bottleneck_dim, bias=False) if cfg.bottleneck_dim else nn.Identity()
        self.output = nn.Linear(cfg.bottleneck_dim or width, num_classes)

    @property
    def window(self) -> int:
        """Frames per input window."""
        return self.cfg.left_context + 1 + self.cfg.right_context

    def forward(self, features: Tensor, lengths: Tensor, positions: Tensor | None = None) -> Tensor:
        """Return per-frame logits ``[B, T, num_classes]``; with ``positions`` (``[P]`` frame
        indices, as :func:`asr_kd.data.frames.subsample_frames` picks them in training) only
        those frames' logits, ``[B, P, num_classes]``, at about P / T of the arithmetic."""
        if features.shape[-1] != self.cfg.feature_dim:
            raise ValueError(f"expected {self.cfg.feature_dim} features per frame, got {features.shape[-1]}")
        # Projecting before splicing computes each frame's projection once, not once per window.
        spliced = splice_frames(self.projection(features), lengths, self.cfg.left_context, self.cfg.right_context, positions)
        return self.output(self.bottleneck(self.hidden(spliced)))

    def describe(self) -> dict:
        """Return what rebuilds this model: its config as a dict and ``num_classes``."""
        return {"model_config": dataclasses.asdict(self.cfg), "num_classes": self.num_classes}


def num_linear_params(cfg: DnnConfig, num_classes: int) -> int:
    """Return the number of weights of the model's matrix multiplies (biases excluded): the
    multiply-adds per frame (the frame projection runs once per frame, like every other layer) and
    the count behind the ``6 * params * frames`` estimate of training FLOPs."""
    frame_dim = cfg.frame_projection_dim or cfg.feature_dim
    total = cfg.feature_dim * cfg.frame_projection_dim
    width = frame_dim * (cfg.left_context + 1 + cfg.right_context)
    for _ in range(cfg.num_hidden_layers):
        total += width * cfg.hidden_dim
        width = cfg.hidden_dim
    if cfg.bottleneck_dim:
        total += width * cfg.bottleneck_dim
        width = cfg.bottleneck_dim
    return total + width * num_classes
