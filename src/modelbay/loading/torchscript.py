"""TorchScript artifacts (`torch.jit.save`)."""

from __future__ import annotations

from pathlib import Path

import torch

from modelbay.errors import ModelLoadError
from modelbay.loading.runner import TorchRunner, signature_inputs
from modelbay.settings import ModelConfig


def load(path: Path, config: ModelConfig) -> TorchRunner:
    """A TorchScript module on CPU in eval mode; input names from its compiled `forward` schema.

    Raises ModelLoadError when torch.jit cannot read the file.
    """
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"{path}: not a loadable TorchScript archive: {exc}") from exc
    module.eval()
    return TorchRunner(module, "pytorch_torchscript", signature_inputs(module))
