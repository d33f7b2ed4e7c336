"""The HTTP wire for clients: OIP REST bodies (binary extension by default) and status -> exception."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from modelbay.codecs.oip_json import array_from_json
from modelbay.codecs.raw import array_from_raw, raw_from_array
from modelbay.errors import (
    DeadlineExceeded,
    Forbidden,
    InferenceFailed,
    InvalidInput,
    ModelbayError,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    TooManyRequests,
    Unauthenticated,
    UnsupportedMediaType,
)
from modelbay.types import datatype_of

HEADER = "Inference-Header-Content-Length"
# HTTP status -> the exception the server raised (503 is split by Retry-After, which only Overloaded
# sets; 429's Retry-After is TooManyRequests.retry_after_s).
ERRORS: dict[int, type[ModelbayError]] = {
    400: InvalidInput,
    401: Unauthenticated,
    403: Forbidden,
    404: ModelNotFound,
    408: RequestTimeout,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    429: TooManyRequests,
    500: InferenceFailed,
    503: ModelNotReady,
    504: DeadlineExceeded,
}


def model_path(model: str, version: str | None) -> str:
    """`/v2/models/{model}[/versions/{version}]`."""
    return f"/v2/models/{model}" + (f"/versions/{version}" if version else "")


def predict_path(model: str, version: str | None) -> str:
    """`/predict/{model}[/versions/{version}]`."""
    return f"/predict/{model}" + (f"/versions/{version}" if version else "")


def infer_body(
    inputs: dict[str, np.ndarray], outputs: list[str] | None, binary: bool, request_id: str | None
) -> tuple[bytes, dict[str, str]]:
    """An OIP inference request body and its headers; tensors raw after the JSON header when `binary`."""
    header: dict[str, Any] = {"inputs": [], "parameters": {"binary_data_output": binary}}
    blobs = []
    for name, array in inputs.items():
        entry: dict[str, Any] = {
            "name": name,
            "shape": list(array.shape),
            "datatype": datatype_of(array.dtype),
        }
        if binary:
            raw = raw_from_array(array)
            blobs.append(raw)
            entry["parameters"] = {"binary_data_size": len(raw)}
        else:
            entry["data"] = _json_data(name, array)
        header["inputs"].append(entry)
    if outputs is not None:
        header["outputs"] = [{"name": name} for name in outputs]
    if request_id is not None:
        header["id"] = request_id
    text = json.dumps(header).encode()
    if not binary:
        return text, {"content-type": "application/json"}
    return text + b"".join(blobs), {HEADER: str(len(text)), "content-type": "application/octet-stream"}


def _json_data(name: str, array: np.ndarray) -> list[Any]:
    if array.dtype != object:
        values: list[Any] = array.reshape(-1).tolist()
        return values
    try:
        return [bytes(value).decode() for value in array.reshape(-1)]
    except UnicodeDecodeError:
        raise InvalidInput(
            f"input {name!r}: BYTES that are not UTF-8 text cannot travel as JSON; use binary=True"
        ) from None


def parse_infer(headers: Any, content: bytes) -> dict[str, np.ndarray]:
    """An OIP inference response (JSON or binary extension) -> {output name: numpy array}."""
    length = headers.get(HEADER)
    size = int(length) if length is not None else len(content)
    body = json.loads(content[:size])
    binary = memoryview(content)[size:]
    offset = 0
    outputs = {}
    for output in body["outputs"]:
        nbytes = (output.get("parameters") or {}).get("binary_data_size")
        if nbytes is None:
            outputs[output["name"]] = array_from_json(
                output["data"], output["datatype"], output["shape"], output["name"]
            )
        else:
            raw = binary[offset : offset + nbytes]
            offset += nbytes
            outputs[output["name"]] = array_from_raw(
                raw, output["datatype"], output["shape"], output["name"]
            ).copy()
    return outputs


def predict_request(data: Any) -> dict[str, Any]:
    """httpx keyword arguments for `POST /predict/{model}` with `data`.

    bytes or a Path (a file's contents): the raw body, e.g. an image. A str: {"input": text}.
    Anything else (array, list, number): {"input": data as nested lists}.
    """
    if isinstance(data, Path):
        data = data.read_bytes()
    if isinstance(data, bytes | bytearray):
        return {"content": bytes(data), "headers": {"content-type": "application/octet-stream"}}
    value = data.tolist() if isinstance(data, np.ndarray) else data
    return {"content": json.dumps({"input": value}).encode(), "headers": {"content-type": "application/json"}}


def load_body(config: Mapping[str, Any] | None, files: Mapping[str, bytes] | None) -> dict[str, Any]:
    """The body of `POST /v2/repository/models/{model}/load` as tritonclient.http sends it:
    {"parameters": {"config": "<JSON object>", "file:<path>": "<base64>", ...}}.

    config: modelbay.yaml fields. files: content by path relative to the model folder ("1/model.onnx").
    """
    parameters: dict[str, Any] = {}
    if config is not None:
        parameters["config"] = json.dumps(dict(config))
    for path, data in (files or {}).items():
        parameters[f"file:{path}"] = base64.b64encode(data).decode("ascii")
    return {"parameters": parameters}


def json_content(value: Any) -> dict[str, Any]:
    """httpx request arguments sending `value` as a JSON body, null included (httpx's `json=None`
    sends no body at all)."""
    return {"content": json.dumps(value).encode(), "headers": {"content-type": "application/json"}}


def raise_for_status(status: int, headers: Any, content: bytes) -> None:
    """Raise the modelbay exception a non-2xx response stands for, with the server's message."""
    if status < 400:
        return
    try:
        message = str(json.loads(content)["error"])
    except (ValueError, KeyError, TypeError):
        message = content.decode(errors="replace") or f"HTTP {status}"
    if status == 503 and "retry-after" in headers:
        raise Overloaded(message)
    if status == 429:
        raise TooManyRequests(message, retry_after_s(headers.get("retry-after")))
    raise ERRORS.get(status, ModelbayError)(message)


def retry_after_s(value: str | None) -> int:
    """Retry-After (or the gRPC `retry-after` trailer) in whole seconds; 1 when absent or not a
    number of seconds (an HTTP date is not sent by modelbay)."""
    return int(value) if value is not None and value.isascii() and value.isdigit() else 1
