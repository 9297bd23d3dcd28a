"""ONNX export of a model directory's network: fp32 and int8 (onnxruntime dynamic quantisation).

The exported graph maps normalised features ``x [N, T, D]`` (float32) and ``x_lens [N]`` (int64)
to ``log_probs [N, T', V]`` (log-softmax over senones or CTC tokens) and ``log_probs_len [N]``,
with dynamic batch and time axes. ``transcribe --backend onnx`` / ``onnx-int8`` run the files
``acoustic.onnx`` / ``acoustic.int8.onnx`` written into the model directory.

The CTC encoder's ``nn.MultiheadAttention`` is traced by the TorchScript-based exporter with its
batch and time sizes frozen into Reshape nodes (measured: a graph exported at 2 x 100 frames
fails at 3 x 57). :class:`_TraceableAttention` computes the same attention from the same weights
with reshapes that keep those axes symbolic.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from asr_kd.deploy.acoustic import INPUT_NAMES, ONNX_FILES, OUTPUT_NAMES, output_lengths
from asr_kd.utils import atomic_path

log = logging.getLogger(__name__)

OPSET = 17


class _TraceableAttention(nn.Module):
    """Self-attention with the weights of an ``nn.MultiheadAttention`` (batch first), written so
    that tracing keeps the batch and time axes dynamic. Called like the module it replaces."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        self.mha = mha
        self.heads = mha.num_heads
        self.head_dim = mha.embed_dim // mha.num_heads

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None, need_weights: bool = False) -> tuple[Tensor, None]:
        b = query.shape[0]
        q, k, v = nn.functional.linear(query, self.mha.in_proj_weight, self.mha.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, -1, self.heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        out = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2).reshape(b, -1, self.heads * self.head_dim)
        return self.mha.out_proj(out), None


class ExportableAcoustic(nn.Module):
    """``(x, x_lens) -> (log_probs, log_probs_len)`` around a network; with ``mean``/``std`` the
    global CMVN is applied inside the graph first (for runtimes that feed raw fbank) and padding
    frames are zeroed after it, as our own batches pad with zeros. ``blank_penalty`` is taken off
    the blank's (token 0) log-probability and ``output_scale`` then multiplies them all (a CTC blank
    penalty and an acoustic scale, for runtimes whose search has neither option)."""

    def __init__(self, model: nn.Module, mean: Tensor | None = None, std: Tensor | None = None, output_scale: float = 1.0,
                 blank_penalty: float = 0.0) -> None:
        super().__init__()
        self.output_scale = float(output_scale)
        self.blank_penalty = float(blank_penalty)
        self.model = copy.deepcopy(model).eval()
        for block in getattr(self.model, "blocks", []):
            if isinstance(getattr(block, "attn", None), nn.MultiheadAttention):
                block.attn = _TraceableAttention(block.attn)
        self.normalize = mean is not None
        self.register_buffer("mean", mean if mean is not None else torch.zeros(0))
        self.register_buffer("inv_std", 1.0 / std if std is not None else torch.zeros(0))

    def forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        if self.normalize:
            keep = torch.arange(x.shape[1], device=x.device)[None, :] < x_lens[:, None]
            x = ((x - self.mean) * self.inv_std) * keep[:, :, None].to(x.dtype)
        log_probs = torch.log_softmax(self.model(x, x_lens), dim=-1)
        if self.blank_penalty:
            log_probs = torch.cat([log_probs[..., :1] - self.blank_penalty, log_probs[..., 1:]], dim=-1)
        if self.output_scale != 1.0:
            log_probs = log_probs * self.output_scale
        return log_probs, output_lengths(self.model, x_lens)


def export_module(module: ExportableAcoustic, feature_dim: int, path: Path | str, output_names: tuple[str, str] = OUTPUT_NAMES) -> Path:
    """Trace ``module`` to an ONNX file at ``path`` (dynamic batch and time axes); return it."""
    x = torch.randn(2, 64, feature_dim)
    x_lens = torch.tensor([64, 41], dtype=torch.int64)
    axes = {INPUT_NAMES[0]: {0: "N", 1: "T"}, INPUT_NAMES[1]: {0: "N"}, output_names[0]: {0: "N", 1: "T_out"}, output_names[1]: {0: "N"}}
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer warnings
        torch.onnx.export(module, (x, x_lens), str(tmp), input_names=list(INPUT_NAMES), output_names=list(output_names),
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    return Path(path)


def quantize_int8(fp32_path: Path | str, int8_path: Path | str) -> Path:
    """Write the dynamic int8 quantisation of ``fp32_path`` (weights of MatMul and Gemm as int8,
    activations quantised on the fly, as icefall's export-onnx scripts do) to ``int8_path``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime advises shape pre-processing on the root logger at every call
    try:
        with atomic_path(int8_path) as tmp:
            quantize_dynamic(str(fp32_path), str(tmp), op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    return Path(int8_path)


def add_metadata(path: Path | str, metadata: dict[str, str]) -> None:
    """Set ``metadata`` as the ONNX model's metadata properties (rewriting the file)."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for k, v in metadata.items():
        model.metadata_props.add(key=k, value=str(v))
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))


def export_onnx(model_dir: Path | str, int8: bool = True) -> dict[str, Path]:
    """Export the network of ``model_dir`` to ``acoustic.onnx`` (and ``acoustic.int8.onnx``)
    inside it; return ``{"onnx": path, "onnx-int8": path}``. Without ``int8``, an
    ``acoustic.int8.onnx`` left by an earlier export is removed."""
    from asr_kd.deploy.model_dir import load_network, load_spec

    model_dir = Path(model_dir)
    spec = load_spec(model_dir)
    network = load_network(model_dir)
    out = {"onnx": export_module(ExportableAcoustic(network), spec.features.num_mel_bins, model_dir / ONNX_FILES["onnx"])}
    add_metadata(out["onnx"], {"model_type": f"asr-kd-{spec.kind}", "subsampling_factor": spec.subsampling, "normalization": spec.normalization})
    if int8:
        out["onnx-int8"] = quantize_int8(out["onnx"], model_dir / ONNX_FILES["onnx-int8"])
    else:  # an int8 file of an earlier export would no longer match the fp32 one
        (model_dir / ONNX_FILES["onnx-int8"]).unlink(missing_ok=True)
    for k, p in out.items():
        log.info("%s: %s (%.1f MB)", k, p, p.stat().st_size / 1e6)
    return out

