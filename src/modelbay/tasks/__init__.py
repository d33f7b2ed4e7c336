"""Built-in tasks: common models served with no code of the user's.

`TASKS` maps the manifest's `task:` to a builder; adding a task is one module and one entry.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from modelbay.errors import InvalidInput, ModelLoadError
from modelbay.settings import ModelConfig, TensorConfig
from modelbay.tasks.image_classification import ImageClassifier
from modelbay.tasks.tensor import TensorPredictor
from modelbay.types import TensorSpec, numpy_dtype

if TYPE_CHECKING:  # the runner protocol only: importing modelbay.loading here would be a cycle
    from modelbay.loading.runner import Runner


def tensor_specs(configs: list[TensorConfig] | None) -> list[TensorSpec] | None:
    """Manifest tensor entries -> TensorSpecs. Raises ModelLoadError for an unknown datatype."""
    if configs is None:
        return None
    try:
        for config in configs:
            numpy_dtype(config.datatype)
    except InvalidInput as exc:
        raise ModelLoadError(exc.message) from None
    return [TensorSpec(c.name, c.datatype, tuple(c.shape) if c.shape is not None else None) for c in configs]


def read_labels(labels: list[str] | str | None, base_dir: Path) -> list[str] | None:
    """Inline labels, or a file (relative to `base_dir`) with one label per line."""
    if labels is None or isinstance(labels, list):
        return labels
    path = base_dir / labels
    try:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise ModelLoadError(f"cannot read labels file {path}: {exc}") from exc


def _tensor(config: ModelConfig, runner: Runner, base_dir: Path) -> TensorPredictor:
    return TensorPredictor(runner, tensor_specs(config.inputs), tensor_specs(config.outputs))


def _image_classification(config: ModelConfig, runner: Runner, base_dir: Path) -> TensorPredictor:
    return ImageClassifier(
        runner,
        config.image,
        labels=read_labels(config.labels, base_dir),
        top_k=config.top_k,
        softmax=config.softmax,
        inputs=tensor_specs(config.inputs),
        outputs=tensor_specs(config.outputs),
    )


TASKS: dict[str, Callable[[ModelConfig, Runner, Path], TensorPredictor]] = {
    "tensor": _tensor,
    "image-classification": _image_classification,
}


def make_predictor(config: ModelConfig, runner: Runner, base_dir: Path) -> TensorPredictor:
    """The predictor for `config.task` around `runner`. Raises ModelLoadError for an unknown task."""
    try:
        build = TASKS[config.task]
    except KeyError:
        raise ModelLoadError(f"unknown task {config.task!r}; expected one of {sorted(TASKS)}") from None
    return build(config, runner, base_dir)
