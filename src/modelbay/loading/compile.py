"""`torch_compile: true`: a PyTorch model's module run through `torch.compile` (TorchInductor).

torch.compile compiles on the first call of each new input shape (a second batch size makes the
batch dimension dynamic: "automatic dynamic shapes" in the torch.compile docs), so the predictor's
probe at setup pays the first compilation, not the first request. It needs a C++ compiler; where
it cannot compile, that first call raises and the model fails to load with the compiler's words.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch

from modelbay.errors import ModelLoadError
from modelbay.loading.runner import Runner


def compile_runner(runner: Runner, source: str) -> Runner:
    """A copy of `runner` (a torch runner: it has `.module`) whose module is `torch.compile(module)`.

    Nothing compiles until the first call. Raises ModelLoadError when `runner` holds no torch
    module (an ONNX model: torch_compile applies to PyTorch formats only).
    """
    module = getattr(runner, "module", None)
    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(
            f"{source}: torch_compile applies to PyTorch models; this one runs on {runner.platform}"
        )
    compiled: Any = copy.copy(runner)
    with warnings.catch_warnings():  # importing TorchInductor trips torch's own deprecation warnings
        warnings.simplefilter("ignore", DeprecationWarning)
        compiled.module = torch.compile(module)
    return compiled
