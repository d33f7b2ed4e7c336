"""Open Inference Protocol v2 REST bodies: JSON tensors and the binary tensor data extension.

Follows "Inference Request JSON Object" / "Inference Response JSON Object" and "Tensor Data" of
the KServe Open Inference Protocol (REST): `data` is row-major, flat or nested; BOOL data are
JSON booleans; BYTES data are strings. Decoding is typed with msgspec (one pass, no per-request
schema building) and converts values strictly: no silent float->int truncation, no integer wrap.

Binary tensor data extension (Triton's `binary_data`): the body is the JSON header followed by raw
tensor bytes; the header's length travels in the `Inference-Header-Content-Length` HTTP header.
An input with `parameters.binary_data_size` takes that many bytes, in input order. Outputs are
returned raw when the request sets `parameters.binary_data_output`, or an output sets
`parameters.binary_data` (which wins for that output).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Any

import msgspec
import numpy as np

from modelbay.codecs.raw import array_from_raw, raw_from_array
from modelbay.errors import InferenceFailed, InvalidInput
from modelbay.types import (
    DATATYPES,
    MAX_DIMS,
    InferenceRequest,
    InferenceResponse,
    datatype_of,
    declared_count,
    element_count,
    numpy_dtype,
)


def _nested(element: Any, depth: int = MAX_DIMS) -> Any:
    """The type of JSON tensor data of `element`s: a scalar, or lists nested up to `depth` deep."""
    kind = element
    for _ in range(depth):
        kind = element | list[kind]  # type: ignore[valid-type]
    return kind


def _element(datatype: str) -> tuple[Any, str]:
    """The Python type one JSON element of `datatype` must decode to, bounds included, and its words."""
    if datatype == "BYTES":
        return str, "strings"
    if datatype == "BOOL":
        return bool, "booleans"
    dtype = DATATYPES[datatype]
    info = np.finfo(dtype) if dtype.kind == "f" else np.iinfo(dtype)
    low, high = (float(info.min), float(info.max)) if dtype.kind == "f" else (int(info.min), int(info.max))
    kind = float if dtype.kind == "f" else int
    words = f"numbers from {low:g} to {high:g}" if dtype.kind == "f" else f"integers from {low} to {high}"
    if datatype == "UINT64":  # msgspec's bounds stop at int64; numpy refuses the rest (_array)
        return Annotated[kind, msgspec.Meta(ge=0)], words
    return Annotated[kind, msgspec.Meta(ge=low, le=high)], words


# What JSON tensor data must hold, per datatype (OIP "Tensor Data"): numbers within the datatype's
# range for the numeric ones (integers for the integer ones; a JSON integer is a fine FP32),
# booleans for BOOL, strings for BYTES. Checked while decoding, in C, with the bounds: `true` among
# FP32 data, 1.5 among INT64 data, 1e39 for FP32 or 300 for UINT8 are refused, not silently made
# 1.0, 1, inf or 44 (issue 9, item 9). Decoded Python values (the simple door) are checked by
# converting a one-field struct: msgspec caches a struct's type information, where `convert(data,
# a bare union type)` rebuilds it per call (~130 us).
_ELEMENTS = {datatype: _element(datatype) for datatype in DATATYPES}
_DATA_DECODERS = {datatype: msgspec.json.Decoder(_nested(kind)) for datatype, (kind, _) in _ELEMENTS.items()}
_DATA_STRUCTS = {
    datatype: msgspec.defstruct(f"Data_{datatype}", [("data", _nested(kind))], array_like=True)
    for datatype, (kind, _) in _ELEMENTS.items()
}


class _RequestInput(msgspec.Struct):
    name: str
    shape: list[int]
    datatype: str
    data: msgspec.Raw = msgspec.UNSET  # type: ignore[assignment]  # decoded once the datatype is known
    parameters: dict[str, Any] | None = None


class _RequestOutput(msgspec.Struct):
    name: str
    parameters: dict[str, Any] | None = None


class _Request(msgspec.Struct):
    inputs: list[_RequestInput]
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[_RequestOutput] | None = None


_request_decoder = msgspec.json.Decoder(_Request)


def _numpy_hook(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def _refuse_non_finite(value: Any, what: str) -> None:
    """Raise InferenceFailed when `value` holds a float NaN or infinity, anywhere inside it.

    JSON has no token for them (RFC 8259 section 6; OIP JSON tensor data are JSON numbers), and
    msgspec writes them as `null`: a silent wrong answer. Called only for an encoded body that
    holds `null`, so the common answer pays one byte search. Binary outputs and gRPC carry them as
    they are.
    """
    if isinstance(value, np.ndarray | np.generic):
        bad = value.dtype.kind == "f" and not np.isfinite(value).all()
    elif isinstance(value, float):
        bad = not math.isfinite(value)
    elif isinstance(value, dict):
        bad = False
        for item in value.values():
            _refuse_non_finite(item, what)
    elif isinstance(value, list | tuple):
        bad = False
        for item in value:
            _refuse_non_finite(item, what)
    else:
        bad = False
    if bad:
        raise InferenceFailed(
            f"{what} holds NaN or infinity, which JSON cannot carry; ask for raw outputs "
            "(OIP binary_data_output, or gRPC) to receive them as they are"
        )


_encoder = msgspec.json.Encoder(enc_hook=_numpy_hook)

# Which JSON-decoded numpy kinds may become which target kinds without losing meaning.
_ALLOWED_KINDS = {"b": "b", "u": "iu", "i": "iu", "f": "iuf"}


@dataclass(frozen=True, slots=True)
class BinaryOutputs:
    """Which outputs a request wants as raw bytes: `default` for all, `per_output` overriding by name."""

    default: bool = False
    per_output: dict[str, bool] = field(default_factory=dict)

    def wants(self, name: str) -> bool:
        return self.per_output.get(name, self.default)


def decode_request(
    body: bytes, model_name: str, model_version: str | None, header_length: int | None = None
) -> tuple[InferenceRequest, BinaryOutputs]:
    """An OIP `$inference_request` body -> InferenceRequest with numpy inputs, and its binary choice.

    header_length: the `Inference-Header-Content-Length` value when the body carries binary tensor
    data after a JSON header of that many bytes; None for a plain JSON body.
    Raises InvalidInput when the JSON is malformed or misses a field, names an unknown datatype,
    repeats an input name, when an input's data does not fit its shape and datatype, or when the
    binary data is shorter or longer than the `binary_data_size` values say.
    """
    if header_length is not None and not 0 <= header_length <= len(body):
        raise InvalidInput(
            f"Inference-Header-Content-Length is {header_length} but the body has {len(body)} bytes"
        )
    header = body if header_length is None else memoryview(body)[:header_length]
    try:
        request = _request_decoder.decode(header)
    except msgspec.ValidationError as exc:
        raise InvalidInput(f"invalid inference request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"inference request is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidInput("inference request is JSON nested too deeply") from None
    binary = memoryview(body)[header_length:] if header_length is not None else memoryview(b"")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in request.inputs:
        if tensor.name in inputs:
            raise InvalidInput(f"input {tensor.name!r} appears twice in the request")
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise InvalidInput(
                    f"input {tensor.name!r}: binary_data_size {size} but only {len(binary) - offset} "
                    "bytes of binary data remain"
                )
            raw = binary[offset : offset + size]
            offset += size
            inputs[tensor.name] = array_from_raw(raw, tensor.datatype, tensor.shape, tensor.name)
        elif tensor.data is msgspec.UNSET:
            raise InvalidInput(f"input {tensor.name!r} has neither data nor parameters.binary_data_size")
        else:
            inputs[tensor.name] = _array_from_raw_json(
                tensor.data, tensor.datatype, tensor.shape, tensor.name
            )
    if offset != len(binary):
        raise InvalidInput(
            f"{len(binary) - offset} bytes of binary data are left after the inputs' binary_data_size values"
        )
    outputs = [output.name for output in request.outputs] if request.outputs is not None else None
    choice = BinaryOutputs(
        bool((request.parameters or {}).get("binary_data_output", False)),
        {
            output.name: bool(output.parameters["binary_data"])
            for output in request.outputs or ()
            if output.parameters and "binary_data" in output.parameters
        },
    )
    return InferenceRequest(model_name, inputs, model_version, request.id, outputs), choice


def array_from_json(data: Any, datatype: str, shape: list[int] | None, name: str) -> np.ndarray:
    """JSON tensor data (decoded Python values) -> numpy array of `datatype`, reshaped to `shape`
    (None: as nested).

    Raises InvalidInput for values of the wrong kind (`true` or "1" for FP32, 1.5 for INT64, 1 for
    BOOL, a number for BYTES), ragged data, values out of the datatype's range (integers, and
    1e39 for FP32), a shape `declared_count` refuses, or an element count that differs from it.
    """
    numpy_dtype(datatype)  # an unknown datatype fails first, whatever the data
    if shape is not None:
        declared_count(shape, name)
    try:
        values = msgspec.convert((data,), _DATA_STRUCTS[datatype], strict=True).data  # type: ignore[attr-defined]
    except msgspec.ValidationError as exc:
        error = str(exc).replace("$[0]", "$", 1)  # the path inside the data, as the JSON door says it
        raise InvalidInput(
            f"input {name!r}: {datatype} data must hold {_ELEMENTS[datatype][1]}: {error}"
        ) from None
    return _array(values, datatype, shape, name)


def _array_from_raw_json(data: msgspec.Raw, datatype: str, shape: list[int], name: str) -> np.ndarray:
    """`array_from_json` for the undecoded JSON of an OIP input's `data`: typed in one decoding pass."""
    numpy_dtype(datatype)
    declared_count(shape, name)
    try:
        values = _DATA_DECODERS[datatype].decode(data)
    except msgspec.ValidationError as exc:
        raise InvalidInput(
            f"input {name!r}: {datatype} data must hold {_ELEMENTS[datatype][1]}: {exc}"
        ) from None
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"input {name!r}: data is not valid JSON: {exc}") from None
    return _array(values, datatype, shape, name)


