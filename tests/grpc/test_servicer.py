"""The OIP gRPC door on a real loopback port, driven by a real gRPC channel."""

from __future__ import annotations

import ipaddress
import json
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch

from modelbay import Predictor
from modelbay.codecs import oip_grpc
from modelbay.grpc.generated import grpc_predict_v2_pb2 as pb
from modelbay.grpc.generated import grpc_predict_v2_pb2_grpc as pb_grpc
from modelbay.grpc.servicer import is_loopback
from modelbay.server import Server
from modelbay.settings import BatchingConfig, Settings
from modelbay.types import InferenceResponse, TensorSpec
from tests.conftest import free_port

LIMIT = 64 * 1024


class Affine(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 + 1


class Words(Predictor):
    """BYTES in, BYTES (upper-cased) and INT64 (lengths) out, per element."""

    inputs = (TensorSpec("text", "BYTES", (-1,)),)
    outputs = (TensorSpec("upper", "BYTES", (-1,)), TensorSpec("length", "INT64", (-1,)))

    def rows(self, item: Any) -> int:
        return len(item)

    def predict(self, batch: list[Any]) -> list[Any]:
        return [
            {
                "upper": np.array([t.upper() for t in item], dtype=object),
                "length": np.array([len(t) for t in item], dtype=np.int64),
            }
            for item in batch
        ]


@pytest.fixture(scope="module")
def stub() -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    server = Server(Settings(port=0, grpc_port=free_port(), max_body_bytes=LIMIT))
    server.add_model("affine", Affine(), example=torch.zeros(1, 3))
    server.add_model("half", Affine(), example=torch.zeros(1, 2, dtype=torch.float16))
    server.add_model("ints", Affine(), example=torch.zeros(1, 2, dtype=torch.int64))
    server.add_model("words", Words(), batching=BatchingConfig(16))
    server.start()
    channel = grpc.insecure_channel(
        f"127.0.0.1:{server.settings.grpc_port}", options=[("grpc.max_send_message_length", 8 * LIMIT)]
    )
    try:
        yield pb_grpc.GRPCInferenceServiceStub(channel)
    finally:
        channel.close()
        server.stop()


def infer(
    stub: pb_grpc.GRPCInferenceServiceStub, model: str, *tensors: dict, raw: list[bytes] | None = None
) -> Any:
    request = pb.ModelInferRequest(model_name=model, id="r1")
    for tensor in tensors:
        contents = tensor.pop("contents", None)
        added = request.inputs.add(**tensor)
        if contents:
            added.contents.CopyFrom(pb.InferTensorContents(**contents))
    request.raw_input_contents.extend(raw or [])
    return stub.ModelInfer(request)


def test_health_and_metadata(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="affine", version="1")).ready
    assert stub.ServerMetadata(pb.ServerMetadataRequest()).name == "modelbay"
    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="words"))
    assert (metadata.name, list(metadata.versions), metadata.platform) == ("words", ["1"], "python")
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("text", "BYTES", [-1])]
    assert [t.name for t in metadata.outputs] == ["upper", "length"]


