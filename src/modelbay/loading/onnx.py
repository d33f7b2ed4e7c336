"""ONNX models, run by onnxruntime on the CPU execution provider.

onnxruntime comes with `pip install "modelbay[onnx]"`; without it, loading.loaders says so.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime

from modelbay.errors import ModelLoadError
from modelbay.settings import ModelConfig
from modelbay.types import TensorSpec

# onnxruntime's type strings -> OIP datatypes.
_DATATYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


class OnnxRunner:
    """An onnxruntime InferenceSession; specs come from the graph (symbolic dims show as -1)."""

    platform = "onnxruntime_onnx"

    def __init__(self, path: Path) -> None:
        try:
            self.session = onnxruntime.InferenceSession(
                str(path), session_options(), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ModelLoadError(f"{path}: onnxruntime cannot load it: {exc}") from exc
        self.inputs = [_spec(arg) for arg in self.session.get_inputs()]
        self.outputs = [_spec(arg) for arg in self.session.get_outputs()]
        self._input_names = [spec.name for spec in self.inputs]

    def __call__(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return list(self.session.run(None, dict(zip(self._input_names, arrays, strict=True))))


def session_options() -> onnxruntime.SessionOptions:
    """onnxruntime's defaults, but with `OMP_NUM_THREADS` threads per operator when it is set.

    onnxruntime sizes its intra-op thread pool to the machine's physical cores and its threads
    spin while they wait for work (onnxruntime docs, "Thread management"). A process given fewer
    cores, such as a Ray replica (Ray sets OMP_NUM_THREADS to the replica's `num_cpus`), then
    spends cores it was not given, which the processes beside it needed (the replica's CPU per
    request: benchmarks/on_ray.py's last column).
    """
    options = onnxruntime.SessionOptions()
    threads = os.environ.get("OMP_NUM_THREADS", "").strip()
    if threads.isdigit() and int(threads) > 0:
        options.intra_op_num_threads = int(threads)
    return options


def _spec(arg: object) -> TensorSpec:
    shape = tuple(dim if isinstance(dim, int) else -1 for dim in getattr(arg, "shape", None) or [])
    datatype = _DATATYPES.get(getattr(arg, "type", ""), "FP32")
    return TensorSpec(getattr(arg, "name", "input"), datatype, shape)


def load(path: Path, config: ModelConfig) -> OnnxRunner:
    """An OnnxRunner for `path`. Raises ModelLoadError if onnxruntime rejects the file."""
    return OnnxRunner(path)
