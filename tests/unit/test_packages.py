"""The packages the project promises its users load and work in the installed environment (a
mismatched torch/torchaudio pair installs fine and fails only when its library loads)."""

from __future__ import annotations

import numpy as np


def test_torchaudio_loads_beside_torch_and_resamples() -> None:
    import torch
    import torchaudio
    import torchaudio.functional as F

    assert torchaudio.__version__.split("+")[0] == torch.__version__.split("+")[0]
    t = torch.arange(16000) / 16000
    tone = torch.sin(2 * torch.pi * 440 * t)[None]
    down = F.resample(tone, 16000, 8000)
    assert down.shape == (1, 8000)
    spectrum = np.abs(np.fft.rfft(down[0].numpy()))
    assert abs(int(spectrum.argmax()) - 440) <= 1  # 1 s at 8 kHz: 1 Hz bins, the tone stays at 440 Hz
