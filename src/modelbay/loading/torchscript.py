"""TorchScript artifacts (`torch.jit.save`).

A module made by `torch.jit.trace` keeps its example inputs in the archive (`traced_inputs.pkl`);
`torch.jit.load(..., _restore_shapes=True)` puts their dtypes and sizes back on the graph's inputs,
and those become the input specs. A scripted module has none: its inputs are named from the
schema, FP32, shape unknown (declare them with `inputs:` / `--input`).
"""

from __future__ import annotations

import logging
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from modelbay.errors import InvalidInput, ModelLoadError
from modelbay.loading.torch_runner import TorchRunner, signature_inputs
from modelbay.settings import ModelConfig
from modelbay.types import TensorSpec, datatype_of

log = logging.getLogger("modelbay.loading")


def load(path: Path, config: ModelConfig) -> TorchRunner:
    """A TorchScript module on CPU in eval mode; input names from its compiled `forward` schema,
    dtypes and shapes from its traced example where the archive keeps one (batch dim -> -1).

    Raises ModelLoadError when torch.jit cannot read the file.
    """
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated in PyTorch; say so once, in the log
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu", _restore_shapes=_traced(path))
    except (RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"{path}: not a loadable TorchScript archive: {exc}") from exc
    log.info("%s is TorchScript, which PyTorch deprecates; torch.export (.pt2) is its successor", path.name)
    module.eval()
    return TorchRunner(module, "pytorch_torchscript", traced_inputs(module))


def _traced(path: Path) -> bool:
    """True when the archive holds a trace's example inputs (asking torch to restore shapes from
    an archive without them logs a C++ warning)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/traced_inputs.pkl") for name in archive.namelist())


def traced_inputs(module: torch.jit.ScriptModule) -> list[TensorSpec]:
    """Input specs of `module.forward`: names from its schema; datatype and shape (first dim -1)
    from the graph input's tensor type where it is complete (a traced example), else FP32 and
    no shape, as `signature_inputs` gives."""
    specs = signature_inputs(module)
    graph: Any = module.forward.graph  # type: ignore[attr-defined]
    values = list(graph.inputs())[1:]  # the first is self
    if len(values) != len(specs):
        return specs
    return [_typed(spec, value.type()) for spec, value in zip(specs, values, strict=True)]


def _typed(spec: TensorSpec, kind: Any) -> TensorSpec:
    if not isinstance(kind, torch.TensorType):
        return spec
    dtype, sizes = kind.dtype(), kind.sizes()
    if dtype is None or sizes is None:
        return spec
    try:
        datatype = datatype_of(dtype)
    except InvalidInput:  # e.g. complex or bfloat16: OIP has no name for it
        return spec
    return TensorSpec(spec.name, datatype, tuple([-1, *sizes[1:]] if sizes else sizes))
