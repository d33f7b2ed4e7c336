"""Runners: a loaded model as one call, numpy arrays in, numpy arrays out.

Every loader returns a Runner; the tensor tasks (`modelbay.tasks`) batch requests in front of it.
This module imports no torch: the torch runner lives in `modelbay.loading.torch_runner`, imported
only by the loaders of PyTorch formats, so an ONNX model or a predict.py serves without torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from modelbay.types import TensorSpec


class Runner(Protocol):
    """A loaded model.

    platform: OIP platform string, e.g. "pytorch_exported", "onnxruntime_onnx".
    inputs:   the positional inputs the model takes, in order (shape None where unknown).
    outputs:  the outputs it returns, in order; empty when only a first run can tell.
    Calling it runs one forward pass: arrays [batch, ...] per input -> arrays [batch, ...] per output.
    """

    @property
    def platform(self) -> str: ...

    @property
    def inputs(self) -> Sequence[TensorSpec]: ...

    @property
    def outputs(self) -> Sequence[TensorSpec]: ...

    def __call__(self, arrays: list[np.ndarray]) -> list[np.ndarray]: ...