def _array(values: Any, datatype: str, shape: list[int] | None, name: str) -> np.ndarray:
    """Values already checked for `datatype` (kind and range) -> its array of `shape` (checked sane)."""
    try:
        if datatype == "BYTES":
            array = _bytes_array(np.asarray(values), name)
        else:
            array = np.asarray(values, dtype=DATATYPES[datatype])
    except ValueError as exc:
        raise InvalidInput(f"input {name!r}: data is not a regular (non-ragged) array: {exc}") from None
    except OverflowError:
        raise InvalidInput(f"input {name!r}: {datatype} data must hold {_ELEMENTS[datatype][1]}") from None
    if shape is None:
        return array
    if array.size != element_count(shape):
        raise InvalidInput(
            f"input {name!r}: shape {shape} needs {element_count(shape)} elements, data has {array.size}"
        )
    return array.reshape(shape)


def cast_strict(raw: np.ndarray, datatype: str, name: str) -> np.ndarray:
    """Numbers decoded from the wire -> an array of numeric `datatype`, refusing lossy conversions.

    Raises InvalidInput for booleans, strings or fractions where they do not belong, for integers
    outside the datatype's range, and for numbers beyond a floating datatype's largest finite
    value (1e39 would become FP32 inf: a silent wrong answer).
    """
    dtype = numpy_dtype(datatype)
    if raw.size == 0:
        return raw.astype(dtype)
    if raw.dtype.kind not in _ALLOWED_KINDS[dtype.kind]:
        got = {
            "b": "booleans",
            "f": "fractional numbers",
            "U": "strings",
            "O": "mixed or oversized values",
        }.get(raw.dtype.kind, f"{raw.dtype} values")
        raise InvalidInput(f"input {name!r}: datatype {datatype} cannot hold {got}")
    info: np.iinfo[Any] | np.finfo[Any] | None = None
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
    elif dtype.itemsize < raw.dtype.itemsize or raw.dtype.kind in "iu":
        info = np.finfo(dtype)
    if info is not None:
        low, high = raw.min(), raw.max()
        if low < info.min or high > info.max:
            raise InvalidInput(
                f"input {name!r}: values from {low} to {high} do not fit {datatype} [{info.min}, {info.max}]"
            )
    return raw.astype(dtype, copy=False)


