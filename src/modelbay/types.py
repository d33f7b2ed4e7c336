"""Tensors as the Open Inference Protocol names them: datatypes, shapes and tensor specs.

Datatypes are the OIP v2 tensor data types ("Tensor Data Types" in the KServe Open Inference
Protocol spec): BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32, FP64, BYTES. Inside modelbay a
tensor is a numpy array; BYTES tensors are numpy object arrays holding `bytes`.
A dimension of -1 in a shape means "any size" (dynamic), as in OIP model metadata.
"""

from __future__ import annotations

import functools
import math
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from modelbay.errors import InvalidInput

if TYPE_CHECKING:
    import torch

DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_BY_NUMPY = {dtype: name for name, dtype in DATATYPES.items()}


@functools.cache
def _torch_datatypes() -> dict[Any, str]:
    """torch dtype -> OIP datatype; built on first use, so this module does not import torch."""
    import torch

    return {
        torch.bool: "BOOL",
        torch.uint8: "UINT8",
        torch.uint16: "UINT16",
        torch.uint32: "UINT32",
        torch.uint64: "UINT64",
        torch.int8: "INT8",
        torch.int16: "INT16",
        torch.int32: "INT32",
        torch.int64: "INT64",
        torch.float16: "FP16",
        torch.float32: "FP32",
        torch.float64: "FP64",
    }


def numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype of an OIP datatype name. Raises InvalidInput for an unknown name."""
    try:
        return DATATYPES[datatype]
    except KeyError:
        raise InvalidInput(f"unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}") from None


def datatype_of(dtype: np.dtype | torch.dtype) -> str:
    """The OIP datatype name of a numpy or torch dtype. Raises InvalidInput when OIP has none."""
    torch = sys.modules.get("torch")  # a torch dtype exists only once torch is imported
    if torch is not None and isinstance(dtype, torch.dtype):
        name = _torch_datatypes().get(dtype)
    else:
        name = _BY_NUMPY.get(np.dtype(dtype))  # type: ignore[arg-type]
    if name is None:
        raise InvalidInput(f"dtype {dtype} has no Open Inference Protocol datatype")
    return name


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One named model input or output, as OIP model metadata describes it.

    name:     tensor name, e.g. "input".
    datatype: OIP datatype name, e.g. "FP32".
    shape:    full shape including the batch dimension; -1 marks a dynamic dimension.
              None when the model does not say (TorchScript without a manifest): then only the
              datatype is checked, and metadata shows [-1].
    """

    name: str
    datatype: str
    shape: tuple[int, ...] | None = None

    def metadata(self) -> dict[str, object]:
        """The OIP `$metadata_tensor` object: {"name", "datatype", "shape"}."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape or (-1,))}

    def check(self, array: np.ndarray, role: str = "input") -> None:
        """Raise InvalidInput unless `array` has this spec's datatype and a matching shape.

        A spec without a shape was guessed (the model does not say), so nothing is checked.
        role: how the message names the tensor ("input", or "output" for a model's outputs).
        """
        if self.shape is None:
            return
        if array.dtype != DATATYPES[self.datatype]:
            got = _BY_NUMPY.get(array.dtype) or str(array.dtype)
            raise InvalidInput(f"{role} {self.name!r}: expected datatype {self.datatype}, got {got}")
        if array.ndim != len(self.shape) or any(
            want not in (-1, have) for want, have in zip(self.shape, array.shape, strict=True)
        ):
            raise InvalidInput(
                f"{role} {self.name!r}: expected shape {list(self.shape)} (-1 is any size), "
                f"got {list(array.shape)}"
            )

    @property
    def batched(self) -> bool:
        """True when the first dimension is dynamic, so requests can be concatenated along it."""
        return self.shape is None or (len(self.shape) > 0 and self.shape[0] == -1)


def element_count(shape: list[int] | tuple[int, ...]) -> int:
    """Number of elements in a tensor of `shape` (1 for a scalar shape [])."""
    return math.prod(shape)


# Bounds on a shape a request declares, checked before anything is sized from it. Far above any
# real tensor; what they stop is a shape whose arithmetic alone breaks numpy ([2**63 - 1, 0]).
MAX_DIMS = 32
MAX_ELEMENTS = 2**40


def declared_count(shape: list[int] | tuple[int, ...], name: str) -> int:
    """The element count of a shape a request declares for input `name`, once it is known sane.

    Every door calls this before it allocates from or reshapes to a declared shape, then compares
    the count with the data that came (issue 9, item 6: sizes are checked against the body first).
    Raises InvalidInput for a negative dimension, more than MAX_DIMS dimensions, or nonzero
    dimensions whose product passes MAX_ELEMENTS.
    """
    if len(shape) > MAX_DIMS:
        raise InvalidInput(f"input {name!r}: shape has {len(shape)} dimensions; at most {MAX_DIMS} are taken")
    if any(dim < 0 for dim in shape):
        raise InvalidInput(f"input {name!r}: shape {list(shape)} has a negative dimension")
    if math.prod(dim for dim in shape if dim) > MAX_ELEMENTS:
        raise InvalidInput(f"input {name!r}: shape {list(shape)} has more than {MAX_ELEMENTS} elements")
    return math.prod(shape)


@dataclass(slots=True)
class InferenceRequest:
    """One OIP inference request, decoded from any transport.

    inputs:  named input tensors, each a numpy array of its declared shape (batch dim first).
    outputs: names of the outputs to return; None returns all.
    """

    model_name: str
    inputs: dict[str, np.ndarray]
    model_version: str | None = None
    id: str | None = None
    outputs: list[str] | None = None


@dataclass(slots=True)
class InferenceResponse:
    """One OIP inference response: named output tensors as numpy arrays.

    parameters: the response's OIP `parameters` object, e.g. {"default_output": True} when the
                model's default output answered a request that would have missed its SLO.
    """

    model_name: str
    model_version: str
    outputs: dict[str, np.ndarray]
    id: str | None = None
    parameters: dict[str, Any] | None = None
