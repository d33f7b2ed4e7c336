"""Train the digits CNN on scikit-learn's handwritten digits and save it in every format modelbay loads.

    python examples/digits/train.py            # ~20 s on 2 CPU cores

Data: sklearn.datasets.load_digits (1,797 real 8x8 scans, pixel values 0..16), split 75/25,
stratified, seed 0. Pixels are scaled to [0, 1] (value / 16), which is what a PNG of the digit
(value * 255 / 16) gives back after the image-classification task divides by 255.
Writes:
  artifacts/   the model as torch.export (.pt2), TorchScript, state_dict (.pt), safetensors,
               a pickled module, and ONNX;
  samples/     one held-out scan of each digit as an 8x8 PNG, named after its true label;
  ../../src/modelbay/builtin/digits/digits.pt2   the default model of `modelbay serve`.
Prints the accuracy on the held-out split.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from model import DigitsNet  # noqa: E402

BUILTIN = HERE.parents[1] / "src" / "modelbay" / "builtin" / "digits"


def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
    """Train and held-out tensors [n, 1, 8, 8] in [0, 1] with int64 labels, and the held-out raw pixels."""
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.images, digits.target, test_size=0.25, random_state=0, stratify=digits.target
    )

    def tensor(images: np.ndarray) -> torch.Tensor:
        return torch.tensor(images / 16.0, dtype=torch.float32).unsqueeze(1)

    return tensor(x_train), torch.tensor(y_train), tensor(x_test), torch.tensor(y_test), x_test


def train(x: torch.Tensor, y: torch.Tensor, epochs: int = 40) -> DigitsNet:
    torch.manual_seed(0)
    model = DigitsNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for start in range(0, len(x), 64):
            batch = order[start : start + 64]
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
    return model.eval()


def save_all(model: DigitsNet, out: Path) -> None:
    out.mkdir(exist_ok=True)
    example = (torch.zeros(2, 1, 8, 8),)
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, example, dynamic_shapes=({0: batch},))
    torch.export.save(program, out / "digits.pt2")
    torch.jit.save(torch.jit.script(model), out / "digits.torchscript.pt")
    torch.save(model.state_dict(), out / "digits.state_dict.pt")
    safetensors.torch.save_file(model.state_dict(), out / "digits.safetensors")
    torch.save(model, out / "digits.pickled.pt")
    torch.onnx.export(
        model,
        example,
        out / "digits.onnx",
        input_names=["image"],
        output_names=["logits"],
        dynamic_shapes=({0: batch},),
        external_data=False,
    )


def save_samples(raw: np.ndarray, labels: torch.Tensor, out: Path) -> None:
    out.mkdir(exist_ok=True)
    for digit in range(10):
        index = int((labels == digit).nonzero()[0])
        pixels = np.round(raw[index] * 255 / 16).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(out / f"{digit}.png")


def main() -> None:
    x_train, y_train, x_test, y_test, raw_test = data()
    model = train(x_train, y_train)
    with torch.inference_mode():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    print(f"held-out accuracy: {accuracy:.4f} on {len(y_test)} digits")
    save_all(model, HERE / "artifacts")
    save_samples(raw_test, y_test, HERE / "samples")
    BUILTIN.mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "artifacts" / "digits.pt2", BUILTIN / "digits.pt2")


if __name__ == "__main__":
    main()
