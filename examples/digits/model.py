"""The digits CNN: an 8x8 grayscale handwritten digit [batch, 1, 8, 8] in [0, 1] -> 10 logits."""

from __future__ import annotations

import torch
from torch import nn


class DigitsNet(nn.Module):
    """Two 3x3 convolutions, a 2x2 max-pool and two linear layers (about 38k parameters)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, num_classes)
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(image))
