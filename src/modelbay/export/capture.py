"""Capture a torch module as a `torch.export` program with a dynamic batch dimension.

The program is what both targets are written from: ONNX by the dynamo exporter
(`torch.onnx.export(program, dynamo=True)`), `.pt2` by `torch.export.save`. A TorchScript module
is converted first (torch.export refuses a ScriptModule and names `TS2EPConverter`, its converter).
The example batch has 2 rows: torch.export specialises a dimension of size 0 or 1 ("The 0/1
specialization problem", PyTorch docs on torch.export's dynamic shapes).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from modelbay.errors import ExportFailed
from modelbay.export.check import summary

# Loggers of torch's exporters, quietened while they run (they warn about torchvision's missing
# operators, specialised dimensions and their own deprecations).
_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch._dynamo", "torch._inductor", "onnxscript")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence torch's exporters for the block: their warnings, their progress lines on stdout and
    their loggers below ERROR. Exceptions pass through."""
    levels = {name: logging.getLogger(name).level for name in _LOGGERS}
    try:
        for name in _LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def capture(module: torch.nn.Module, example: Sequence[np.ndarray]) -> torch.export.ExportedProgram:
    """`module` as a torch.export program taking `example`'s inputs, dimension 0 of each dynamic
    (one shared "batch" size), every other dimension fixed at the example's.

    example: one array per input, each [2, ...].
    Raises ExportFailed with torch's first lines when the module cannot be captured (data-dependent
    control flow, an unsupported operator, a batch size it fixes).
    """
    args = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in example)
    batch = torch.export.Dim("batch")
    try:
        with quiet():
            if isinstance(module, torch.jit.ScriptModule):
                from torch._export.converter import TS2EPConverter

                module = TS2EPConverter(module, args).convert().module()
            return torch.export.export(module, args, dynamic_shapes=tuple({0: batch} for _ in args))
    except Exception as exc:  # torch raises many types (UserError, GuardOnDataDependentSymNode, ...)
        raise ExportFailed(f"torch.export cannot capture the model: {summary(exc)}") from exc
