"""SpecAugment (Park et al. 2019, "SpecAugment: a simple data augmentation method for automatic
speech recognition"): frequency and time masks on a batch of normalised features.

The masks of a training step come from a generator seeded with the run's seed and the step
number, so a resumed run draws the masks an uninterrupted one would, without extra state in the
checkpoint, and the dropout generator is left alone.
"""

from __future__ import annotations

import torch

from asr_kd.config import TrainConfig

# A time mask covers at most this share of an utterance (the paper's p for LibriSpeech is 1.0 with
# T = 100 frames on long utterances; short synthetic utterances need the bound).
MAX_TIME_SHARE = 0.2


def spec_augment_enabled(cfg: TrainConfig) -> bool:
    """Return whether ``cfg`` asks for any mask."""
    return (cfg.specaug_freq_masks > 0 and cfg.specaug_freq_width > 0) or (cfg.specaug_time_masks > 0 and cfg.specaug_time_width > 0)


def spec_augment(features: torch.Tensor, lengths: torch.Tensor, cfg: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """Return a copy of ``features`` (B x T x F, normalised) with each utterance's masks set to 0:
    ``cfg.specaug_freq_masks`` bands of 0..``specaug_freq_width`` bins and ``specaug_time_masks``
    spans of 0..min(``specaug_time_width``, a fifth of its length) frames, inside its
    ``lengths[b]`` frames, drawn from ``generator``."""
    out = features.clone()
    num_bins = features.shape[-1]

    def draw(high: int) -> int:  # uniform on 0..high
        return int(torch.randint(0, high + 1, (1,), generator=generator))

    for b in range(features.shape[0]):
        n = int(lengths[b])
        for _ in range(cfg.specaug_freq_masks):
            width = draw(min(cfg.specaug_freq_width, num_bins))
            start = draw(num_bins - width)
            out[b, :n, start:start + width] = 0
        for _ in range(cfg.specaug_time_masks):
            width = draw(min(cfg.specaug_time_width, int(MAX_TIME_SHARE * n)))
            start = draw(n - width)
            out[b, start:start + width, :] = 0
    return out


def step_generator(cfg: TrainConfig, step: int) -> torch.Generator:
    """Return the generator of training step ``step``'s masks."""
    return torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)


def frame_phase(cfg: TrainConfig, step: int) -> int:
    """Return the first frame (0 .. ``cfg.frame_subsampling`` - 1) whose output training step
    ``step`` computes under ``train.frame_subsampling``: drawn from the run's seed and the step,
    like the masks (so a resumed run draws what an uninterrupted one would), but from a generator
    of its own, so SpecAugment draws the same masks with or without subsampling."""
    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step + 7_919 * 1_000_003)
    return int(torch.randint(0, cfg.frame_subsampling, (1,), generator=generator))
