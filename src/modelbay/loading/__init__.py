"""Loading: a model file or folder -> a Predictor, whatever the artifact's format.

`LOADERS` (loading/loaders.py) maps the detected `Format` to the loader module that reads it,
imported on first use, so no format's packages (torch, onnxruntime) are needed until a model of
that format is loaded; adding a format is one module and one entry. A model folder's
`modelbay.yaml` is merged under the caller's settings before they are converted
(`modelbay.settings.model_entry`); if the folder has a `predict.py`, that handler is the predictor.

With `worker_process`, the model is loaded in a model worker process of its own
(`modelbay.runtime.model_process`): an artifact's task predictor stays here around a ProcessRunner,
a predict.py folder becomes a ProcessPredictor (its handler is imported only in the worker).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec

from modelbay.errors import ModelLoadError
from modelbay.loading.detect import HANDLER_NAME, Format, detect
from modelbay.loading.handler import load_handler
from modelbay.loading.loaders import LOADERS, load_runner
from modelbay.predictor import Predictor
from modelbay.runtime.environments import ensure_environment
from modelbay.runtime.model_process import ModelProcess
from modelbay.runtime.process_predictors import ProcessPredictor, ProcessRunner
from modelbay.settings import MANIFEST_NAME, ModelConfig, model_config, model_entry
from modelbay.tasks import make_predictor, tensor_specs

REQUIREMENTS_NAME = "requirements.txt"  # a model folder's own Python packages (runtime/environments.py)
WEIGHT_SUFFIXES = (".pt2", ".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".onnx", ".ts")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_P = TypeVar("_P", bound=Predictor)


@dataclass
class LoadedModel:
    """A built (not yet set up) predictor with the config it was built from.

    model_dir: the model folder, when it came from one.
    artifact:  the model file it was loaded from (a model folder's weights); None for a
               predict.py handler or a module handed over in memory.
    """

    config: ModelConfig
    predictor: Predictor
    model_dir: Path | None = None
    artifact: Path | None = None

    @property
    def name(self) -> str:
        return self.config.name or "model"


def load_model(entry: ModelConfig | Mapping[str, Any], *, in_worker: bool = False) -> LoadedModel:
    """Build the predictor for one model (`path` is required).

    entry: a ModelConfig, complete as `Settings.load` makes it (a model folder's modelbay.yaml is
           not read again), or a raw `models:` entry dict, merged over the folder's modelbay.yaml
           here as `Settings.load` would (`model_entry`).
    With `worker_process`, or a requirements.txt in the model folder (its own environment, built
    or reused here), the model's worker process is started here and has loaded and set up the
    model when this returns (ModelProcess.start); the predictor's `close()` ends it.
    in_worker: True in that worker process: the model is built here (its environment is this one).
    Raises ModelLoadError saying what was found and what to do when anything cannot be loaded.
    """
    if isinstance(entry, Mapping):
        if not entry.get("path"):
            raise ModelLoadError("a model needs a path (a model file or a model folder)")
        entry = model_config(model_entry(entry))
    if not entry.path:
        raise ModelLoadError("a model needs a path (a model file or a model folder)")
    path = Path(entry.path).expanduser()
    if path.is_dir() and detect(path) is Format.FOLDER:
        config = _named(entry, path.resolve().name, str(path / MANIFEST_NAME))
        python = None if in_worker else _environment(path)
        if python is not None:
            config = msgspec.structs.replace(config, worker_process=True)
        if (path / HANDLER_NAME).is_file():
            if config.worker_process:
                return LoadedModel(config, _in_worker(config, "handler", ProcessPredictor, python), path)
            handler = load_handler(
                path / HANDLER_NAME, tensor_specs(config.inputs), tensor_specs(config.outputs)
            )
            return LoadedModel(config, handler, path)
        weights = path / config.weights if config.weights else _find_weights(path)
        return LoadedModel(config, _build(weights, config, python), path, weights)
    config = _named(entry, path.name.split(".")[0], str(path))
    return LoadedModel(config, _build(path, config), None, path)


def _named(config: ModelConfig, default: str, source: str) -> ModelConfig:
    """`config` with its name defaulted to `default`. Raises ModelLoadError for a name unfit for URLs."""
    if config.name is None:
        config = msgspec.structs.replace(config, name=default)
    if not config.name or not _NAME.match(config.name):
        raise ModelLoadError(
            f"{source}: model name {config.name!r} must start with a letter or digit and hold only "
            "letters, digits, '_', '.' and '-' (it appears in URLs)"
        )
    return config


def _environment(folder: Path) -> str | None:
    """The python of the model's own environment when its folder has a requirements.txt (built or
    reused: runtime/environments.py), else None. Raises ModelLoadError."""
    requirements = folder / REQUIREMENTS_NAME
    if not requirements.is_file():
        return None
    return str(ensure_environment(requirements))


def _build(path: Path, config: ModelConfig, python: str | None = None) -> Predictor:
    if config.format is not None:
        try:
            fmt = Format(config.format)
        except ValueError:
            raise ModelLoadError(
                f"unknown format {config.format!r}; expected one of {[f.value for f in Format]}"
            ) from None
    else:
        fmt = detect(path)
    if fmt not in LOADERS:
        raise ModelLoadError(f"{path}: format {fmt.value} is not a model file")
    if config.worker_process:
        return _in_worker(
            config,
            "runner",
            lambda process: make_predictor(config, ProcessRunner(process), path.parent),
            python,
        )
    runner = load_runner(fmt, path, config)
    if config.torch_compile:
        from modelbay.loading.compile import compile_runner  # imports torch: only when asked for

        runner = compile_runner(runner, str(path))
    return make_predictor(config, runner, path.parent)


def _in_worker(
    config: ModelConfig,
    role: Literal["runner", "handler"],
    build: Callable[[ModelProcess], _P],
    python: str | None = None,
) -> _P:
    """Start the model's worker process (it loads the model; with `python`, the interpreter of the
    model's own environment), then `build` the predictor over it; the worker is ended if that
    fails. Raises ModelLoadError."""
    process = ModelProcess(config, role, python=python) if python else ModelProcess(config, role)
    process.start()
    try:
        return build(process)
    except BaseException:
        process.close()
        raise


def _find_weights(folder: Path) -> Path:
    candidates = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if len(candidates) != 1:
        found = [p.name for p in candidates] or "none"
        raise ModelLoadError(
            f"{folder}: set weights: in {MANIFEST_NAME} to the model file; found {found} "
            f"among files ending in {', '.join(WEIGHT_SUFFIXES)}"
        )
    return candidates[0]
