"""The predictors of a model served from its worker process (`modelbay.runtime.model_process`).

`modelbay.loading.load_model` picks one when `worker_process` is set:

- an artifact model keeps its task predictor (decoding, checks, postprocessing) here, and only its
  Runner is a `ProcessRunner`: one forward pass is one round trip of raw arrays;
- a predict.py folder is a `ProcessPredictor`: the server never imports the handler (its
  dependencies may exist only in the worker's environment); its hooks only tag each request's raw
  item with its door, and a batch travels whole to the worker, which runs the real hooks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from modelbay.errors import ModelLoadError
from modelbay.predictor import Predictor
from modelbay.runtime.context import BATCH_TRACEPARENT
from modelbay.runtime.model_messages import Failure, Handle, Handled, Item, Ran, Run
from modelbay.runtime.model_process import ModelProcess


class ProcessRunner:
    """A Runner (modelbay.loading.runner) whose forward pass runs in the model's worker process:
    input arrays [batch, ...] travel there and the output arrays back, one round trip per call.

    platform, inputs, outputs, output_keys: as the worker's model reports them once set up.
    Calling it raises what ModelProcess.call raises.
    """

    def __init__(self, process: ModelProcess) -> None:
        if process.ready is None:
            raise ValueError("start the ModelProcess before building its runner")
        self.process = process
        self.platform = process.ready.platform
        self.inputs = list(process.ready.inputs)
        self.outputs = list(process.ready.outputs)
        self.output_keys = process.ready.output_keys

    def __call__(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        ran = self.process.call(Run(arrays, BATCH_TRACEPARENT.get()), Ran)
        if ran.output_keys is not None:
            self.output_keys = ran.output_keys
        return ran.arrays

    def healthy(self) -> bool:
        """True while the worker process serves (False while it is being restarted)."""
        return self.process.serving

    def close(self) -> None:
        """End the worker process."""
        self.process.close()


class _DefaultAnswer:
    """What `ProcessPredictor.default_output` gives: a stand-in for the finished default answer."""


_DEFAULT = _DefaultAnswer()


class ProcessPredictor(Predictor):
    """A predict.py folder served from its worker process; this side never imports the handler.

    `preprocess` and `decode_tensors` only tag the request's raw item with its door; `predict`
    sends the whole batch in one round trip, and the worker preprocesses (or decodes), predicts
    and postprocesses (or encodes) each item; `postprocess` and `encode_tensors` hand the
    finished output on, or raise the item's own failure from the worker (InvalidInput stays 400).
    platform, inputs, outputs come from the worker at start. The hooks here are cheap, so they run
    on the event loop (preprocess_in_thread False): the real ones run in the worker, inside the batch.
    Refused at load (ModelLoadError): a handler that overrides `rows` (rows are counted before
    the batch forms, the worker preprocesses only inside it), and a `batching.default_output`
    that the handler's default_output / postprocess / encode_tensors do not take (the worker
    finishes the default answer once, at start; it stands for an item of one row).
    """

    preprocess_in_thread = False

    def __init__(self, process: ModelProcess) -> None:
        ready = process.ready
        if ready is None:
            raise ValueError("start the ModelProcess before building its predictor")
        if ready.custom_rows:
            raise ModelLoadError(
                f"model {process.name!r}: predict.py defines rows(), which a worker process cannot "
                "count before the batch forms; serve it without worker_process"
            )
        self.process = process
        self.platform = ready.platform
        self.inputs = list(ready.inputs)
        self.outputs = list(ready.outputs)
        self._default = ready.default

    def setup(self, model_dir: Path | None) -> None:
        """Nothing to do: the worker set the model up when it started."""

    def preprocess(self, example: Any) -> Item:
        """The simple door's example, tagged. Raises ModelNotReady (503) while the worker is down."""
        self.process.check_serving()
        return Item("simple", example)

    def decode_tensors(self, tensors: dict[str, np.ndarray]) -> Item:
        """The OIP door's named input tensors, tagged. Raises ModelNotReady while the worker is down."""
        self.process.check_serving()
        return Item("oip", tensors)

    def predict(self, batch: list[Any]) -> list[Any]:
        """The batch's finished outputs from the worker, one per item, in order (one round trip)."""
        return self.process.call(Handle(batch, BATCH_TRACEPARENT.get()), Handled).outputs

    def postprocess(self, output: Any) -> Any:
        """The simple door's finished prediction; raises the item's failure from the worker."""
        if output is _DEFAULT:
            assert self._default is not None
            return self._default[0]
        if isinstance(output, Failure):
            raise output.exception()
        return output

    def encode_tensors(self, output: Any) -> dict[str, np.ndarray]:
        """The OIP door's finished output tensors; raises the item's failure from the worker."""
        if output is _DEFAULT:
            assert self._default is not None
            return self._default[1]
        if isinstance(output, Failure):
            raise output.exception()
        encoded: dict[str, np.ndarray] = output
        return encoded

    def default_output(self, value: Any, rows: int) -> Any:
        """Stands in for the default answer the worker finished at start (one row: rows is always 1
        here). Raises ModelLoadError when the worker has none (no default_output when it started)."""
        if self._default is None:
            raise ModelLoadError(f"model {self.process.name!r}: its worker process has no default output")
        return _DEFAULT

    def healthy(self) -> bool:
        """True while the worker process serves (False while it is being restarted)."""
        return self.process.serving

    def close(self) -> None:
        """End the worker process."""
        self.process.close()
