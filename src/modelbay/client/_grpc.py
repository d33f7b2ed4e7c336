"""The gRPC wire for clients: OIP ModelInfer messages (raw contents) and status code -> exception."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import grpc
import numpy as np

from modelbay.client._rest import retry_after_s
from modelbay.codecs.oip_grpc import array_from_contents
from modelbay.codecs.raw import array_from_raw, raw_from_array
from modelbay.errors import (
    DeadlineExceeded,
    Forbidden,
    InferenceFailed,
    InvalidInput,
    ModelbayError,
    ModelNotFound,
    PayloadTooLarge,
    TooManyRequests,
    Unauthenticated,
    Unavailable,
)
from modelbay.grpc.generated import grpc_predict_v2_pb2 as pb
from modelbay.types import datatype_of

# RESOURCE_EXHAUSTED is split by the `retry-after` trailer, which only TooManyRequests sets (gRPC's
# own refusal of a message over its size limit has none).
ERRORS: dict[grpc.StatusCode, type[ModelbayError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInput,
    grpc.StatusCode.NOT_FOUND: ModelNotFound,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: Forbidden,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.INTERNAL: InferenceFailed,
    grpc.StatusCode.RESOURCE_EXHAUSTED: PayloadTooLarge,
}
CHANNEL_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


def infer_message(
    model: str,
    version: str | None,
    inputs: dict[str, np.ndarray],
    outputs: list[str] | None,
    request_id: str | None,
) -> pb.ModelInferRequest:
    """A ModelInferRequest carrying every input as raw_input_contents."""
    message = pb.ModelInferRequest(model_name=model, model_version=version or "", id=request_id or "")
    for name, array in inputs.items():
        message.inputs.add(name=name, datatype=datatype_of(array.dtype), shape=array.shape)
        message.raw_input_contents.append(raw_from_array(array))
    for name in outputs or ():
        message.outputs.add(name=name)
    return message


def load_message(
    model: str, config: Mapping[str, Any] | None, files: Mapping[str, bytes] | None
) -> pb.RepositoryModelLoadRequest:
    """A RepositoryModelLoadRequest as tritonclient.grpc builds it: config as string_param (a JSON
    object), each file as `file:<path>` bytes_param."""
    message = pb.RepositoryModelLoadRequest(model_name=model)
    if config is not None:
        message.parameters["config"].string_param = json.dumps(dict(config))
    for path, data in (files or {}).items():
        message.parameters[f"file:{path}"].bytes_param = data
    return message


def index_rows(reply: pb.RepositoryIndexResponse) -> list[dict[str, str]]:
    """A RepositoryIndexResponse as [{"name", "version", "state", "reason"}]."""
    return [
        {"name": m.name, "version": m.version, "state": m.state, "reason": m.reason} for m in reply.models
    ]


def parse_message(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """A ModelInferResponse (raw or typed contents) -> {output name: numpy array}."""
    outputs = {}
    for index, tensor in enumerate(response.outputs):
        shape = list(tensor.shape)
        if response.raw_output_contents:
            raw = response.raw_output_contents[index]
            outputs[tensor.name] = array_from_raw(raw, tensor.datatype, shape, tensor.name).copy()
        else:
            outputs[tensor.name] = array_from_contents(tensor.contents, tensor.datatype, shape, tensor.name)
    return outputs


def error_from(exc: grpc.RpcError) -> ModelbayError:
    """The modelbay exception a gRPC error stands for, with the server's details."""
    # grpc.Call (blocking stubs) and grpc.aio.AioRpcError both carry code() and details().
    code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
    details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        trailers = exc.trailing_metadata() if callable(getattr(exc, "trailing_metadata", None)) else None
        retry_after = dict(trailers or ()).get("retry-after")
        if retry_after is not None:
            return TooManyRequests(details or code.name, retry_after_s(retry_after))
    cls = ERRORS.get(code)
    return cls(details or code.name) if cls is not None else ModelbayError(f"{code.name}: {details}")
