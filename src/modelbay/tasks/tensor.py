"""`task: tensor`: tensors in, tensors out, requests merged along the batch dimension."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelbay.codecs.oip_json import array_from_json
from modelbay.errors import InvalidInput, ModelLoadError
from modelbay.predictor import Predictor
from modelbay.runtime.collate import run_batched
from modelbay.types import TensorSpec, datatype_of, numpy_dtype

if TYPE_CHECKING:  # the runner protocol only: importing modelbay.loading here would be a cycle
    from modelbay.loading.runner import Runner

Arrays = list[np.ndarray]


class TensorPredictor(Predictor):
    """Serves a Runner: an item is the request's input arrays in input order, each [rows, ...].

    inputs/outputs: specs declared in the manifest; where None, the runner's own are used, and
    outputs are completed by one probe run at setup when every input shape is known.
    """

    preprocess_in_thread = False

    def __init__(
        self,
        runner: Runner,
        inputs: Sequence[TensorSpec] | None = None,
        outputs: Sequence[TensorSpec] | None = None,
    ) -> None:
        self.runner = runner
        self.platform = runner.platform
        self.inputs = list(inputs or runner.inputs)
        self.outputs = list(outputs or runner.outputs)
        self._specs = {spec.name: spec for spec in self.inputs}
        self._names = set(self._specs)
        self._default: tuple[Any, Arrays] | None = None  # (default_output value, its rows)

    def setup(self, model_dir: Path | None) -> None:
        """Run one zero-filled example through the model (batch 1), when every input shape is known.

        This fails a broken model at start, not at the first request, and fills in output
        datatypes and shapes. Raises ModelLoadError if the model fails or its outputs disagree
        with the declared ones.
        """
        example = self.example()
        if example is None:
            return
        try:
            arrays = self.runner(example)
        except Exception as exc:
            shapes = [list(a.shape) for a in example]
            raise ModelLoadError(f"the model failed on a zero example of shapes {shapes}: {exc}") from exc
        names = self.output_names(len(arrays))
        batched = all(spec.batched for spec in self.inputs)
        found = [
            TensorSpec(name, datatype_of(a.dtype), (-1, *a.shape[1:]) if batched else a.shape)
            for name, a in zip(names, arrays, strict=True)
        ]
        for declared, actual in zip(self.outputs, found, strict=False):
            if declared.datatype != actual.datatype:
                raise ModelLoadError(
                    f"output {declared.name!r} is declared {declared.datatype} but the model returns "
                    f"{actual.datatype}"
                )
        self.outputs = found

    def example(self) -> Arrays | None:
        """Zero arrays of batch 1 for the declared inputs, or None when a shape is not fully known."""
        arrays = []
        for spec in self.inputs:
            if spec.shape is None or spec.datatype == "BYTES" or -1 in spec.shape[1:]:
                return None
            shape = tuple(1 if dim == -1 else dim for dim in spec.shape)
            arrays.append(np.zeros(shape, dtype=numpy_dtype(spec.datatype)))
        return arrays

    def output_names(self, count: int) -> list[str]:
        """Declared output names, else the module's dict keys, else "output" / "output0".."outputN"."""
        if len(self.outputs) == count:
            return [spec.name for spec in self.outputs]
        if self.outputs:
            raise ModelLoadError(f"model returns {count} outputs but {len(self.outputs)} are declared")
        keys = getattr(self.runner, "output_keys", None)
        if keys is not None and len(keys) == count:
            return list(keys)
        return ["output"] if count == 1 else [f"output{i}" for i in range(count)]

    def preprocess(self, example: Any) -> Arrays:
        """One JSON example -> input arrays with a batch dimension of 1.

        example: the input's nested list for a one-input model, or {input name: nested list}.
        Raises InvalidInput for raw bytes, unknown or missing input names, or data that does not
        fit the input's datatype and shape.
        """
        if isinstance(example, bytes | bytearray):
            raise InvalidInput(
                'this model takes tensors as JSON ({"input": [...]}), '
                f"not a raw body of {len(example)} bytes"
            )
        values = example if isinstance(example, dict) and len(self.inputs) != 1 else None
        if values is None and len(self.inputs) != 1:
            names = [spec.name for spec in self.inputs]
            raise InvalidInput(
                f'this model takes inputs {names}: send {{"input": {{name: tensor, ...}}}} with all of them'
            )
        if values is None:  # one input: no dict, no name matching (the hot path of simple models)
            spec = self.inputs[0]
            datatype = spec.datatype if spec.shape is not None else _guess(example)
            array = array_from_json(example, datatype, None, spec.name)[None]
            spec.check(array)
            return [array]
        arrays = {}
        for name, value in values.items():
            known = self._specs.get(name)
            datatype = known.datatype if known is not None and known.shape is not None else _guess(value)
            arrays[name] = array_from_json(value, datatype, None, name)[None]
        return self.decode_tensors(arrays)

    def decode_tensors(self, tensors: dict[str, np.ndarray]) -> Arrays:
        """Named arrays -> arrays in input order, each checked against its spec.

        Raises InvalidInput for missing or unknown inputs, a wrong datatype or shape, or inputs whose
        batch dimensions differ.
        """
        if tensors.keys() != self._names:
            missing = sorted(self._names - tensors.keys())
            extra = sorted(tensors.keys() - self._names)
            raise InvalidInput(
                f"expected inputs {[spec.name for spec in self.inputs]}; missing {missing}, unknown {extra}"
            )
        arrays = [tensors[spec.name] for spec in self.inputs]
        for spec, array in zip(self.inputs, arrays, strict=True):
            spec.check(array)
            if array.ndim == 0:
                raise InvalidInput(f"input {spec.name!r} is a scalar; it needs a batch dimension")
        if len({array.shape[0] for array in arrays}) > 1:
            raise InvalidInput(f"inputs disagree on the batch size: {[list(a.shape) for a in arrays]}")
        return arrays

    def default_output(self, value: Any, rows: int) -> Arrays:
        """`batching.default_output` as an item's outputs: each output's one row, [rows, ...].

        value: one row of every output as JSON: the nested list for a one-output model, else
        {output name: nested list}; parsed and checked on the first call (at load), kept after.
        Rows are numpy broadcast views (read-only, no copies).
        Raises ModelLoadError when the names, datatypes or shapes do not fit the outputs.
        """
        if self._default is None or self._default[0] is not value:
            self._default = (value, self._default_rows(value))
        return [np.broadcast_to(row, (rows, *row.shape)) for row in self._default[1]]

    def _default_rows(self, value: Any) -> Arrays:
        """`value` as one row per output, in output order, each checked against its spec."""
        values = value if isinstance(value, dict) else {self.output_names(1)[0]: value}
        names = self.output_names(len(values))
        if set(values) != set(names):
            raise ModelLoadError(f"default_output names {sorted(values)}; the model's outputs are {names}")
        specs = {spec.name: spec for spec in self.outputs}
        rows = []
        for name in names:
            spec = specs.get(name)
            datatype = spec.datatype if spec is not None else _guess(values[name])
            try:
                row = array_from_json(values[name], datatype, None, name)
                if spec is not None and spec.batched:
                    spec.check(row[None], "output")
            except InvalidInput as exc:
                raise ModelLoadError(f"default_output: {exc.message}") from exc
            rows.append(row)
        return rows

    def healthy(self) -> bool:
        """The runner's health when it holds a process (ProcessRunner.healthy), else True."""
        healthy = getattr(self.runner, "healthy", None)
        return True if healthy is None else bool(healthy())

    def close(self) -> None:
        """Close the runner when it holds a process (modelbay.runtime.process_predictors.ProcessRunner)."""
        close = getattr(self.runner, "close", None)
        if close is not None:
            close()

    def rows(self, item: Arrays) -> int:
        """The item's batch size (first dimension)."""
        return int(item[0].shape[0]) if item else 1

    def predict(self, batch: list[Arrays]) -> list[Arrays]:
        """Concatenate compatible items, one forward pass per group, each item its own rows back."""
        return run_batched(self.runner, batch)

    def postprocess(self, output: Arrays) -> Any:
        """One example's outputs -> JSON values (batch dim dropped); a dict when there are several."""
        names = self.output_names(len(output))
        values = [array[0] if array.shape[:1] == (1,) else array for array in output]
        if len(values) == 1:
            return values[0]
        return dict(zip(names, values, strict=True))

    def encode_tensors(self, output: Arrays) -> dict[str, np.ndarray]:
        """Output arrays -> {output name: array}."""
        return dict(zip(self.output_names(len(output)), output, strict=True))


def _guess(value: Any) -> str:
    """Datatype for JSON data sent to an input whose spec is unknown: FP32, INT64 or BOOL.

    Data numpy cannot make an array of (ragged) guess FP32; decoding then says what is wrong.
    """
    try:
        kind = np.asarray(value).dtype.kind
    except (ValueError, RecursionError):
        return "FP32"
    return {"b": "BOOL", "i": "INT64", "u": "INT64"}.get(kind, "FP32")
