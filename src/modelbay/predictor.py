"""The predictor: the user-facing hooks a served model is made of.

A request travels `preprocess(example)` -> the batcher -> `predict(batch)` -> `postprocess(output)`.
`preprocess` and `postprocess` run once per example; `predict` runs once per batch, with the
preprocessed items of several requests, and must return exactly one output per item, in order
(the contract of LitServe's `predict` and Ray Serve's `@serve.batch`).

Subclass `Predictor` in a model folder's `predict.py` for custom code, or let modelbay build one
from an artifact (`modelbay.tasks`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modelbay.types import TensorSpec


class Predictor:
    """Base class of everything modelbay serves.

    Class attributes a subclass may set:
      inputs, outputs:      TensorSpec metadata shown by `GET /v2/models/{name}` (OIP model metadata).
      platform:             OIP `platform` string, e.g. "pytorch_torchscript".
      preprocess_in_thread: run pre/postprocess off the event loop (True for anything that may be
                            slow, like image decoding); False only for cheap pure-numpy work.
    """

    inputs: Sequence[TensorSpec] = ()
    outputs: Sequence[TensorSpec] = ()
    platform: str = "python"
    preprocess_in_thread: bool = True

    def setup(self, model_dir: Path | None) -> None:
        """Load weights and warm up; called once per worker before the first request, never at import.

        model_dir: the model folder when served from one, else None.
        Raise ModelLoadError (or any exception) to refuse to start.
        """

    def preprocess(self, example: Any) -> Any:
        """One example of the simple door (`POST /predict/{model}`) -> one item for `predict`.

        example: `bytes` for a raw or multipart body, else the JSON value sent as "input" (or one
        element of "inputs"). Raise InvalidInput, with what was expected and what came, for bad input.
        """
        return example

    def predict(self, batch: list[Any]) -> list[Any]:
        """A batch of preprocessed items -> one output per item, in the same order.

        Runs on the model's worker thread; may raise anything, even SystemExit (a failed batch
        is split in halves and run again, down to single items, so only a bad item fails: a 500
        for its request, with an error id; the exception's text goes to the log only).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement predict(batch)")

    def postprocess(self, output: Any) -> Any:
        """One output of `predict` -> the JSON-serializable prediction sent to the client."""
        return output

    def default_output(self, value: Any, rows: int) -> Any:
        """The output `predict` stands in with for an item of `rows` rows that would miss its SLO.

        value: the model's `batching.default_output`, as loaded from YAML/JSON. The default returns
        it unchanged (postprocess then turns it into the answer). Called once at load with rows=1
        to check the value: raise ModelLoadError there, saying what was expected.
        """
        return value

    def healthy(self) -> bool:
        """False while the model cannot answer for now (its worker process is being restarted):
        OIP model ready then says false. True by default."""
        return True

    def close(self) -> None:
        """Release what the model holds beyond memory (its worker process); called once when it
        stops serving, after its last batch. The default holds nothing."""

    def rows(self, item: Any) -> int:
        """How many rows `item` adds to a batch (counted against `max_batch_size`); 1 by default."""
        return 1

    def decode_tensors(self, tensors: dict[str, np.ndarray]) -> Any:
        """Open Inference Protocol door: named input tensors of one request -> one item for `predict`.

        The default hands the one array (or the dict, for several inputs) to `preprocess`.
        """
        return self.preprocess(next(iter(tensors.values())) if len(tensors) == 1 else tensors)

    def encode_tensors(self, output: Any) -> dict[str, np.ndarray]:
        """Open Inference Protocol door: one output of `predict` -> named output tensors.

        The default postprocesses, then names a single output after `outputs[0]` (or "output").
        A value numpy cannot hold is the predictor's fault: the caller reports it as InferenceFailed.
        """
        result = self.postprocess(output)
        if isinstance(result, dict):
            return {str(name): np.asarray(value) for name, value in result.items()}
        name = self.outputs[0].name if self.outputs else "output"
        return {name: np.asarray(result)}
