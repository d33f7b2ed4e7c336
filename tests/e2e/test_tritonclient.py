"""Conformance: Triton's own Python clients (HTTP JSON, HTTP binary, gRPC) against `modelbay serve`."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc as grpclib
import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.conftest import free_port, modelbay_serve

MODELBAY = str(Path(sys.executable).parent / "modelbay")

WORDS_HANDLER = '''
import numpy as np
from modelbay import Predictor


class Words(Predictor):
    """BYTES sentences in; each upper-cased (BYTES) and its length (INT64) out."""

    def rows(self, item):
        return len(item)

    def preprocess(self, example):
        return np.asarray(example, dtype=object).reshape(-1)

    def predict(self, batch):
        return [
            {"upper": np.array([bytes(t).upper() for t in item], dtype=object),
             "length": np.array([len(t) for t in item], dtype=np.int64)}
            for item in batch
        ]
'''
WORDS_MANIFEST = """
inputs: [{name: text, datatype: BYTES, shape: [-1]}]
outputs: [{name: upper, datatype: BYTES, shape: [-1]}, {name: length, datatype: INT64, shape: [-1]}]
"""


class Scale(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 3


def export(path: Path, dtype: torch.dtype) -> None:
    example = (torch.ones(2, 4, dtype=dtype),)
    program = torch.export.export(Scale(), example, dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, path)


# "spare" is the model the repository test unloads and loads again; the others keep serving.
NUMERIC = {"fp32": torch.float32, "fp16": torch.float16, "int64": torch.int64, "spare": torch.float32}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """`modelbay serve` over a repository with FP32 (two), FP16, INT64 and BYTES models: (http, grpc)
    addresses."""
    repository = tmp_path_factory.mktemp("repository")
    for name, dtype in NUMERIC.items():
        (repository / name / "1").mkdir(parents=True)
        export(repository / name / "1" / "model.pt2", dtype)
    (repository / "words").mkdir()
    (repository / "words" / "predict.py").write_text(WORDS_HANDLER)
    (repository / "words" / "modelbay.yaml").write_text(WORDS_MANIFEST)
    grpc_port = free_port()
    with modelbay_serve(str(repository), "--grpc-port", str(grpc_port)) as url:
        yield url.removeprefix("http://"), f"127.0.0.1:{grpc_port}"


@pytest.fixture(scope="module")
def http(servers: tuple[str, str]) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(servers[0])
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc(servers: tuple[str, str]) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(servers[1])
    yield client
    client.close()


def test_health_and_metadata_over_http_and_grpc(http: Any, grpc: Any) -> None:
    for client in (http, grpc):
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("fp16") and client.is_model_ready("fp16", "1")
        assert not client.is_model_ready("fp16", "7")
    assert http.get_server_metadata()["name"] == "modelbay"
    assert grpc.get_server_metadata(as_json=True)["name"] == "modelbay"
    expected = {"name": "x", "datatype": "FP16", "shape": ["-1", "4"]}
    assert grpc.get_model_metadata("fp16", as_json=True)["inputs"] == [expected]
    assert http.get_model_metadata("fp16")["inputs"] == [{**expected, "shape": [-1, 4]}]
    assert http.get_model_metadata("words")["outputs"][0] == {
        "name": "upper",
        "datatype": "BYTES",
        "shape": [-1],
    }


CASES = [("fp32", "FP32", np.float32), ("fp16", "FP16", np.float16), ("int64", "INT64", np.int64)]


@pytest.mark.parametrize(("model", "datatype", "dtype"), CASES)
@pytest.mark.parametrize("transport", ["http-json", "http-binary", "grpc"])
def test_numeric_infer(http: Any, grpc: Any, transport: str, model: str, datatype: str, dtype: type) -> None:
    x = np.arange(-4, 8, dtype=dtype).reshape(3, 4)
    module = grpcclient if transport == "grpc" else httpclient
    client = grpc if transport == "grpc" else http
    tensor = module.InferInput("x", list(x.shape), datatype)
    if transport == "grpc":
        tensor.set_data_from_numpy(x)
        outputs = [module.InferRequestedOutput("output")]
    else:
        binary = transport == "http-binary"
        tensor.set_data_from_numpy(x, binary_data=binary)
        outputs = [module.InferRequestedOutput("output", binary_data=binary)]
    result = client.infer(model, [tensor], outputs=outputs, request_id="42")
    y = result.as_numpy("output")
    assert y.dtype == dtype and y.shape == (3, 4)
    np.testing.assert_array_equal(y, x * 3)
    response = result.get_response()
    assert (response.id if transport == "grpc" else response["id"]) == "42"


@pytest.mark.parametrize("transport", ["http-json", "http-binary", "grpc"])
def test_bytes_infer(http: Any, grpc: Any, transport: str) -> None:
    text = np.array([b"hello", "wörld".encode(), b""], dtype=np.object_)
    if transport == "grpc":
        tensor = grpcclient.InferInput("text", [3], "BYTES")
        tensor.set_data_from_numpy(text)
        result = grpc.infer("words", [tensor])
    else:
        tensor = httpclient.InferInput("text", [3], "BYTES")
        tensor.set_data_from_numpy(text, binary_data=transport == "http-binary")
        outputs = [
            httpclient.InferRequestedOutput(n, binary_data=transport == "http-binary")
            for n in ("upper", "length")
        ]
        result = http.infer("words", [tensor], outputs=outputs)
    upper = [v if isinstance(v, bytes) else v.encode() for v in result.as_numpy("upper")]
    assert upper == [b"HELLO", "WöRLD".encode(), b""]
    assert result.as_numpy("length").tolist() == [5, 6, 0]


def infer_error(
    client: Any, module: Any, model: str, shape: list[int], datatype: str, data: np.ndarray
) -> str:
    tensor = module.InferInput("x", shape, datatype)
    with contextlib.suppress(InferenceServerException):
        tensor.set_data_from_numpy(data)
    with pytest.raises(InferenceServerException) as err:
        client.infer(model, [tensor])
    return f"{err.value.status()} {err.value.message()}"


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_errors_reach_the_client_with_status_and_message(http: Any, grpc: Any, transport: str) -> None:
    client, module = (grpc, grpcclient) if transport == "grpc" else (http, httpclient)
    codes = {"http": ("404", "400"), "grpc": ("StatusCode.NOT_FOUND", "StatusCode.INVALID_ARGUMENT")}[
        transport
    ]
    message = infer_error(client, module, "nope", [1, 4], "FP32", np.ones((1, 4), np.float32))
    assert message.startswith(codes[0]) and "no model named 'nope'" in message
    message = infer_error(client, module, "fp32", [1, 5], "FP32", np.ones((1, 5), np.float32))
    assert message.startswith(codes[1]) and "expected shape [-1, 4] (-1 is any size), got [1, 5]" in message
    message = infer_error(client, module, "fp32", [1, 4], "FP64", np.ones((1, 4), np.float64))
    assert message.startswith(codes[1]) and "expected datatype FP32, got FP64" in message
    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata("nope")
    assert "no model named 'nope'" in err.value.message()


@pytest.fixture(scope="module")
def triton_stub(servers: tuple[str, str]) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    """Triton's own generated stub: for what tritonclient does not expose (the index's `ready`)."""
    with grpclib.insecure_channel(servers[1]) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def grpc_index(stub: Any, ready: bool = False) -> dict[str, tuple[str, str]]:
    """The repository index: model name -> (version, state)."""
    response = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=ready))
    return {m.name: (m.version, m.state) for m in response.models}


def grpc_scale(client: Any, model: str) -> np.ndarray:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    tensor = grpcclient.InferInput("x", [2, 4], "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer(model, [tensor]).as_numpy("output")


def test_model_repository_index_unload_and_load_over_grpc(grpc: Any, triton_stub: Any) -> None:
    served = {"fp32", "fp16", "int64", "spare", "words"}
    index = grpc.get_model_repository_index(as_json=True)["models"]
    assert {(m["name"], m["version"], m["state"]) for m in index} == {(n, "1", "READY") for n in served}
    assert grpc_index(triton_stub, ready=True) == {n: ("1", "READY") for n in served}

    grpc.unload_model("spare")
    try:
        assert grpc_index(triton_stub)["spare"] == ("1", "UNAVAILABLE")
        assert "spare" not in grpc_index(triton_stub, ready=True)
        assert not grpc.is_model_ready("spare")
        with pytest.raises(InferenceServerException) as err:
            grpc_scale(grpc, "spare")
        assert err.value.status() in ("StatusCode.NOT_FOUND", "StatusCode.UNAVAILABLE")
        assert "spare" in err.value.message()
        np.testing.assert_array_equal(grpc_scale(grpc, "fp32"), np.arange(8).reshape(2, 4) * 3)
    finally:
        grpc.load_model("spare")
    assert grpc_index(triton_stub)["spare"] == ("1", "READY")
    assert grpc.is_model_ready("spare")
    np.testing.assert_array_equal(grpc_scale(grpc, "spare"), np.arange(8).reshape(2, 4) * 3)

    with pytest.raises(InferenceServerException) as err:
        grpc.load_model("nope")
    assert err.value.status() == "StatusCode.NOT_FOUND" and "nope" in err.value.message()
    assert grpc_index(triton_stub, ready=True) == {n: ("1", "READY") for n in served}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`modelbay serve --model-repository` over an empty folder: tritonclient's HTTP and gRPC
    clients of it, by transport name."""
    repository = tmp_path_factory.mktemp("live")
    grpc_port = free_port()
    with modelbay_serve("--model-repository", str(repository), "--grpc-port", str(grpc_port)) as url:
        clients = {
            "http": httpclient.InferenceServerClient(url.removeprefix("http://")),
            "grpc": grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}"),
        }
        yield clients
        for client in clients.values():
            client.close()


