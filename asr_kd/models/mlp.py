"""Fully connected ReLU classifiers: the MNIST teacher and students of Hinton et al. (2015)."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


class MLP(nn.Module):
    """``input_dim -> hidden[0] -> ... -> num_classes`` with ReLU hidden layers.

    ``dropout`` applies to every hidden layer's output and ``input_dropout`` to the input (the
    regularised MNIST teacher); both default to 0 (the unregularised small net). ``forward``
    returns logits ``[N, num_classes]``.
    """

    def __init__(
        self,
        input_dim: int,
        hidden: tuple[int, ...] | list[int],
        num_classes: int,
        dropout: float = 0.0,
        input_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if input_dim <= 0 or num_classes <= 0 or any(h <= 0 for h in hidden):
            raise ValueError(f"MLP sizes must be positive, got input {input_dim}, hidden {tuple(hidden)}, classes {num_classes}")
        self.input_dim = input_dim
        self.hidden = tuple(int(h) for h in hidden)
        self.num_classes = num_classes
        layers: list[nn.Module] = [nn.Dropout(input_dropout)] if input_dropout > 0 else []
        width = input_dim
        for h in self.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        self.body = nn.Sequential(*layers)
        self.output = nn.Linear(width, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Return the last hidden layer's activations ``[N, hidden[-1]]`` (the input if no
        hidden layer)."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        """Return the logits ``[N, num_classes]``."""
        return self.output(self.body(x))

    def with_output_layer(self, weight: Tensor, bias: Tensor) -> MLP:
        """Return a copy of this network whose output layer is replaced by ``weight``
        ``[C, hidden[-1]]`` and ``bias`` ``[C]`` (e.g. a specialist initialised from a
        generalist, with its own classes)."""
        new = copy.deepcopy(self)
        new.num_classes = int(weight.shape[0])
        new.output = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            new.output.weight.copy_(weight)
            new.output.bias.copy_(bias)
        return new
