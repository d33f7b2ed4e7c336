"""Client-side tensors: what users pass to `infer` -> named numpy arrays with OIP datatypes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np


def named_arrays(inputs: Any, first_input: Callable[[], str]) -> dict[str, np.ndarray]:
    """`{name: array-like}` or one array-like (for the model's first input) -> {name: numpy array}.

    Strings (numpy "U"/"S" arrays, lists of str/bytes) become BYTES object arrays of bytes (UTF-8).
    """
    if isinstance(inputs, Mapping):
        return {str(name): as_array(value) for name, value in inputs.items()}
    return {first_input(): as_array(inputs)}


def as_array(value: Any) -> np.ndarray:
    """An array-like -> numpy array; text becomes an object array of UTF-8 bytes (OIP BYTES)."""
    array = np.asarray(value)
    if array.dtype.kind in "US" or (array.dtype == object and array.size and isinstance(array.flat[0], str)):
        out = np.empty(array.shape, dtype=object)
        out.reshape(-1)[:] = [v.encode() if isinstance(v, str) else bytes(v) for v in array.reshape(-1)]
        return out
    return array