def test_typed_contents_and_raw_output(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    reply = infer(
        stub,
        "affine",
        {"name": "x", "datatype": "FP32", "shape": [2, 3], "contents": {"fp32_contents": range(6)}},
    )
    assert (reply.model_name, reply.model_version, reply.id) == ("affine", "1", "r1")
    (output,) = reply.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("output", "FP32", [2, 3])
    np.testing.assert_array_equal(np.frombuffer(reply.raw_output_contents[0], "<f4"), np.arange(6) * 2 + 1)


def test_raw_contents_fp16_and_int64(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    half = np.array([[0.5, -1.0]], np.float16)
    reply = infer(stub, "half", {"name": "x", "datatype": "FP16", "shape": [1, 2]}, raw=[half.tobytes()])
    np.testing.assert_array_equal(np.frombuffer(reply.raw_output_contents[0], "<f2"), [2.0, -1.0])
    reply = infer(
        stub,
        "ints",
        {"name": "x", "datatype": "INT64", "shape": [1, 2], "contents": {"int64_contents": [4, -7]}},
    )
    assert np.frombuffer(reply.raw_output_contents[0], "<i8").tolist() == [9, -13]


def test_bytes_tensors_typed_and_raw(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    reply = infer(
        stub,
        "words",
        {"name": "text", "datatype": "BYTES", "shape": [2], "contents": {"bytes_contents": [b"ab", b"xyz"]}},
    )
    upper, length = reply.raw_output_contents
    assert upper == struct.pack("<I", 2) + b"AB" + struct.pack("<I", 3) + b"XYZ"
    assert np.frombuffer(length, "<i8").tolist() == [2, 3]
    raw = struct.pack("<I", 5) + b"hello"
    reply = infer(stub, "words", {"name": "text", "datatype": "BYTES", "shape": [1]}, raw=[raw])
    assert reply.raw_output_contents[0] == struct.pack("<I", 5) + b"HELLO"


BAD = [
    (
        "nope",
        [{"name": "x", "datatype": "FP32", "shape": [1, 3], "contents": {"fp32_contents": [1, 2, 3]}}],
        None,
        grpc.StatusCode.NOT_FOUND,
        "no model named 'nope'",
    ),
    (
        "affine",
        [{"name": "x", "datatype": "FP32", "shape": [1, 4], "contents": {"fp32_contents": [1, 2, 3, 4]}}],
        None,
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'x': expected shape [-1, 3] (-1 is any size), got [1, 4]",
    ),
    (
        "affine",
        [{"name": "x", "datatype": "FP64", "shape": [1, 3], "contents": {"fp64_contents": [1, 2, 3]}}],
        None,
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'x': expected datatype FP32, got FP64",
    ),
    (
        "affine",
        [{"name": "x", "datatype": "FP32", "shape": [1, 3], "contents": {"fp32_contents": [1, 2]}}],
        None,
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'x': shape [1, 3] needs 3 elements, contents has 2",
    ),
    (
        "affine",
        [{"name": "x", "datatype": "FP32", "shape": [1, 3], "contents": {"int64_contents": [1, 2, 3]}}],
        None,
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'x': datatype FP32 takes fp32_contents, but int64_contents is set",
    ),
    (
        "affine",
        [{"name": "x", "datatype": "FLOAT", "shape": [1, 3]}],
        None,
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown datatype 'FLOAT'",
    ),
    (
        "half",
        [{"name": "x", "datatype": "FP16", "shape": [1, 2]}],
        None,
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'x': FP16 has no typed contents field; send it in raw_input_contents",
    ),
    (
        "half",
        [{"name": "x", "datatype": "FP16", "shape": [1, 2]}],
        [b"\x00" * 3],
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'x': FP16 shape [1, 2] needs 4 bytes of raw data, got 3",
    ),
    (
        "half",
        [{"name": "x", "datatype": "FP16", "shape": [1, 2]}],
        [b"\x00" * 4, b"\x00" * 4],
        grpc.StatusCode.INVALID_ARGUMENT,
        "2 raw_input_contents entries for 1 inputs; send one per input",
    ),
    (
        "ints",
        [{"name": "x", "datatype": "INT8", "shape": [1, 2], "contents": {"int_contents": [1, 300]}}],
        None,
        grpc.StatusCode.INVALID_ARGUMENT,
        "values from 1 to 300 do not fit INT8",
    ),
    (
        "affine",
        [{"name": "x", "datatype": "FP32", "shape": [1, 3]}],
        [b"\x00" * (LIMIT + 12)],
        grpc.StatusCode.INVALID_ARGUMENT,
        f"bytes is over the limit of {LIMIT} bytes",
    ),
    (
        "affine",
        [{"name": "x", "datatype": "FP32", "shape": [1, 3]}],
        [b"\x00" * (3 * LIMIT)],
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "Received message larger than max",
    ),
    (  # issue 9: a zero-row request was queued and never answered
        "affine",
        [{"name": "x", "datatype": "FP32", "shape": [0, 3]}],
        [b""],
        grpc.StatusCode.INVALID_ARGUMENT,
        "request has 0 rows; model 'affine' takes 1 to",
    ),
    (  # issue 9: shape arithmetic alone used to break numpy (500)
        "affine",
        [{"name": "x", "datatype": "FP32", "shape": [9223372036854775807, 0]}],
        [b""],
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'x': shape [9223372036854775807, 0] has more than",
    ),
    (
        "words",
        [{"name": "text", "datatype": "BYTES", "shape": [100_000_000]}],
        [struct.pack("<I", 1) + b"a"],
        grpc.StatusCode.INVALID_ARGUMENT,
        "BYTES shape [100000000] has 100000000 elements, which need at least 400000000 bytes",
    ),
]


@pytest.mark.parametrize(("model", "tensors", "raw", "code", "message"), BAD)
def test_bad_requests_get_the_right_code_and_say_what_was_wrong(
    stub: pb_grpc.GRPCInferenceServiceStub,
    model: str,
    tensors: list,
    raw: list | None,
    code: grpc.StatusCode,
    message: str,
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        infer(stub, model, *[dict(t) for t in tensors], raw=raw)
    assert err.value.code() == code
    assert message in err.value.details()
    # The server keeps serving.
    assert stub.ModelReady(pb.ModelReadyRequest(name="affine")).ready


class Hangs(Predictor):
    """Never answers until `gate` is set."""

    def __init__(self) -> None:
        self.gate = threading.Event()

    def predict(self, batch: list[Any]) -> list[Any]:
        self.gate.wait(30)
        return batch


def test_a_client_deadline_and_the_model_timeout_both_end_a_grpc_call() -> None:
    hangs = Hangs()
    server = Server(Settings(port=0, grpc_port=free_port()))
    server.add_model("hangs", hangs, batching=BatchingConfig(1, 0.0, 2), timeout_s=0.5)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.settings.grpc_port}")
    try:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="hangs")
        request.inputs.add(name="x", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"a")
        for _ in range(4):  # more than max_queue_size: each leaves the queue when it ends
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelInfer(request)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "model 'hangs' did not answer within the request's deadline" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(request, timeout=0.2)  # the client's own deadline, shorter than timeout_s
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The server ends the call at the same deadline, give or take the trip: it leaves the queue.
        batcher = server.registry.get("hangs").batcher
        waited = threading.Event()
        for _ in range(100):
            if batcher.queue_depth == 0:
                break
            waited.wait(0.02)
        assert batcher.queue_depth == 0
    finally:
        hangs.gate.set()
        channel.close()
        server.stop()


def test_unknown_model_is_not_ready_and_has_no_metadata(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    assert not stub.ModelReady(pb.ModelReadyRequest(name="nope")).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name="affine", version="9")).ready
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelMetadata(pb.ModelMetadataRequest(name="affine", version="9"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "model 'affine' has no version '9'; versions: ['1']"


def test_response_parameters_travel_as_infer_parameters() -> None:
    # how a default output is flagged on gRPC (`batching.default_output`)
    outputs = {"y": np.zeros((1, 2), np.float32)}
    response = InferenceResponse("m", "1", outputs, None, {"default_output": True})
    message = oip_grpc.encode_response(response)
    assert message.parameters["default_output"].WhichOneof("parameter_choice") == "bool_param"
    assert message.parameters["default_output"].bool_param is True


PEERS = [
    ("ipv4:127.0.0.1:3", True),
    ("ipv4:127.0.0.9:3", True),
    ("ipv6:[::1]:2", True),
    ("ipv6:%5B::1%5D:2", True),  # how grpcio 1.85 writes it
    ("ipv6:%5B::ffff:127.0.0.1%5D:4", True),  # an IPv4 client of a dual-stack socket
    ("ipv4:10.0.0.5:1", False),
    ("ipv6:%5B2001:db8::1%5D:5", False),
    ("ipv6:%5B::ffff:10.0.0.5%5D:4", False),
    ("unix:/tmp/x", False),
    ("ipv4:localhost:3", False),
    ("", False),
]


@pytest.mark.parametrize(("peer", "loopback"), PEERS)
def test_only_loopback_peers_may_manage_the_repository(peer: str, loopback: bool) -> None:
    assert is_loopback(peer) is loopback


def outward_address() -> str | None:
    """This machine's IPv4 address on its default route, or None when it has none but loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # a UDP connect picks the route and sends nothing
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if ipaddress.ip_address(address).is_loopback else address


def test_a_client_off_loopback_is_refused_the_repository_api_but_may_infer() -> None:
    address = outward_address()
    if address is None:
        pytest.skip("this machine has no address but loopback")
    server = Server(Settings(host=address, port=0, grpc_port=free_port()))
    server.add_model("affine", Affine(), example=torch.zeros(1, 3))
    server.start()
    channel = grpc.insecure_channel(f"{address}:{server.settings.grpc_port}")
    try:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        calls = [
            (stub.RepositoryIndex, pb.RepositoryIndexRequest()),
            (stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name="affine")),
            (stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name="affine")),
        ]
        for method, request in calls:
            with pytest.raises(grpc.RpcError) as err:
                method(request)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert err.value.details() == (
                "the model repository API answers only loopback clients on a server without API keys "
                "(modelbay serve --auth)"
            )
        x = {"name": "x", "datatype": "FP32", "shape": [1, 3], "contents": {"fp32_contents": [1, 2, 3]}}
        reply = infer(stub, "affine", x)
        assert np.frombuffer(reply.raw_output_contents[0], "<f4").tolist() == [3, 5, 7]
        assert stub.ModelReady(pb.ModelReadyRequest(name="affine")).ready
    finally:
        channel.close()
        server.stop()


def test_a_repository_name_is_not_found(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    calls = [
        (stub.RepositoryIndex, pb.RepositoryIndexRequest(repository_name="other")),
        (
            stub.RepositoryModelLoad,
            pb.RepositoryModelLoadRequest(repository_name="other", model_name="affine"),
        ),
        (
            stub.RepositoryModelUnload,
            pb.RepositoryModelUnloadRequest(repository_name="other", model_name="affine"),
        ),
    ]
    for method, request in calls:
        with pytest.raises(grpc.RpcError) as err:
            method(request)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert err.value.details() == "modelbay has one repository; leave repository_name empty"


P = pb.ModelRepositoryParameter


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        (
            {"file:1/model.pt2": P(bytes_param=b"x"), "config": P(string_param="{}")},
            "this server has no model repository to write an uploaded model into",
        ),
        ({"config": P(bool_param=True)}, "parameter config must be a JSON object as a string, got bool"),
        ({"config": P()}, "parameter config must be a JSON object as a string, got NoneType"),
        ({"config": P(string_param="[]")}, "must be a JSON object of modelbay.yaml fields, got list"),
        ({"file:1/model.pt2": P(int64_param=3)}, "must be the file's content in base64, got int"),
        ({"file:1/model.pt2": P(string_param="x y")}, "is not valid base64"),
        ({"file:1/../model.pt2": P(bytes_param=b"x")}, "is not allowed"),
        ({"file:model.pt2": P(bytes_param=b"x")}, "must be <version>/<file>"),
        ({"poll": P(bool_param=True)}, "unknown load parameter 'poll'"),
    ],
)
def test_load_parameters_are_read_as_on_rest(
    stub: pb_grpc.GRPCInferenceServiceStub, parameters: dict, message: str
) -> None:
    request = pb.RepositoryModelLoadRequest(model_name="affine", parameters=parameters)
    with pytest.raises(grpc.RpcError) as err:
        stub.RepositoryModelLoad(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()
    assert stub.ModelReady(pb.ModelReadyRequest(name="affine")).ready


def test_a_load_message_over_max_body_bytes_is_refused(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    request = pb.RepositoryModelLoadRequest(
        model_name="affine", parameters={"file:2/model.pt2": P(bytes_param=b"x" * (LIMIT + 1))}
    )
    with pytest.raises(grpc.RpcError) as err:
        stub.RepositoryModelLoad(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == (
        f"load message of {request.ByteSize()} bytes is over the gRPC limit of {LIMIT} bytes "
        "(--max-body-bytes); send larger models over REST (--max-upload-bytes)"
    )


def test_a_model_uploaded_over_grpc_serves(tmp_path: Path, tiny_files: dict[str, Path]) -> None:
    """config as string_param and file:<path> as bytes_param, as tritonclient.grpc sends them."""
    (tmp_path / "repository").mkdir()
    settings = Settings(port=0, grpc_port=free_port(), model_repository=str(tmp_path / "repository"))
    server = Server(settings)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{settings.grpc_port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            parameters = {
                "config": P(string_param=json.dumps({"batching": {"max_batch_size": 4}})),
                "file:3/model.onnx": P(bytes_param=tiny_files["onnx"].read_bytes()),
            }
            stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="tiny", parameters=parameters))
            index = stub.RepositoryIndex(pb.RepositoryIndexRequest())
            assert [(m.name, m.version, m.state) for m in index.models] == [("tiny", "3", "READY")]
            x = {"name": "x", "datatype": "FP32", "shape": [1, 4], "contents": {"fp32_contents": [1] * 4}}
            reply = infer(stub, "tiny", x)
            assert (reply.model_version, list(reply.outputs[0].shape)) == ("3", [1, 3])
            again = pb.RepositoryModelLoadRequest(model_name="tiny", parameters=parameters)
            with pytest.raises(grpc.RpcError) as err:
                stub.RepositoryModelLoad(again)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "version 3 of 'tiny' exists" in err.value.details()
    finally:
        server.stop()


def test_the_repository_index_and_an_unknown_model(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    for ready in (False, True):
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=ready))
        rows = [(m.name, m.version, m.state, m.reason) for m in index.models]
        assert rows == [(name, "1", "READY", "") for name in ("affine", "half", "ints", "words")]
    with pytest.raises(grpc.RpcError) as err:
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "nope" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "nope" in err.value.details()
