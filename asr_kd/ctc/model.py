"""A CTC encoder family: convolutional subsampling, then Conformer-lite blocks, then a linear
layer over the CTC tokens.

Each block is a Conformer block (Gulati et al. 2020) made small: half-step feed-forward, multi-
head self-attention with a padding mask (absolute sinusoidal positions added once at the input),
a depthwise convolution module, a second half-step feed-forward, and a final LayerNorm. Sizes:

| size        | d_model | blocks | heads | ff  | conv kernel |
|-------------|---------|--------|-------|-----|-------------|
| tiny        | 64      | 2      | 2     | 128 | 15          |
| mini        | 144     | 4      | 4     | 384 | 15          |
| librispeech | 256     | 12     | 4     | 1024| 31          |

``forward(features [B, T, D], lengths [B]) -> logits [B, T', V]`` returns only the logits (so a
model fits :class:`asr_kd.kd.ensemble.TeacherEnsemble`); :meth:`CtcEncoder.output_lengths` maps
input lengths to output lengths ``T'`` (about ``T / subsampling``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import Tensor, nn

from asr_kd.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class EncoderSize:
    """The dimensions of one member of the family."""

    d_model: int
    num_blocks: int
    num_heads: int
    ff_dim: int
    conv_kernel: int


CTC_MODEL_PRESETS: dict[str, EncoderSize] = {
    "tiny": EncoderSize(64, 2, 2, 128, 15),
    "mini": EncoderSize(144, 4, 4, 384, 15),
    "librispeech": EncoderSize(256, 12, 4, 1024, 31),
}


def subsampled_lengths(lengths: Tensor, subsampling: int) -> Tensor:
    """Return the output lengths of the subsampling front end for input ``lengths``: each
    stride-2 convolution (kernel 3, padding 1) maps ``n`` frames to ``(n + 1) // 2``."""
    out = lengths
    for _ in range(int(math.log2(subsampling))):
        out = torch.div(out + 1, 2, rounding_mode="floor")
    return out


class ConvSubsampling(nn.Module):
    """Stride-2 3x3 convolutions over (time, frequency), one per factor of 2, then a projection."""

    def __init__(self, feature_dim: int, d_model: int, subsampling: int, channels: int = 32) -> None:
        super().__init__()
        if subsampling not in (2, 4):
            raise ConfigError(f"CTC subsampling must be 2 or 4, got {subsampling}")
        convs: list[nn.Module] = []
        in_ch, freq = 1, feature_dim
        for _ in range(int(math.log2(subsampling))):
            convs.append(nn.Conv2d(in_ch, channels, 3, stride=2, padding=1))
            in_ch, freq = channels, (freq + 1) // 2
        self.convs = nn.ModuleList(convs)
        self.proj = nn.Linear(channels * freq, d_model)
        self.subsampling = subsampling

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        """Return ``[B, T', d_model]`` for features ``[B, T, D]`` of ``lengths`` frames."""
        y = x.unsqueeze(1)
        for conv in self.convs:
            y, lengths = torch.relu(conv(y)), subsampled_lengths(lengths, 2)
            # Zero the padding frames so that a cut's output does not depend on its batch mates.
            keep = torch.arange(y.shape[2], device=y.device)[None, :] < lengths.to(y.device)[:, None]
            y = y * keep[:, None, :, None]
        b, c, t, f = y.shape
        return self.proj(y.transpose(1, 2).reshape(b, t, c * f))


