"""The corpus of malformed requests: every door, each request with the answer it must get.

Doors:
  predict     POST /predict/{model}: raw bytes, multipart or JSON {"input"} / {"inputs"}
  http        any other HTTP request through httpx (OIP JSON, routes, methods, encodings)
  binary      POST /v2/models/{model}/infer with the OIP binary extension
  grpc        ModelInfer over gRPC (modelbay's generated stubs); `expect` is a status code name
  raw         bytes written to a TCP socket, with pauses; `expect` may hold None: no answer, the
              server closes the connection

The server is the fuzz server of tests/fuzz/conftest.py: "tiny" takes FP32 [-1, 4] as "input"
with max_queue_size 8, "failing" always raises, "slow" is past its timeout_s, bodies are limited
to 1 MiB and a request must arrive whole within 2 s. A few well-formed requests (ok-*) check the
harness itself.
"""

from __future__ import annotations

import gzip
import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from modelbay.grpc.generated import grpc_predict_v2_pb2 as pb
from tests.fuzz.conftest import MAX_BODY_BYTES, MAX_QUEUE_SIZE, ROW, SECRET

JSON = {"content-type": "application/json"}
INFER = "/v2/models/tiny/infer"
HOST = b"Host: 127.0.0.1\r\n"


@dataclass(frozen=True)
class Case:
    """One request and what it must get.

    expect:  allowed HTTP statuses (or gRPC code names; None for "no answer, connection closed").
    request: door-specific: for predict/http/binary {method, path, headers, body}; for grpc a
             ModelInferRequest; for raw a tuple of bytes to send and float pauses in seconds.
    body_has / body_lacks: text the answer must / must not contain.
    """

    id: str
    door: str
    expect: tuple[int | str | None, ...]
    request: Any
    body_has: str | None = None
    body_lacks: str | None = field(default=SECRET)


def http(
    id: str,
    path: str,
    body: bytes | None,
    *expect: int,
    method: str = "POST",
    headers: dict[str, Any] | None = None,
    door: str = "http",
    body_has: str | None = None,
) -> Case:
    request = {"method": method, "path": path, "headers": headers or {}, "body": body}
    return Case(id, door, expect, request, body_has)


def predict(id: str, model: str, value: Any, *expect: int, body_has: str | None = None) -> Case:
    """A JSON body (any value) or raw bytes, with the content type they imply, to /predict/MODEL."""
    if isinstance(value, bytes):
        return http(id, f"/predict/{model}", value, *expect, door="predict", body_has=body_has)
    body = json.dumps(value).encode()
    return http(id, f"/predict/{model}", body, *expect, headers=JSON, door="predict", body_has=body_has)


def tensor(shape: list[Any], data: Any, datatype: str = "FP32", name: str = "input") -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def infer(id: str, inputs: Any, *expect: int, model: str = "tiny", body_has: str | None = None) -> Case:
    """An OIP JSON inference request {"inputs": INPUTS} (a dict INPUTS is sent as the whole body)."""
    body = json.dumps(inputs if isinstance(inputs, dict) else {"inputs": inputs}).encode()
    return http(id, f"/v2/models/{model}/infer", body, *expect, headers=JSON, body_has=body_has)


def binary(id: str, inputs: list[dict[str, Any]], raw: bytes, *expect: int, length: Any = None) -> Case:
    """An OIP binary-extension request: JSON header, then `raw`; `length` overrides the header's
    Inference-Header-Content-Length (default: the JSON's true length)."""
    header = json.dumps({"inputs": inputs}).encode()
    value = str(len(header)) if length is None else length
    headers = {"content-type": "application/octet-stream", "inference-header-content-length": value}
    return http(id, INFER, header + raw, *expect, headers=headers, door="binary")


def raw_tensor(shape: list[int], size: object, datatype: str = "FP32", name: str = "input") -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": datatype, "parameters": {"binary_data_size": size}}


