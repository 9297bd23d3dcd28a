"""A small convolutional image classifier: the stronger teacher for Fashion-MNIST (issue 16).

An MLP teacher has almost no headroom over the unregularised 784-800-800-10 student there (565
against 580 validation errors of 5,000), so distillation from it cannot help; a convnet sees the
translation-invariant structure the MLPs have to learn from data. The student stays an MLP.
"""

from __future__ import annotations

from torch import Tensor, nn

# The teacher's sizes: ~8.5 s per epoch of 10,000 images on one CPU thread (4.8 M multiply-adds
# an image), about three times the 784-1200-1200-10 MLP teacher.
DEFAULT_CHANNELS = (32, 64)
DEFAULT_HIDDEN = 256
CONVNET_WORDS = (
    f"a convnet (two 3x3 convolutions of {DEFAULT_CHANNELS[0]} and {DEFAULT_CHANNELS[1]} channels, "
    f"each followed by 2x2 max-pooling, then a {DEFAULT_HIDDEN}-unit hidden layer)"
)


class ConvNet(nn.Module):
    """Flat grey images ``[N, H * W]`` -> two 3x3 convolution blocks (ReLU, 2x2 max-pooling) ->
    a ReLU hidden layer -> logits ``[N, num_classes]``.

    Takes the same flat input as :class:`asr_kd.models.mlp.MLP`, so the training loop, the
    jitter and the logits files serve both. ``dropout`` applies before and after the hidden
    layer, ``input_dropout`` to the pixels. ``H`` and ``W`` must be multiples of 4.
    """

    def __init__(
        self,
        height: int,
        width: int,
        num_classes: int,
        channels: tuple[int, int] = DEFAULT_CHANNELS,
        hidden: int = DEFAULT_HIDDEN,
        dropout: float = 0.0,
        input_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if height % 4 or width % 4 or height <= 0 or width <= 0:
            raise ValueError(f"ConvNet needs image sides that are positive multiples of 4, got {height}x{width}")
        if num_classes <= 0 or hidden <= 0 or min(channels) <= 0:
            raise ValueError(f"ConvNet sizes must be positive, got channels {channels}, hidden {hidden}, classes {num_classes}")
        self.height, self.width, self.num_classes = height, width, num_classes
        c1, c2 = channels
        self.input_dropout = nn.Dropout(input_dropout) if input_dropout > 0 else nn.Identity()
        self.convs = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            nn.Linear(c2 * (height // 4) * (width // 4), hidden),
            nn.ReLU(),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Return the logits ``[N, num_classes]`` of flat images ``x`` ``[N, H * W]``."""
        x = self.input_dropout(x).view(x.shape[0], 1, self.height, self.width)
        return self.head(self.convs(x))
