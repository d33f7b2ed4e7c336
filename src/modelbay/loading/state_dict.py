"""Weights without code: build the architecture (`--arch module:Class`) and load a state_dict into it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from modelbay.errors import ModelLoadError
from modelbay.loading.imports import import_object
from modelbay.loading.torch_runner import TorchRunner, signature_inputs
from modelbay.settings import ModelConfig


def runner_from_state_dict(
    state: Mapping[str, torch.Tensor], config: ModelConfig, source: Path
) -> TorchRunner:
    """Instantiate `config.arch(**config.arch_kwargs)`, load `state` into it strictly, eval mode.

    Raises ModelLoadError when no architecture was given (saying what the file holds), when the
    architecture cannot be imported or built, or when keys or shapes do not match.
    """
    if not config.arch:
        keys = list(state)
        shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
        raise ModelLoadError(
            f"{source.name} holds a state_dict of {len(keys)} tensors ({shown}), not a model: "
            "pass --arch module:Class (and --arch-kwargs JSON) or set arch: in modelbay.yaml"
        )
    cls = import_object(config.arch, source.parent)
    try:
        module = cls(**config.arch_kwargs)
    except Exception as exc:
        raise ModelLoadError(f"cannot build {config.arch}(**{config.arch_kwargs}): {exc}") from exc
    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(f"{config.arch} built a {type(module).__name__}, not a torch.nn.Module")
    state = _without_wrapper_prefix(state, set(module.state_dict()))
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ModelLoadError(f"{source.name} does not fit {config.arch}: {exc}") from exc
    if result.missing_keys or result.unexpected_keys:
        raise ModelLoadError(
            f"{source.name} does not fit {config.arch}: missing keys {result.missing_keys[:5]}, "
            f"unexpected keys {result.unexpected_keys[:5]}"
        )
    module.eval()
    return TorchRunner(module, "pytorch_state_dict", signature_inputs(module))


def _without_wrapper_prefix(
    state: Mapping[str, torch.Tensor], expected: set[str]
) -> Mapping[str, torch.Tensor]:
    """`state` with a common key prefix removed when that makes its keys exactly `expected`.

    Training wrappers save the network under an attribute: Lightning modules as "model.conv1.weight",
    DataParallel / DistributedDataParallel as "module.conv1.weight". Keys that already fit, or that
    no single prefix makes fit, are returned as they are (and reported by the caller).
    """
    if set(state) == expected or not state:
        return state
    first = next(iter(state))
    for end in (i for i, char in enumerate(first) if char == "."):
        prefix = first[: end + 1]
        if all(key.startswith(prefix) for key in state) and {key[len(prefix) :] for key in state} == expected:
            return {key[len(prefix) :]: value for key, value in state.items()}
    return state
