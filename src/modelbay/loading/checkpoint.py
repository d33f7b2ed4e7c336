"""`torch.save` files: a state_dict, a training checkpoint holding one, or a whole pickled module.

Loaded with `torch.load(weights_only=True)` (PyTorch docs, "torch.load": the unpickler that only
rebuilds tensors and plain containers). A file that needs more than that holds pickled code and
is refused unless the user trusts it (`--trust-pickle`), because unpickling can run any code.
"""

from __future__ import annotations

import pickle
import re
import sys
from collections.abc import Mapping
from pathlib import Path

import torch

from modelbay.errors import ModelLoadError
from modelbay.loading.state_dict import runner_from_state_dict
from modelbay.loading.torch_runner import TorchRunner, signature_inputs
from modelbay.settings import ModelConfig

# Keys under which training loops and Lightning store the model's weights in a checkpoint dict.
_NESTED_KEYS = ("state_dict", "model_state_dict", "model")


def load(path: Path, config: ModelConfig) -> TorchRunner:
    """A runner for whatever `torch.save` wrote to `path`.

    Raises ModelLoadError when the file holds pickled code and trust_pickle is off (naming the
    class it found), when a trusted pickle is not an nn.Module, or as state_dict loading does.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f"a pickled {found.group(1)}" if found else "pickled Python objects"
        if not config.trust_pickle:
            raise ModelLoadError(
                f"{path.name} holds {what}, not plain weights: unpickling it runs code from the file. "
                "If you trust where it came from, pass --trust-pickle (trust_pickle: true in "
                "modelbay.yaml); better, save a state_dict, TorchScript or torch.export program"
            ) from exc
        obj = _load_trusted(path)
    except Exception as exc:
        raise ModelLoadError(f"{path}: not a readable torch.save file: {exc}") from exc
    if isinstance(obj, torch.nn.Module):
        obj.eval()
        return TorchRunner(obj, "pytorch_pickle", signature_inputs(obj))
    return runner_from_state_dict(_state_dict(obj, path), config, path)


def _load_trusted(path: Path) -> object:
    """Unpickle `path` with the file's folder importable, as `PYTHONPATH=<folder>` would make it.

    A pickle names its classes by module ("model.Net"); the .py that defines them usually sits
    beside the file. The folder stays on sys.path: the class's module may import more at run time.
    """
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (AttributeError, ModuleNotFoundError) as exc:
        raise ModelLoadError(
            f"{path.name} pickles a class modelbay cannot import ({exc}); put the .py that defines "
            "it beside the file or make it importable (PYTHONPATH), or save a state_dict or "
            "torch.export program"
        ) from exc


def _state_dict(obj: object, path: Path) -> Mapping[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in _NESTED_KEYS:
            nested = obj.get(key)
            if isinstance(nested, Mapping):
                obj = nested
                break
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) == len(obj):
            return tensors
    raise ModelLoadError(
        f"{path.name} holds a {type(obj).__name__} that is neither a module nor a state_dict "
        f"(nor a checkpoint with one of the keys {list(_NESTED_KEYS)})"
    )