def sinusoidal_positions(length: int, dim: int, device: torch.device) -> Tensor:
    """Return the ``[length, dim]`` sinusoidal position table of Vaswani et al. (2017)."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(pos * div)
    table[:, 1::2] = torch.cos(pos * div[: dim // 2])
    return table


class FeedForward(nn.Module):
    def __init__(self, d_model: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, ff_dim), nn.SiLU(), nn.Dropout(dropout),
                                 nn.Linear(ff_dim, d_model), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ConvModule(nn.Module):
    """Pointwise conv + GLU, depthwise conv, norm, SiLU, pointwise conv (padding frames zeroed)."""

    def __init__(self, d_model: int, kernel: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.pointwise_in = nn.Conv1d(d_model, 2 * d_model, 1)
        self.depthwise = nn.Conv1d(d_model, d_model, kernel, padding=kernel // 2, groups=d_model)
        # LayerNorm over channels rather than BatchNorm: batch statistics would mix padding in.
        self.mid_norm = nn.LayerNorm(d_model)
        self.pointwise_out = nn.Conv1d(d_model, d_model, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, pad_mask: Tensor) -> Tensor:
        y = nn.functional.glu(self.pointwise_in(self.norm(x).transpose(1, 2)), dim=1)
        # Zero padding frames before the depthwise convolution reads across the cut's end.
        y = self.depthwise(y.masked_fill(pad_mask[:, None, :], 0.0)).transpose(1, 2)
        y = nn.functional.silu(self.mid_norm(y)).transpose(1, 2)
        return self.dropout(self.pointwise_out(y).transpose(1, 2))


class ConformerLiteBlock(nn.Module):
    """One block: x + FF/2, x + MHSA, x + Conv, x + FF/2, LayerNorm."""

    def __init__(self, size: EncoderSize, dropout: float) -> None:
        super().__init__()
        self.ff1 = FeedForward(size.d_model, size.ff_dim, dropout)
        self.attn_norm = nn.LayerNorm(size.d_model)
        self.attn = nn.MultiheadAttention(size.d_model, size.num_heads, dropout=dropout, batch_first=True)
        self.attn_dropout = nn.Dropout(dropout)
        self.conv = ConvModule(size.d_model, size.conv_kernel, dropout)
        self.ff2 = FeedForward(size.d_model, size.ff_dim, dropout)
        self.out_norm = nn.LayerNorm(size.d_model)

    def forward(self, x: Tensor, pad_mask: Tensor) -> Tensor:
        x = x + 0.5 * self.ff1(x)
        y = self.attn_norm(x)
        y, _ = self.attn(y, y, y, key_padding_mask=pad_mask, need_weights=False)
        x = x + self.attn_dropout(y)
        x = x + self.conv(x, pad_mask)
        x = x + 0.5 * self.ff2(x)
        return self.out_norm(x)


class CtcEncoder(nn.Module):
    """Subsampling front end, Conformer-lite blocks and the CTC output layer (module docstring)."""

    def __init__(self, feature_dim: int, num_tokens: int, size: str = "mini", subsampling: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        if size not in CTC_MODEL_PRESETS:
            raise ConfigError(f"CTC model size must be one of {sorted(CTC_MODEL_PRESETS)}, got {size!r}")
        if num_tokens < 2:
            raise ConfigError(f"a CTC model needs at least 2 tokens (blank and one label), got {num_tokens}")
        dims = CTC_MODEL_PRESETS[size]
        self.feature_dim, self.num_tokens, self.size, self.subsampling, self.dropout = feature_dim, num_tokens, size, subsampling, dropout
        self.frontend = ConvSubsampling(feature_dim, dims.d_model, subsampling)
        self.input_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(ConformerLiteBlock(dims, dropout) for _ in range(dims.num_blocks))
        self.output = nn.Linear(dims.d_model, num_tokens)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Return the number of output frames for each input length."""
        return subsampled_lengths(lengths, self.subsampling)

    def forward(self, features: Tensor, lengths: Tensor) -> Tensor:
        """Return CTC logits ``[B, T', num_tokens]``; frames beyond each output length are padding."""
        x = self.frontend(features, lengths)
        out_lengths = self.output_lengths(lengths).to(x.device)
        pad_mask = torch.arange(x.shape[1], device=x.device)[None, :] >= out_lengths[:, None]
        x = self.input_dropout(x + sinusoidal_positions(x.shape[1], x.shape[2], x.device))
        for block in self.blocks:
            x = block(x, pad_mask)
        return self.output(x)

    def describe(self) -> dict[str, Any]:
        """Return what rebuilds this model (stored in checkpoints as ``extra``)."""
        return {"ctc_model": {"feature_dim": self.feature_dim, "num_tokens": self.num_tokens, "size": self.size,
                              "subsampling": self.subsampling, "dropout": self.dropout}}

    @classmethod
    def from_description(cls, extra: dict[str, Any]) -> "CtcEncoder":
        """Return an untrained model built from :meth:`describe`'s dict."""
        return cls(**extra["ctc_model"])
