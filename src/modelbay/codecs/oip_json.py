"""Open Inference Protocol v2 JSON tensors: inference request and response bodies.

Follows "Inference Request JSON Object" / "Inference Response JSON Object" and "Tensor Data" of
the KServe Open Inference Protocol (REST): `data` is row-major, flat or nested; BOOL data are
JSON booleans; BYTES data are strings. Decoding is typed with msgspec (one pass, no per-request
schema building) and converts values strictly: no silent float->int truncation, no integer wrap.
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

from modelbay.errors import InferenceFailed, InvalidInput
from modelbay.types import InferenceRequest, InferenceResponse, datatype_of, element_count, numpy_dtype


class _RequestInput(msgspec.Struct):
    name: str
    shape: list[int]
    datatype: str
    data: Any
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


_encoder = msgspec.json.Encoder(enc_hook=_numpy_hook)

# Which JSON-decoded numpy kinds may become which target kinds without losing meaning.
_ALLOWED_KINDS = {"b": "b", "u": "iu", "i": "iu", "f": "iuf"}


def decode_request(body: bytes, model_name: str, model_version: str | None) -> InferenceRequest:
    """An OIP `$inference_request` JSON body -> InferenceRequest with numpy inputs.

    Raises InvalidInput when the body is not JSON, misses a field, names an unknown datatype,
    repeats an input name, or when an input's data does not fit its shape and datatype.
    """
    try:
        request = _request_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidInput(f"invalid inference request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"inference request is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidInput("inference request is JSON nested too deeply") from None
    inputs: dict[str, np.ndarray] = {}
    for tensor in request.inputs:
        if tensor.name in inputs:
            raise InvalidInput(f"input {tensor.name!r} appears twice in the request")
        inputs[tensor.name] = array_from_json(tensor.data, tensor.datatype, tensor.shape, tensor.name)
    outputs = [output.name for output in request.outputs] if request.outputs is not None else None
    return InferenceRequest(model_name, inputs, model_version, request.id, outputs)


def array_from_json(data: Any, datatype: str, shape: list[int] | None, name: str) -> np.ndarray:
    """JSON tensor data -> numpy array of `datatype`, reshaped to `shape` (None: as nested).

    Raises InvalidInput for ragged data, values of the wrong kind (e.g. 1.5 for INT64, 1 for BOOL,
    a number for BYTES), integers out of the datatype's range, or an element count that differs
    from the shape's.
    """
    dtype = numpy_dtype(datatype)
    if shape is not None and any(dim < 0 for dim in shape):
        raise InvalidInput(f"input {name!r}: shape {shape} has a negative dimension")
    try:
        raw = np.asarray(data)
    except ValueError as exc:
        raise InvalidInput(f"input {name!r}: data is not a regular (non-ragged) array: {exc}") from None
    if datatype == "BYTES":
        array = _bytes_array(raw, name)
    else:
        array = _numeric_array(raw, dtype, datatype, name)
    if shape is None:
        return array
    if array.size != element_count(shape):
        raise InvalidInput(
            f"input {name!r}: shape {shape} needs {element_count(shape)} elements, data has {array.size}"
        )
    return array.reshape(shape)


def _numeric_array(raw: np.ndarray, dtype: np.dtype, datatype: str, name: str) -> np.ndarray:
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
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
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


def encode_response(response: InferenceResponse) -> bytes:
    """InferenceResponse -> OIP `$inference_response` JSON bytes (data flattened, row-major).

    Raises InferenceFailed when a BYTES output is not UTF-8 text (JSON cannot carry raw bytes).
    """
    body: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": [output_json(name, array) for name, array in response.outputs.items()],
    }
    if response.id is not None:
        body["id"] = response.id
    return _encoder.encode(body)


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
    """Any JSON-able value, numpy arrays and scalars included (as lists and numbers) -> JSON bytes."""
    return _encoder.encode(value)
