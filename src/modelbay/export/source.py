"""What `modelbay export` exports: a torch module loaded the way `modelbay serve` loads it.

The artifact goes through `modelbay.loading.load_model` (format detection, a folder's modelbay.yaml,
--arch for a state_dict or safetensors, --trust-pickle), in this process, so an export starts from
exactly the model the server would run. What the loaders do not say (a scripted TorchScript
module's shapes, a state_dict's) comes from `--input` / `--example-shape`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modelbay.errors import ModelLoadError
from modelbay.export.check import random_inputs
from modelbay.loading import load_model
from modelbay.loading.detect import Format, detect
from modelbay.loading.runner import Runner
from modelbay.settings import ModelConfig
from modelbay.types import TensorSpec, numpy_dtype

Arrays = list[np.ndarray]


@dataclass
class ExportSource:
    """A loaded PyTorch model ready to export.

    config:   its complete ModelConfig (a folder's modelbay.yaml merged in).
    runner:   the original as the server runs it: numpy arrays [batch, ...] in and out.
    module:   the runner's torch module (eager, TorchScript or an unlifted torch.export program).
    inputs:   one spec per input, every shape complete, the batch dimension (first) -1.
    weights:  the artifact file (in a model folder, the one its modelbay.yaml names).
    folder:   the model folder, when the artifact given was one; else None.
    examples: the model's own example inputs, one array per input (the example a `.pt2` was
              exported with, or the --examples file), or None.
    output_names: the names of its outputs, in order (declared, a returned dict's keys, or
              "output" / "output0".."outputN", as the server names them).
    """

    config: ModelConfig
    runner: Runner
    module: torch.nn.Module
    inputs: list[TensorSpec]
    weights: Path
    folder: Path | None
    examples: Arrays | None = None
    output_names: list[str] = field(default_factory=list)


def load_source(
    entry: Mapping[str, Any],
    example_shapes: Sequence[Sequence[int]] | None = None,
    examples_file: Path | None = None,
) -> ExportSource:
    """Load the model of `entry` (ModelConfig fields: path, arch, arch_kwargs, inputs, ...).

    example_shapes: one shape per input, in order, its first dim the batch (any value): they
                    complete or replace the specs' shapes, e.g. [[1, 3, 224, 224]].
    examples_file:  an .npz of example inputs, one array per input (named after them, or
                    arr_0, arr_1, ... in order), each [n, ...].
    Raises ModelLoadError when the model cannot be loaded, holds no torch module (an ONNX file,
    a predict.py handler), or an input's shape is not known and not given.
    """
    loaded = load_model({**entry, "worker_process": False}, in_worker=True)  # loaded here, not in a worker
    path = Path(str(entry["path"])).expanduser()
    runner = getattr(loaded.predictor, "runner", None)
    module = getattr(runner, "module", None)
    if runner is None or not isinstance(module, torch.nn.Module):
        what = f"runs on {runner.platform}" if runner is not None else "is a predict.py handler"
        raise ModelLoadError(
            f"{path}: the model {what}, not a PyTorch module: nothing to export. modelbay export takes "
            "TorchScript, a torch.export .pt2, a torch.save checkpoint or state_dict (with --arch), or "
            "safetensors (with --arch)"
        )
    folder = path if path.is_dir() else None
    weights = loaded.artifact or path  # a runner is always loaded from a file
    inputs = _complete(list(getattr(loaded.predictor, "inputs", runner.inputs)), example_shapes, path)
    source = ExportSource(loaded.config, runner, module, inputs, weights, folder)
    source.examples = _read_examples(examples_file, inputs) if examples_file else _own_examples(source)
    try:
        count = len(runner(random_inputs(inputs, 2, np.random.default_rng(0))))
    except Exception as exc:
        raise ModelLoadError(
            f"{path}: the model fails on random inputs of its specs {inputs}: {exc}"
        ) from exc
    source.output_names = loaded.predictor.output_names(count)  # type: ignore[attr-defined]
    return source


def _complete(
    specs: list[TensorSpec], shapes: Sequence[Sequence[int]] | None, path: Path
) -> list[TensorSpec]:
    """`specs` with `shapes` applied and the batch dim made -1. Raises ModelLoadError (see load_source)."""
    if shapes is not None and len(shapes) != len(specs):
        names = [spec.name for spec in specs]
        raise ModelLoadError(
            f"{path}: the model takes {len(specs)} inputs {names}; --example-shape was given "
            f"{len(shapes)} times (once per input, in order)"
        )
    out = []
    for i, spec in enumerate(specs):
        shape = tuple(shapes[i]) if shapes is not None else spec.shape
        if shape is None or not shape or -1 in shape[1:] or spec.datatype == "BYTES":
            raise ModelLoadError(
                f"{path}: input {spec.name!r} has no complete shape ({list(shape) if shape else 'unknown'}"
                f", {spec.datatype}): pass --example-shape, e.g. 1,3,224,224 (once per input, in order), "
                "or --input NAME:DATATYPE:SHAPE"
            )
        out.append(TensorSpec(spec.name, spec.datatype, (-1, *shape[1:])))
    return out


def _own_examples(source: ExportSource) -> Arrays | None:
    """The example inputs a `.pt2` was exported with (`ExportedProgram.example_inputs`), when they
    fit the input specs; else None."""
    if detect(source.weights) is not Format.EXPORTED:
        return None
    saved = torch.export.load(source.weights).example_inputs
    args = list(saved[0]) if saved else []
    if len(args) != len(source.inputs) or not all(isinstance(a, torch.Tensor) for a in args):
        return None
    arrays = [a.detach().numpy() for a in args]
    return arrays if _fit(arrays, source.inputs) else None


def _read_examples(path: Path, specs: list[TensorSpec]) -> Arrays:
    """The arrays of the .npz at `path` in input order. Raises ModelLoadError when they do not fit."""
    try:
        with np.load(path, allow_pickle=False) as data:
            stored = {name: data[name] for name in data.files}
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"--examples {path}: not a readable .npz file: {exc}") from exc
    names = [spec.name for spec in specs]
    if set(names) <= stored.keys():
        arrays = [stored[name] for name in names]
    elif len(stored) == len(specs):
        arrays = (
            [stored[f"arr_{i}"] for i in range(len(specs))] if "arr_0" in stored else list(stored.values())
        )
    else:
        raise ModelLoadError(f"--examples {path} holds {sorted(stored)}; the model takes inputs {names}")
    try:
        arrays = [a.astype(numpy_dtype(s.datatype), copy=False) for a, s in zip(arrays, specs, strict=True)]
    except (TypeError, ValueError) as exc:  # strings or objects where the model takes numbers
        raise ModelLoadError(
            f"--examples {path}: arrays of {[str(a.dtype) for a in arrays]} cannot be the inputs "
            f"{[s.datatype for s in specs]}: {exc}"
        ) from exc
    if not _fit(arrays, specs):
        shapes = [list(a.shape) for a in arrays]
        raise ModelLoadError(
            f"--examples {path}: arrays of shapes {shapes} do not fit the inputs "
            f"{[list(spec.shape or ()) for spec in specs]} (-1: any size)"
        )
    return arrays


def _fit(arrays: Arrays, specs: Sequence[TensorSpec]) -> bool:
    """True when each array has its spec's rank and sizes (batch any) and all share one batch size."""
    for array, spec in zip(arrays, specs, strict=True):
        shape = spec.shape or ()
        if array.ndim != len(shape) or any(w not in (-1, h) for w, h in zip(shape, array.shape, strict=True)):
            return False
    return len({a.shape[0] for a in arrays}) == 1