def grpc(id: str, expect: str, *inputs: Any, model: str = "tiny", raw: tuple[bytes, ...] = ()) -> Case:
    """A ModelInfer request; each input is (shape, datatype, fp32 contents or None)."""
    tensors = [
        pb.ModelInferRequest.InferInputTensor(
            name="input" if model == "tiny" else "x",
            datatype=datatype,
            shape=shape,
            contents=pb.InferTensorContents(fp32_contents=values) if values is not None else None,
        )
        for shape, datatype, values in inputs
    ]
    request = pb.ModelInferRequest(model_name=model, inputs=tensors, raw_input_contents=list(raw))
    return Case(id, "grpc", (expect,), request)


def raw(id: str, *parts: bytes | float, expect: tuple[int | None, ...], leave: bool = False) -> Case:
    """PARTS written in turn (a float: a pause in seconds); then the whole answer is read up to the
    server closing the connection (which every case here must do), or, with `leave`, the client
    closes at once and the answer is not read (`expect` is then (None,))."""
    return Case(id, "raw", expect, {"parts": parts, "leave": leave})


def multipart(*parts: tuple[str, str | None, bytes]) -> tuple[dict[str, str], bytes]:
    """Headers and body of a multipart/form-data request of (field, filename or None, content)."""
    chunks = []
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        chunks.append(f"--fuzz\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n")
    return {"content-type": "multipart/form-data; boundary=fuzz"}, b"".join(chunks) + b"--fuzz--\r\n"


def form(id: str, multipart: tuple[dict[str, str], bytes], *expect: int) -> Case:
    """A multipart body (headers, bytes) to /predict/digits."""
    return http(id, "/predict/digits", multipart[1], *expect, headers=multipart[0], door="predict")


