"""TorchScript artifacts (`torch.jit.save`)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

from modelbay.errors import ModelLoadError
from modelbay.loading.runner import TorchRunner, signature_inputs
from modelbay.settings import ModelConfig

log = logging.getLogger("modelbay.loading")


def load(path: Path, config: ModelConfig) -> TorchRunner:
    """A TorchScript module on CPU in eval mode; input names from its compiled `forward` schema.

    Raises ModelLoadError when torch.jit cannot read the file.
    """
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated in PyTorch; say so once, in the log
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"{path}: not a loadable TorchScript archive: {exc}") from exc
    log.info("%s is TorchScript, which PyTorch deprecates; torch.export (.pt2) is its successor", path.name)
    module.eval()
    return TorchRunner(module, "pytorch_torchscript", signature_inputs(module))
