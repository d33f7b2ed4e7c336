"""The loader of each artifact format, imported on first use.

`LOADERS` maps the detected `Format` to the module whose `load(path, config) -> Runner` reads it.
Nothing here imports a loader: the PyTorch formats need torch, ONNX needs onnxruntime, and the base
`modelbay` package has neither (`pip install "modelbay[onnx]"` serves ONNX models and predict.py
folders with no torch in the environment). A loader whose packages are missing fails with a
ModelLoadError naming the extra that brings them, never an ImportError.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from modelbay.errors import ModelLoadError
from modelbay.loading.detect import Format
from modelbay.loading.runner import Runner
from modelbay.settings import ModelConfig

# The packages each extra of pyproject.toml brings: a loader missing one of them says to install it.
EXTRAS = {"torch": ("torch", "safetensors"), "onnx": ("onnxruntime",)}


@dataclass(frozen=True)
class Loader:
    """Where a format's loader lives.

    module: the module defining `load(path: Path, config: ModelConfig) -> Runner`.
    what:   the artifact in words, for messages ("a TorchScript file").
    extra:  the extra of the modelbay package that installs what the module imports (EXTRAS).
    """

    module: str
    what: str
    extra: str


LOADERS: dict[Format, Loader] = {
    Format.TORCHSCRIPT: Loader("modelbay.loading.torchscript", "a TorchScript file", "torch"),
    Format.EXPORTED: Loader("modelbay.loading.exported", "a torch.export program", "torch"),
    Format.CHECKPOINT: Loader("modelbay.loading.checkpoint", "a torch.save file", "torch"),
    Format.SAFETENSORS: Loader("modelbay.loading.safetensors", "a safetensors file", "torch"),
    Format.ONNX: Loader("modelbay.loading.onnx", "an ONNX model", "onnx"),
}


def load_runner(fmt: Format, path: Path, config: ModelConfig) -> Runner:
    """Import the loader of `fmt` (once; later calls find it in sys.modules) and load `path` with it.

    Raises ModelLoadError when `fmt` has no loader (a folder), when a package of the loader's extra
    is not installed ("m.pt2: this model is a torch.export program: install modelbay[torch] ..."),
    and as the loader itself does. Any other ImportError is a bug in modelbay and propagates.
    """
    loader = LOADERS.get(fmt)
    if loader is None:
        raise ModelLoadError(f"{path}: format {fmt.value} is not a model file")
    try:
        module = importlib.import_module(loader.module)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing not in EXTRAS[loader.extra]:
            raise
        raise ModelLoadError(
            f"{path}: this model is {loader.what}: install modelbay[{loader.extra}] "
            f"(pip install 'modelbay[{loader.extra}]'; {missing} is not installed here)"
        ) from None
    runner: Runner = module.load(path, config)
    return runner
