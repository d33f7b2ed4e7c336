"""The benchmark models: the three of the performance issue plus the real digits CNN.

Each entry gives the module (seeded weights), one example input [1, ...] and the JSON body a client
sends, {"input": <one example as nested lists>}, the same body for every server.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


class ConvNet(nn.Module):
    """A small conv net on 3x64x64 images: three conv+pool stages and a linear head (10 classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(64 * 8 * 8, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(image), 1))


def _linear() -> nn.Module:
    return nn.Linear(64, 10)


def _mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(1024, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 1000)
    )


def _digits() -> nn.Module:
    sys.path.insert(0, str(ROOT / "examples" / "digits"))
    from model import DigitsNet

    module = DigitsNet()
    module.load_state_dict(
        torch.load(ROOT / "examples/digits/artifacts/digits.state_dict.pt", weights_only=True)
    )
    return module


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "linear": (_linear, (64,)),
    "mlp": (_mlp, (1024,)),
    "conv": (ConvNet, (3, 64, 64)),
    "digits": (_digits, (1, 8, 8)),
}


def build(name: str) -> nn.Module:
    """The model `name` in eval mode with seeded weights."""
    factory, _ = MODELS[name]
    torch.manual_seed(0)
    return factory().eval()


def example(name: str) -> torch.Tensor:
    """One example [1, ...] of the model's input, seeded."""
    generator = torch.Generator().manual_seed(1)
    return torch.rand((1, *MODELS[name][1]), generator=generator)


def body(name: str) -> bytes:
    """The request body every server gets: {"input": one example as nested lists}."""
    return json.dumps({"input": example(name)[0].tolist()}).encode()


def export(name: str, folder: Path) -> Path:
    """Save the model as a torch.export program with a dynamic batch dimension; returns its path."""
    module, x = build(name), example(name)
    program = torch.export.export(
        module, (x.repeat(2, *[1] * (x.dim() - 1)),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    path = folder / f"{name}.pt2"
    torch.export.save(program, path)
    return path
