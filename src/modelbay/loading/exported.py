"""`torch.export` programs (`torch.export.save`, `.pt2`), the format PyTorch recommends for deployment."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.utils._pytree as pytree

from modelbay.errors import ModelLoadError
from modelbay.loading.torch_runner import TorchRunner
from modelbay.settings import ModelConfig
from modelbay.types import TensorSpec, datatype_of


def load(path: Path, config: ModelConfig) -> TorchRunner:
    """The program's module, with input and output specs read from the exported graph (outputs
    named by the keys of a returned dict).

    Dimensions exported as dynamic (`torch.export.Dim`) show as -1; see "torch.export" in the
    PyTorch docs on dynamic shapes. Raises ModelLoadError when the archive cannot be loaded.
    """
    try:
        program = torch.export.load(path)
    except Exception as exc:  # torch raises many types for a broken archive
        raise ModelLoadError(f"{path}: not a loadable torch.export program: {exc}") from exc
    placeholders = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
    inputs = [_spec(name, placeholders[name].meta.get("val")) for name in program.graph_signature.user_inputs]
    (output_node,) = (node for node in program.graph.nodes if node.op == "output")
    values = [node.meta.get("val") for node in output_node.args[0]]
    names = output_names(program.call_spec.out_spec, len(values))
    outputs = [_spec(name, value) for name, value in zip(names, values, strict=True)]
    return TorchRunner(program.module(), "pytorch_exported", inputs, outputs)


def output_names(out_spec: object, count: int) -> list[str]:
    """Names of a program's `count` outputs: the keys when it returns a dict of tensors (its pytree
    `out_spec` says so; `module()` returns that dict), else "output" or "output0".."outputN"."""
    if (
        isinstance(out_spec, pytree.TreeSpec)
        and out_spec.type is dict
        and out_spec.num_leaves == count == len(out_spec.context)
        and all(child.is_leaf() for child in out_spec.children())
    ):
        return [str(key) for key in out_spec.context]
    return ["output"] if count == 1 else [f"output{i}" for i in range(count)]


def _spec(name: str, value: object) -> TensorSpec:
    if not isinstance(value, torch.Tensor):
        return TensorSpec(name, "FP32")
    shape = tuple(dim if isinstance(dim, int) else -1 for dim in value.shape)
    return TensorSpec(name, datatype_of(value.dtype), shape)