def _bytes_array(raw: np.ndarray, name: str) -> np.ndarray:
    if raw.size and raw.dtype.kind != "U":
        raise InvalidInput(f"input {name!r}: BYTES data must be strings, got {raw.dtype} values")
    out = np.empty(raw.shape, dtype=object)
    flat = out.reshape(-1)
    for index, text in enumerate(raw.reshape(-1)):
        flat[index] = str(text).encode()
    return out


def encode_response(
    response: InferenceResponse, binary: BinaryOutputs | None = None
) -> tuple[bytes, int | None]:
    """InferenceResponse -> OIP `$inference_response` body, and the JSON header's length.

    Outputs that `binary` asks for travel as raw bytes after the JSON header (their entry carries
    `parameters.binary_data_size`); the others as JSON data (flattened, row-major). The returned
    length is None when no output is binary (a plain JSON body).
    Raises InferenceFailed when a JSON BYTES output is not UTF-8 text, or a JSON floating output
    holds NaN or infinity (JSON can carry neither).
    """
    outputs = []
    blobs = []
    for name, array in response.outputs.items():
        if binary is not None and binary.wants(name):
            raw = raw_from_array(array)
            blobs.append(raw)
            outputs.append(
                {
                    "name": name,
                    "datatype": datatype_of(array.dtype),
                    "shape": list(array.shape),
                    "parameters": {"binary_data_size": len(raw)},
                }
            )
        else:
            outputs.append(output_json(name, array))
    body: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outputs,
    }
    if response.id is not None:
        body["id"] = response.id
    if response.parameters:
        body["parameters"] = response.parameters
    header = _encoder.encode(body)
    if b"null" in header:  # a NaN or infinity became null (nothing else in this body can be null)
        for name, array in response.outputs.items():
            _refuse_non_finite(array, f"output {name!r}")
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def output_json(name: str, array: np.ndarray) -> dict[str, Any]:
    """One OIP `$response_output` object for `array`."""
    datatype = datatype_of(array.dtype)
    if datatype == "BYTES":
        try:
            data: list[Any] = [bytes(v).decode() for v in array.reshape(-1)]
        except (UnicodeDecodeError, TypeError) as exc:
            raise InferenceFailed(f"output {name!r} holds bytes that are not UTF-8 text: {exc}") from None
    else:
        data = array.reshape(-1).tolist()
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}


def encode_json(value: Any) -> bytes:
    """Any JSON-able value, numpy arrays and scalars included (as lists and numbers) -> JSON bytes.

    Raises InferenceFailed when it holds a float NaN or infinity (JSON cannot carry them).
    """
    body = _encoder.encode(value)
    if b"null" in body:
        _refuse_non_finite(value, "the answer")
    return body
