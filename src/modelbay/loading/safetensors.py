"""`.safetensors` weights: a state_dict with no pickle at all, plus the architecture."""

from __future__ import annotations

from pathlib import Path

import safetensors.torch

from modelbay.errors import ModelLoadError
from modelbay.loading.state_dict import runner_from_state_dict
from modelbay.loading.torch_runner import TorchRunner
from modelbay.settings import ModelConfig


def load(path: Path, config: ModelConfig) -> TorchRunner:
    """Load the tensors and put them into `config.arch`. Raises ModelLoadError (see state_dict)."""
    try:
        state = safetensors.torch.load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise ModelLoadError(f"{path}: not a readable safetensors file: {exc}") from exc
    return runner_from_state_dict(state, config, path)