def index_of(client: Any, name: str) -> list[tuple[str, str]]:
    """(version, state) of each version of `name` in tritonclient's repository index."""
    rows = client.get_model_repository_index()
    if not isinstance(rows, list):  # gRPC: a RepositoryIndexResponse
        rows = [{"name": m.name, "version": m.version, "state": m.state} for m in rows.models]
    return [(row["version"], row["state"]) for row in rows if row["name"] == name]


def onnx_infer(client: Any, module: Any, name: str, x: np.ndarray, version: str = "") -> np.ndarray:
    tensor = module.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return np.asarray(client.infer(name, [tensor], model_version=version).as_numpy("y"))


def refusal(call: Any) -> str:
    with pytest.raises(InferenceServerException) as err:
        call()
    return f"{err.value.status()} {err.value.message()}"


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_tritonclient_uploads_a_model_loads_and_unloads_it(
    live: dict[str, Any], tiny_files: dict[str, Path], tiny: torch.nn.Module, transport: str
) -> None:
    client, module = live[transport], grpcclient if transport == "grpc" else httpclient
    name = f"uploaded-{transport}"
    onnx = tiny_files["onnx"].read_bytes()
    config = json.dumps({"batching": {"max_batch_size": 4, "max_queue_delay_ms": 1}})
    x = np.arange(8, dtype=np.float32).reshape(2, 4) / 8
    expected = tiny(torch.from_numpy(x)).detach().numpy()

    client.load_model(name, config=config, files={"file:1/model.onnx": onnx})
    assert index_of(client, name) == [("1", "READY")]
    assert client.is_model_ready(name, "1")
    np.testing.assert_allclose(onnx_infer(client, module, name, x), expected, atol=1e-5)

    client.load_model(name, config=config, files={"file:2/model.onnx": onnx})
    assert index_of(client, name) == [("1", "READY"), ("2", "READY")]
    np.testing.assert_allclose(onnx_infer(client, module, name, x, "2"), expected, atol=1e-5)

    client.unload_model(name)
    assert index_of(client, name) == [("1", "UNAVAILABLE"), ("2", "UNAVAILABLE")]
    assert not client.is_model_ready(name)
    client.load_model(name)  # plain: the versions on disk, read again
    assert index_of(client, name) == [("1", "READY"), ("2", "READY")]
    np.testing.assert_allclose(onnx_infer(client, module, name, x, "1"), expected, atol=1e-5)

    codes = {"http": "400", "grpc": "StatusCode.INVALID_ARGUMENT"}
    message = refusal(lambda: client.load_model(name, files={"file:2/model.onnx": onnx}))
    assert message.startswith(codes[transport])
    assert f"version 2 of '{name}' exists; versions are immutable: deploy a new version" in message
    message = refusal(lambda: client.load_model(name, files={"file:3/../../../escape": b"x"}))
    assert message.startswith(codes[transport]) and "is not allowed" in message
    message = refusal(lambda: client.load_model(name, config="[]", files={"file:3/model.onnx": onnx}))
    assert message.startswith(codes[transport]) and "must be a JSON object" in message
    assert index_of(client, name) == [("1", "READY"), ("2", "READY")]


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`modelbay serve --auth` of the FP32 model, with a key made by `modelbay keys create`:
    {"http": address, "grpc": address, "key": the key}."""
    folder = tmp_path_factory.mktemp("guarded")
    export(folder / "scale.pt2", torch.float32)
    keys = folder / "keys.yaml"
    made = subprocess.run(
        [MODELBAY, "keys", "create", "--scope", "infer", "--name", "triton", "--file", str(keys)],
        capture_output=True,
        text=True,
        check=True,
    )
    grpc_port = free_port()
    with modelbay_serve(str(folder / "scale.pt2"), "--auth", str(keys), "--grpc-port", str(grpc_port)) as url:
        yield {
            "http": url.removeprefix("http://"),
            "grpc": f"127.0.0.1:{grpc_port}",
            "key": made.stdout.strip(),
        }


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_tritonclient_with_a_key_infers_and_without_one_gets_401(
    guarded: dict[str, Any], transport: str
) -> None:
    module = grpcclient if transport == "grpc" else httpclient
    client = module.InferenceServerClient(guarded[transport])
    # gRPC metadata keys are lower-case (grpcio refuses others); HTTP header names are any case.
    name = "authorization" if transport == "grpc" else "Authorization"
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    tensor = module.InferInput("x", [2, 4], "FP32")
    tensor.set_data_from_numpy(x)
    try:
        assert client.is_server_live() and client.is_server_ready()  # health stays open
        for headers in ({name: f"Bearer {guarded['key']}"}, {"x-api-key": guarded["key"]}):
            assert client.is_model_ready("scale", headers=headers)
            result = client.infer("scale", [tensor], headers=headers)
            np.testing.assert_array_equal(result.as_numpy("output"), x * 3)
        unauthenticated = {"http": "401", "grpc": "StatusCode.UNAUTHENTICATED"}[transport]
        for sent in (None, {name: "Bearer mb_not-a-key"}):
            message = refusal(lambda sent=sent: client.infer("scale", [tensor], headers=sent))
            assert message.startswith(unauthenticated) and "mb_not-a-key" not in message
        message = refusal(
            lambda: client.get_model_repository_index(headers={name: f"Bearer {guarded['key']}"})
        )
        assert message.startswith({"http": "403", "grpc": "StatusCode.PERMISSION_DENIED"}[transport])
        assert "needs the admin scope" in message
    finally:
        client.close()
