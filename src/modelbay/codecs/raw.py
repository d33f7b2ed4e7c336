"""Raw tensor bytes, the layout shared by the OIP binary extension (REST) and gRPC raw contents.

Per the Triton/KServe binary tensor data extension: fixed-size datatypes are the tensor's elements
in row-major order, little-endian, BOOL one byte each; a BYTES tensor is each element as a 4-byte
little-endian length followed by that many bytes, elements in row-major order.
Numeric decoding is one `np.frombuffer` (no per-element Python work).
"""

from __future__ import annotations

import struct

import numpy as np

from modelbay.errors import InvalidInput
from modelbay.types import declared_count, numpy_dtype

_LENGTH = struct.Struct("<I")


def array_from_raw(data: bytes | memoryview, datatype: str, shape: list[int], name: str) -> np.ndarray:
    """Raw tensor bytes -> numpy array of `datatype` and `shape`.

    The array shares memory with `data` (read-only) for fixed-size datatypes. Nothing is
    allocated before the shape is checked against the bytes that came.
    Raises InvalidInput for an unknown datatype, a shape `declared_count` refuses, a byte count
    that does not match the shape, or a BYTES buffer whose length prefixes run past its end.
    """
    dtype = numpy_dtype(datatype)
    count = declared_count(shape, name)
    if datatype == "BYTES":
        if count * _LENGTH.size > len(data):  # each element has at least its 4-byte length
            raise InvalidInput(
                f"input {name!r}: BYTES shape {shape} has {count} elements, which need at least "
                f"{count * _LENGTH.size} bytes of raw data; got {len(data)}"
            )
        return _bytes_from_raw(memoryview(data), count, name).reshape(shape)
    wire = dtype.newbyteorder("<")
    expected = count * dtype.itemsize
    if len(data) != expected:
        raise InvalidInput(
            f"input {name!r}: {datatype} shape {shape} needs {expected} bytes of raw data, got {len(data)}"
        )
    return np.frombuffer(data, dtype=wire).reshape(shape)


def raw_from_array(array: np.ndarray) -> bytes:
    """Numpy array -> raw tensor bytes (row-major, little-endian; BYTES length-prefixed)."""
    if array.dtype == object:
        parts: list[bytes] = []
        for element in array.reshape(-1):
            value = element if isinstance(element, bytes) else str(element).encode()
            parts += (_LENGTH.pack(len(value)), value)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _bytes_from_raw(view: memoryview, count: int, name: str) -> np.ndarray:
    out = np.empty(count, dtype=object)
    offset = 0
    for index in range(count):
        if offset + 4 > len(view):
            raise InvalidInput(f"input {name!r}: BYTES data ends after {index} of {count} elements")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidInput(
                f"input {name!r}: BYTES element {index} claims {length} bytes, "
                f"only {len(view) - offset} remain"
            )
        out[index] = bytes(view[offset : offset + length])
        offset += length
    if offset != len(view):
        raise InvalidInput(f"input {name!r}: {len(view) - offset} bytes left after {count} BYTES elements")
    return out
