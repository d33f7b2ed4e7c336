"""Open Inference Protocol v2 gRPC messages <-> InferenceRequest / InferenceResponse.

Inputs come either as typed `contents` (the InferTensorContents field of their datatype) or as
`raw_input_contents`, one bytes entry per input in input order (the layout of `codecs.raw`).
Outputs are always returned as `raw_output_contents`, as Triton does; Triton's and KServe's
clients read both forms.
"""

from __future__ import annotations

import numpy as np

from modelbay.codecs.oip_json import cast_strict
from modelbay.codecs.raw import array_from_raw, raw_from_array
from modelbay.errors import InvalidInput
from modelbay.grpc.generated import grpc_predict_v2_pb2 as pb
from modelbay.types import InferenceRequest, InferenceResponse, datatype_of, declared_count, numpy_dtype

# Which InferTensorContents field carries each datatype; FP16 has none (raw contents only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def decode_request(message: pb.ModelInferRequest) -> InferenceRequest:
    """A ModelInferRequest -> InferenceRequest with numpy inputs.

    Raises InvalidInput when raw_input_contents does not hold one entry per input, when an input's
    contents or raw bytes do not fit its shape and datatype, or for a repeated input name.
    """
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise InvalidInput(
            f"{len(raw)} raw_input_contents entries for {len(message.inputs)} inputs; send one per input"
        )
    inputs: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(message.inputs):
        if tensor.name in inputs:
            raise InvalidInput(f"input {tensor.name!r} appears twice in the request")
        shape = list(tensor.shape)
        if raw:
            inputs[tensor.name] = array_from_raw(raw[index], tensor.datatype, shape, tensor.name)
        else:
            inputs[tensor.name] = array_from_contents(tensor.contents, tensor.datatype, shape, tensor.name)
    outputs = [output.name for output in message.outputs] or None
    return InferenceRequest(
        message.model_name, inputs, message.model_version or None, message.id or None, outputs
    )


def array_from_contents(
    contents: pb.InferTensorContents, datatype: str, shape: list[int], name: str
) -> np.ndarray:
    """Typed InferTensorContents -> numpy array of `datatype` and `shape`.

    Raises InvalidInput for an unknown datatype, FP16 (no typed field: use raw contents), values
    in another datatype's field, values out of range, or an element count that differs from the shape.
    """
    numpy_dtype(datatype)
    count = declared_count(shape, name)
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(
            f"input {name!r}: {datatype} has no typed contents field; send it in raw_input_contents"
        )
    filled = [
        other for other in set(CONTENTS_FIELD.values()) if other != field and len(getattr(contents, other))
    ]
    if filled:
        raise InvalidInput(f"input {name!r}: datatype {datatype} takes {field}, but {filled[0]} is set")
    values = getattr(contents, field)
    if len(values) != count:
        raise InvalidInput(
            f"input {name!r}: shape {shape} needs {count} elements, contents has {len(values)}"
        )
    if datatype == "BYTES":
        array = np.empty(len(values), dtype=object)
        array[:] = list(values)
    elif datatype == "BOOL":
        array = np.array(values, dtype=np.bool_)
    else:
        array = cast_strict(np.array(values), datatype, name)
    return array.reshape(shape)


def encode_response(response: InferenceResponse) -> pb.ModelInferResponse:
    """InferenceResponse -> ModelInferResponse with every output in raw_output_contents."""
    message = pb.ModelInferResponse(model_name=response.model_name, model_version=response.model_version)
    if response.id is not None:
        message.id = response.id
    for key, value in (response.parameters or {}).items():
        _set_parameter(message.parameters[key], value)
    for name, array in response.outputs.items():
        message.outputs.add(name=name, datatype=datatype_of(array.dtype), shape=array.shape)
        message.raw_output_contents.append(raw_from_array(array))
    return message


def _set_parameter(parameter: pb.InferParameter, value: bool | int | str) -> None:
    """Fill an InferParameter's oneof from a Python value (bool_param, int64_param or string_param)."""
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        parameter.int64_param = value
    else:
        parameter.string_param = str(value)