def png_bomb(width: int, height: int) -> bytes:
    """A ~100-byte PNG declaring width x height grey pixels (a decompression bomb's header and a
    few bytes of its first IDAT chunk: Pillow opens it, decoding it would allocate the lot)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


GOOD = [tensor([1, 4], ROW)]
TOO_BIG = MAX_BODY_BYTES + 1024
BOMB = gzip.compress(b"\0" * (64 * MAX_BODY_BYTES), 9)  # 64 KiB that inflate to 64 MiB
EMPTY_MULTIPART = ({"content-type": "multipart/form-data; boundary=fuzz"}, b"--fuzz--\r\n")
HUGE = 2**63 - 1
POST_INFER = b"POST " + INFER.encode() + b" HTTP/1.1\r\n" + HOST

CASES: list[Case] = [
    # The simple door.
    predict("ok-predict", "tiny", {"input": ROW}, 200),
    predict("predict-empty-object", "tiny", {}, 400),
    predict("predict-empty-inputs", "tiny", {"inputs": []}, 400),
    predict("predict-json-array", "tiny", [1, 2], 400),
    predict("predict-input-and-null", "tiny", {"input": None}, 400),
    http("predict-empty-body", "/predict/tiny", b"", 400, headers=JSON, door="predict"),
    http("predict-invalid-json", "/predict/tiny", b'{"input": ', 400, headers=JSON, door="predict"),
    http("predict-deep-json", "/predict/tiny", b"[" * 100_000, 400, headers=JSON, door="predict"),
    form("predict-empty-multipart", EMPTY_MULTIPART, 400, 415),
    form("predict-multipart-without-file", multipart(("note", None, b"hello")), 400, 415),
    form("predict-multipart-not-an-image", multipart(("file", "x.png", b"not a png")), 400),
    form("predict-multipart-garbage", (EMPTY_MULTIPART[0], b"--fuzz\r\nno headers"), 400),
    predict("predict-not-an-image", "digits", b"hello, not a picture", 400),
    predict("predict-image-over-max-pixels", "digits", png_bomb(10_000, 10_000), 413),
    predict("predict-image-over-pillow-bomb-limit", "digits", png_bomb(100_000, 100_000), 400, 413),
    predict("predict-bad-base64", "digits", {"input": "%%% not base64 %%%"}, 400),
    predict("predict-too-many-examples", "tiny", {"inputs": [ROW] * (MAX_QUEUE_SIZE + 1)}, 413),
    predict("predict-wrong-shape", "tiny", {"input": [1.0, 2.0, 3.0]}, 400),
    predict("predict-ragged", "tiny", {"inputs": [ROW, [1.0]]}, 400),
    predict("predict-strings-into-fp32", "tiny", {"input": ["a", "b", "c", "d"]}, 400),
    predict("predict-1e39-into-fp32", "tiny", {"input": [1e39, 0.0, 0.0, 0.0]}, 400),
    predict("predict-true-into-fp32", "tiny", {"input": [True, 0.0, 0.0, 0.0]}, 400),
    predict("predict-unknown-model", "nope", {"input": ROW}, 404),
    predict("predict-unknown-version", "tiny/versions/7", {"input": ROW}, 404),
    predict("predict-model-raises", "failing", {"input": ROW}, 500, body_has="error id"),
    predict("predict-past-timeout", "slow", {"input": ROW}, 504),
    # OIP JSON.
    infer("ok-infer", GOOD, 200),
    infer("ok-infer-ints-cast-to-fp32", [tensor([1, 4], [1, 2, 3, 4])], 200),
    infer("infer-zero-rows", [tensor([0, 4], [])], 400),
    infer("infer-negative-dim", [tensor([-1, 4], ROW)], 400),
    infer("infer-33-dims", [tensor([1] * 33, [1.0])], 400),
    infer("infer-huge-times-zero", [tensor([HUGE, 0], [])], 400),
    infer("infer-float-dim-1e12", [tensor([1e12], [1.0])], 400),
    infer("infer-int-dim-1e12", [tensor([10**12], [1.0])], 400),
    infer("infer-product-overflows-int64", [tensor([2**32, 2**32], [1.0])], 400),
    infer("infer-dim-over-int64", [tensor([2**64, 4], ROW)], 400),
    infer("infer-1e39-into-fp32", [tensor([1, 4], [1e39, 0.0, 0.0, 0.0])], 400),
    infer("infer-true-into-fp32", [tensor([1, 4], [True, 0.0, 0.0, 0.0])], 400),
    infer("infer-fraction-into-int64", [tensor([1, 4], [1.5, 0, 0, 0], "INT64")], 400),
    infer("infer-strings-into-fp32", [tensor([1, 4], ["a", "b", "c", "d"])], 400),
    infer("infer-unknown-datatype", [tensor([1, 4], ROW, "FP8")], 400),
    infer("infer-wrong-datatype", [tensor([1, 4], [1, 2, 3, 4], "INT64")], 400),
    infer("infer-ragged", [tensor([2, 4], [ROW, [1.0]])], 400),
    infer("infer-too-few-values", [tensor([2, 4], ROW)], 400),
    infer("infer-no-data", [{"name": "input", "shape": [1, 4], "datatype": "FP32"}], 400),
    infer("infer-duplicate-input", [*GOOD, *GOOD], 400),
    infer("infer-unknown-input", [tensor([1, 4], ROW, name="nope")], 400),
    infer("infer-unknown-output", {"inputs": GOOD, "outputs": [{"name": "nope"}]}, 400),
    infer("infer-empty-object", {}, 400),
    infer("infer-empty-inputs", [], 400),
    infer("infer-inputs-not-a-list", {"inputs": "input"}, 400),
    infer("infer-unknown-model", GOOD, 404, model="nope"),
    infer("infer-unknown-version", GOOD, 404, model="tiny/versions/7"),
    infer("infer-model-raises", [tensor([1, 4], ROW, name="x")], 500, model="failing", body_has="error id"),
    infer("infer-past-timeout", [tensor([1, 4], ROW, name="x")], 504, model="slow"),
    http("infer-not-json", INFER, b"\x00\xff not json", 400, headers=JSON),
    http(
        "infer-nan-literal",
        INFER,
        b'{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[NaN,0,0,0]}]}',
        400,
        headers=JSON,
    ),
    http("infer-deep-json", INFER, b'{"inputs":' + b"[" * 100_000, 400, headers=JSON),
    http("infer-gzip-bomb", INFER, BOMB, 413, headers={**JSON, "content-encoding": "gzip"}),
    http(
        "infer-corrupt-gzip",
        INFER,
        b"\x1f\x8b\x08\x00garbage",
        400,
        headers={**JSON, "content-encoding": "gzip"},
    ),
    http(
        "infer-truncated-gzip",
        INFER,
        gzip.compress(b'{"inputs": []}')[:-8],
        400,
        headers={**JSON, "content-encoding": "gzip"},
    ),
    http("infer-brotli", INFER, b"{}", 415, headers={**JSON, "content-encoding": "br"}),
    http("infer-body-over-limit", INFER, b" " * TOO_BIG, 413, headers=JSON),
    http("infer-chunked-body-over-limit", INFER, b" " * TOO_BIG, 413, headers={**JSON, "x-send": "chunked"}),
    # Routes and methods.
    http("get-on-infer", INFER, None, 405, method="GET"),
    http("delete-on-live", "/v2/health/live", None, 405, method="DELETE"),
    http("post-on-metadata", "/v2/models/tiny", b"{}", 405, headers=JSON),
    http("unknown-route", "/v3/nothing", None, 404, method="GET"),
    http("unknown-model-metadata", "/v2/models/nope", None, 404, method="GET"),
    # OIP binary extension.
    binary("ok-binary", [raw_tensor([1, 4], 16)], struct.pack("<4f", *ROW), 200),
    binary("binary-bytes-shape-1e8-in-112-bytes", [raw_tensor([100_000_000], 4, "BYTES")], b"\0" * 4, 400),
    binary("binary-header-length-not-ascii", [raw_tensor([1, 4], 16)], b"\0" * 16, 400, length=b"\xb2"),
    binary("binary-header-length-abc", [raw_tensor([1, 4], 16)], b"\0" * 16, 400, length="abc"),
    binary("binary-header-length-negative", [raw_tensor([1, 4], 16)], b"\0" * 16, 400, length="-1"),
    binary("binary-header-length-past-body", [raw_tensor([1, 4], 16)], b"\0" * 16, 400, length="100000"),
    binary("binary-header-length-cuts-json", [raw_tensor([1, 4], 16)], b"\0" * 16, 400, length="10"),
    binary("binary-size-past-body", [raw_tensor([1, 4], 1_000_000)], b"\0" * 16, 400),
    binary("binary-size-negative", [raw_tensor([1, 4], -16)], b"\0" * 16, 400),
    binary("binary-size-not-an-int", [raw_tensor([1, 4], "16")], b"\0" * 16, 400),
    binary("binary-fp32-short", [raw_tensor([1, 4], 15)], b"\0" * 15, 400),
    binary("binary-bytes-left-over", [raw_tensor([1, 4], 16)], b"\0" * 20, 400),
    binary("binary-zero-rows", [raw_tensor([0, 4], 0)], b"", 400),
    binary("binary-negative-dim", [raw_tensor([-1, 4], 16)], b"\0" * 16, 400),
    binary("binary-huge-times-zero", [raw_tensor([HUGE, 0], 0)], b"", 400),
    binary("binary-dim-1e12", [raw_tensor([10**12, 4], 16)], b"\0" * 16, 400),
    binary(
        "binary-bytes-length-past-end", [raw_tensor([1], 8, "BYTES")], struct.pack("<I", 10**6) + b"abcd", 400
    ),
    # gRPC.
    grpc("ok-grpc", "OK", ([1, 4], "FP32", ROW)),
    grpc("grpc-zero-rows", "INVALID_ARGUMENT", ([0, 4], "FP32", [])),
    grpc("grpc-negative-dim", "INVALID_ARGUMENT", ([-1, 4], "FP32", ROW)),
    grpc("grpc-33-dims", "INVALID_ARGUMENT", ([1] * 33, "FP32", [1.0])),
    grpc("grpc-huge-times-zero", "INVALID_ARGUMENT", ([HUGE, 0], "FP32", [])),
    grpc("grpc-dim-1e12", "INVALID_ARGUMENT", ([10**12], "FP32", [1.0])),
    grpc("grpc-product-overflows-int64", "INVALID_ARGUMENT", ([2**32, 2**32], "FP32", [1.0])),
    grpc("grpc-bytes-shape-1e8-raw", "INVALID_ARGUMENT", ([100_000_000], "BYTES", None), raw=(b"\0" * 4,)),
    grpc("grpc-raw-fp32-short", "INVALID_ARGUMENT", ([1, 4], "FP32", None), raw=(b"\0" * 15,)),
    grpc("grpc-raw-count-mismatch", "INVALID_ARGUMENT", ([1, 4], "FP32", None), raw=(b"\0" * 16,) * 2),
    grpc("grpc-too-few-values", "INVALID_ARGUMENT", ([2, 4], "FP32", ROW)),
    grpc("grpc-unknown-datatype", "INVALID_ARGUMENT", ([1, 4], "FP8", ROW)),
    grpc("grpc-no-inputs", "INVALID_ARGUMENT"),
    grpc("grpc-unknown-model", "NOT_FOUND", ([1, 4], "FP32", ROW), model="nope"),
    grpc("grpc-model-raises", "INTERNAL", ([1, 4], "FP32", ROW), model="failing"),
    grpc("grpc-past-timeout", "DEADLINE_EXCEEDED", ([1, 4], "FP32", ROW), model="slow"),
    # Raw HTTP on a socket.
    raw("raw-headers-never-finished", POST_INFER, expect=(408, None)),
    raw("raw-body-too-slow", POST_INFER + b'Content-Length: 100\r\n\r\n{"inputs"', expect=(408,)),
    raw("raw-request-line-only", b"GET /v2/health/live\r\n", expect=(408, None)),
    raw("raw-content-length-abc", POST_INFER + b"Content-Length: abc\r\n\r\n{}", expect=(400,)),
    raw("raw-content-length-negative", POST_INFER + b"Content-Length: -1\r\n\r\n{}", expect=(400,)),
    raw(
        "raw-content-length-twice",
        POST_INFER + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        expect=(400,),
    ),
    raw(
        "raw-chunked-garbage",
        POST_INFER + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        expect=(400,),
    ),
    raw(
        "raw-chunk-size-overflow",
        POST_INFER + b"Transfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFF\r\nab\r\n",
        expect=(400,),
    ),
    raw(
        "raw-chunked-and-content-length",
        POST_INFER + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        expect=(400,),
    ),
    raw("raw-garbage-request-line", b"GARBAGE\r\n\r\n", expect=(400,)),
    raw("raw-unknown-method", b"BREW /v2/health/live HTTP/1.1\r\n" + HOST + b"\r\n", expect=(400, 405)),
    raw("raw-http2-preface-on-http1", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", expect=(400,)),
    raw("raw-nul-in-path", b"GET /v2/health/\0live HTTP/1.1\r\n" + HOST + b"\r\n", expect=(400, 404)),
    raw(
        "raw-100kib-url",
        b"GET /v2/models/" + b"a" * 100_000 + b" HTTP/1.1\r\n" + HOST + b"\r\n",
        expect=(400, 404, 414),
    ),
    raw(
        "raw-64kib-header",
        b"GET /v2/health/live HTTP/1.1\r\n" + HOST + b"Connection: close\r\n"
        b"X-Big: " + b"a" * 65_536 + b"\r\n\r\n",
        expect=(200, 431),
    ),
    raw(
        "raw-client-leaves-mid-body",
        POST_INFER + b"Content-Length: 100\r\n\r\n{",
        0.2,
        expect=(None,),
        leave=True,
    ),
]
