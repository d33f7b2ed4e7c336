"""A torch module as a Runner: numpy arrays in, numpy arrays out, under inference_mode.

Imported only by the loaders of PyTorch formats and by `Server.add_model` for an nn.Module, so
that modelbay serves ONNX models and predict.py folders without torch installed.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from modelbay.errors import InferenceFailed
from modelbay.types import TensorSpec, datatype_of


class TorchRunner:
    """Runs a torch module (eager, TorchScript or an unlifted torch.export program) under inference_mode.

    Outputs may be a tensor, a tuple/list of tensors, or a dict of tensors (its keys become the
    output names). Numpy inputs are shared with torch without copying where numpy allows it.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        platform: str,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec] = (),
    ) -> None:
        self.module = module
        self.platform = platform
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.output_keys: list[str] | None = None  # set by the first call if the module returns a dict

    def __call__(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        tensors = [torch.from_numpy(a if a.flags.writeable else a.copy()) for a in arrays]
        with torch.inference_mode():
            result = self.module(*tensors)
        if isinstance(result, dict) and self.output_keys is None:
            self.output_keys = [str(key) for key in result]
        return [tensor.numpy(force=True) for tensor in flatten_outputs(result)]


def flatten_outputs(result: object) -> list[torch.Tensor]:
    """A module's return value as a flat list of tensors, in order.

    Raises InferenceFailed for anything that is not a tensor, a sequence of tensors or a dict of them.
    """
    if isinstance(result, torch.Tensor):
        return [result]
    values = list(result.values()) if isinstance(result, dict) else result
    if isinstance(values, list | tuple) and all(isinstance(v, torch.Tensor) for v in values):
        return list(values)
    raise InferenceFailed(
        f"model returned {type(result).__name__}; expected a tensor, a tuple of tensors or a dict of tensors"
    )


def signature_inputs(module: torch.nn.Module) -> list[TensorSpec]:
    """Input specs from the names of `module.forward`'s parameters (FP32, shape unknown).

    TorchScript modules give their names through the compiled schema, eager modules through
    `inspect.signature`. *args and **kwargs contribute nothing.
    """
    if isinstance(module, torch.jit.ScriptModule):
        schema: Any = module.forward.schema  # type: ignore[attr-defined]
        names = [arg.name for arg in schema.arguments[1:]]
    else:
        kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        params = inspect.signature(module.forward).parameters.values()
        names = [p.name for p in params if p.kind in kinds]
    return [TensorSpec(name, "FP32") for name in names or ["input"]]


def example_inputs(example: torch.Tensor | Sequence[torch.Tensor], names: Sequence[str]) -> list[TensorSpec]:
    """Input specs from an example batch: its dtypes, and shapes with the batch dim made dynamic."""
    tensors = [example] if isinstance(example, torch.Tensor) else list(example)
    padded = list(names) + [f"input{i}" for i in range(len(names), len(tensors))]
    return [
        TensorSpec(name, datatype_of(t.dtype), (-1, *t.shape[1:]))
        for name, t in zip(padded, tensors, strict=False)
    ]
