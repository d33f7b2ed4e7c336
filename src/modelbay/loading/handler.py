"""A model folder's `predict.py`: custom Python around (or instead of) a model artifact.

It either defines two functions, `load(model_dir) -> model` and `predict(model, inputs: list) -> list`
(one output per input), or one class with the Predictor hooks `setup`, `preprocess`, `predict`,
`postprocess` (missing ones default to passing the value through). Subclassing
`modelbay.Predictor` is the simplest way to write such a class.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from modelbay.errors import ModelLoadError
from modelbay.loading.imports import import_file
from modelbay.predictor import Predictor
from modelbay.types import TensorSpec


class FunctionHandler(Predictor):
    """Wraps a module's `load(model_dir)` and `predict(model, inputs)` functions."""

    def __init__(self, module: ModuleType) -> None:
        self.module = module
        self.model: Any = None

    def setup(self, model_dir: Path | None) -> None:
        """Call the module's `load(model_dir)` once and keep what it returns."""
        self.model = self.module.load(model_dir)

    def predict(self, batch: list[Any]) -> list[Any]:
        """The module's `predict(model, batch)`."""
        outputs: list[Any] = self.module.predict(self.model, batch)
        return outputs


class ClassHandler(Predictor):
    """Adapts an object with some of the Predictor hooks (duck-typed, not a Predictor subclass)."""

    def __init__(self, handler: Any) -> None:
        self.handler = handler

    def setup(self, model_dir: Path | None) -> None:
        """The handler's `setup`, given the model folder when it takes an argument."""
        setup = getattr(self.handler, "setup", None)
        if setup is not None:
            setup(model_dir) if inspect.signature(setup).parameters else setup()

    def preprocess(self, example: Any) -> Any:
        hook = getattr(self.handler, "preprocess", None)
        return hook(example) if hook is not None else example

    def predict(self, batch: list[Any]) -> list[Any]:
        outputs: list[Any] = self.handler.predict(batch)
        return outputs

    def postprocess(self, output: Any) -> Any:
        hook = getattr(self.handler, "postprocess", None)
        return hook(output) if hook is not None else output


def load_handler(
    file: Path, inputs: Sequence[TensorSpec] | None = None, outputs: Sequence[TensorSpec] | None = None
) -> Predictor:
    """The Predictor that `file` (a predict.py) defines; `inputs`/`outputs` become its metadata.

    Raises ModelLoadError when the file fails to import, or defines neither `load` and `predict`
    functions nor exactly one class with a `predict` method.
    """
    module = import_file(file)
    predictor: Predictor
    if callable(getattr(module, "load", None)) and callable(getattr(module, "predict", None)):
        predictor = FunctionHandler(module)
    else:
        classes = [
            obj
            for obj in vars(module).values()
            if isinstance(obj, type)
            and obj.__module__ == module.__name__
            and callable(getattr(obj, "predict", None))
        ]
        if len(classes) != 1:
            raise ModelLoadError(
                f"{file} must define load(model_dir) and predict(model, inputs), or exactly one class with "
                f"a predict(batch) method; found classes {[c.__name__ for c in classes]}"
            )
        try:
            instance = classes[0]()
        except Exception as exc:
            raise ModelLoadError(f"{file}: {classes[0].__name__}() failed: {exc}") from exc
        predictor = instance if isinstance(instance, Predictor) else ClassHandler(instance)
    if inputs:
        predictor.inputs = list(inputs)
    if outputs:
        predictor.outputs = list(outputs)
    return predictor
