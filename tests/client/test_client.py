"""modelbay.client against a real server on loopback ports: HTTP (binary and JSON) and gRPC."""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from modelbay import InferenceFailed, InvalidInput, ModelNotFound, Predictor, Unavailable
from modelbay.client import AsyncClient, Client
from modelbay.errors import ModelbayError
from modelbay.server import DEFAULT_MODEL, Server
from modelbay.settings import BatchingConfig, Settings
from modelbay.types import TensorSpec
from tests.conftest import SAMPLES, free_port

URLS = ["http-binary", "http-json", "grpc"]


class Echo(Predictor):
    """BYTES in -> the same BYTES and their lengths; raises on b"boom" (a model failure)."""

    inputs = (TensorSpec("text", "BYTES", (-1,)),)
    outputs = (TensorSpec("same", "BYTES", (-1,)), TensorSpec("length", "INT64", (-1,)))

    def rows(self, item: Any) -> int:
        return len(item)

    def predict(self, batch: list[Any]) -> list[Any]:
        if any(b"boom" in list(item) for item in batch):
            raise RuntimeError("boom")
        return [{"same": item, "length": np.array([len(t) for t in item], np.int64)} for item in batch]


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    settings = Settings.load(
        overrides={"port": 0, "grpc_port": free_port(), "models": [{"path": str(DEFAULT_MODEL)}]}
    )
    server = Server(settings)
    server.add_model("echo", Echo(), batching=BatchingConfig(8))
    server.add_model("half", torch.nn.Identity(), example=torch.zeros(1, 3, dtype=torch.float16))
    server.start()
    yield server
    server.stop()


def client_for(server: Server, kind: str, cls: type = Client) -> Any:
    if kind == "grpc":
        return cls(f"grpc://127.0.0.1:{server.settings.grpc_port}")
    return cls(server.url, binary=kind == "http-binary")


def digit(n: int) -> np.ndarray:
    from PIL import Image

    return (np.asarray(Image.open(SAMPLES / f"{n}.png"), np.float32) / 255)[None, None]


@pytest.mark.parametrize("kind", URLS)
def test_infer_metadata_and_health(server: Server, kind: str) -> None:
    with client_for(server, kind) as client:
        assert client.live() and client.ready() and client.ready("digits") and not client.ready("nope")
        assert client.metadata()["name"] == "modelbay"
        assert client.metadata("digits")["outputs"] == [
            {"name": "logits", "datatype": "FP32", "shape": [-1, 10]}
        ]
        logits = client.infer("digits", np.concatenate([digit(3), digit(8)]))["logits"]
        assert logits.dtype == np.float32 and logits.argmax(1).tolist() == [3, 8]
        out = client.infer("echo", {"text": ["héllo", "ab"]}, outputs=["length"])
        assert list(out) == ["length"] and out["length"].tolist() == [6, 2]
        raw = {"text": np.array([b"\x00\xff", b"x"], dtype=object)}
        if kind == "http-json":  # JSON carries BYTES as text; raw bytes need a binary transport
            with pytest.raises(InvalidInput, match="not UTF-8 text cannot travel as JSON; use binary=True"):
                client.infer("echo", raw)
        else:
            assert client.infer("echo", raw)["same"].tolist() == [b"\x00\xff", b"x"]
        half = client.infer("half", np.array([[0.5, 1, -2]], np.float16))["output"]
        assert half.dtype == np.float16 and half.tolist() == [[0.5, 1.0, -2.0]]


@pytest.mark.parametrize("kind", URLS)
def test_server_errors_come_back_as_modelbay_exceptions(server: Server, kind: str) -> None:
    with client_for(server, kind) as client:
        with pytest.raises(ModelNotFound, match="no model named 'nope'"):
            client.infer("nope", {"x": np.zeros(1, np.float32)})
        with pytest.raises(ModelNotFound, match="has no version '4'"):
            client.metadata("digits", version="4")
        with pytest.raises(InvalidInput, match=r"expected shape \[-1, 1, 8, 8\]"):
            client.infer("digits", np.zeros((1, 64), np.float32))
        with pytest.raises(InvalidInput, match="expected datatype FP32, got FP64"):
            client.infer("digits", np.zeros((1, 1, 8, 8)))
        with pytest.raises(InferenceFailed, match=r"model 'echo' failed \(error id [0-9a-f]{12}"):
            client.infer("echo", {"text": [b"boom"]})


def test_predict_through_the_simple_door(server: Server) -> None:
    with Client(server.url) as client:
        assert client.predict("digits", SAMPLES / "5.png")[0]["label"] == "5"
        assert client.predict("digits", (SAMPLES / "6.png").read_bytes())[0]["label"] == "6"
        # A str travels as {"input": "text"}: the image model reads it as base64 (3 bytes), no image.
        with pytest.raises(InvalidInput, match="could not decode an image from 3 bytes"):
            client.predict("digits", "text")
    with Client(f"grpc://127.0.0.1:{server.settings.grpc_port}") as grpc_client, pytest.raises(ModelbayError):
        grpc_client.predict("digits", b"")


@pytest.mark.anyio
@pytest.mark.parametrize("kind", URLS)
async def test_async_client(server: Server, kind: str) -> None:
    async with client_for(server, kind, AsyncClient) as client:
        assert await client.live() and await client.ready("digits")
        logits = (await client.infer("digits", digit(9)))["logits"]
        assert logits.argmax(1).tolist() == [9]
        with pytest.raises(ModelNotFound):
            await client.metadata("nope")
        if kind != "grpc":
            assert (await client.predict("digits", SAMPLES / "4.png"))[0]["label"] == "4"


def test_unreachable_grpc_server_is_unavailable() -> None:
    with Client(f"grpc://127.0.0.1:{free_port()}", timeout_s=2) as client, pytest.raises(Unavailable):
        client.ready()


def test_cli_predict_prints_labels_and_json(server: Server) -> None:
    command = [str(Path(sys.executable).parent / "modelbay"), "predict", "digits", "--url", server.url]
    files = [str(SAMPLES / "1.png"), str(SAMPLES / "7.png")]
    result = subprocess.run([*command, *files], capture_output=True, text=True, timeout=60)
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and len(lines) == 2
    assert lines[0].startswith(f"{files[0]}: 1 (") and lines[1].startswith(f"{files[1]}: 7 (")
    result = subprocess.run(
        [*command, "--json", files[0], "missing.png"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1 and "missing.png" in result.stderr
    assert '"label": "1"' in result.stdout.splitlines()[0]


def test_cli_predict_stops_quietly_when_its_reader_goes_away(server: Server) -> None:
    command = shlex.join(
        [str(Path(sys.executable).parent / "modelbay"), "predict", "digits", "--url", server.url]
    )
    files = " ".join(shlex.quote(str(SAMPLES / f"{digit}.png")) for digit in range(10))
    result = subprocess.run(
        f"{command} {files} | head -1", shell=True, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.count("\n") == 1 and result.stdout.startswith(str(SAMPLES / "0.png"))
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def repository_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server over an empty model repository, uploads allowed."""
    repository = tmp_path_factory.mktemp("repository")
    server = Server(Settings(port=0, grpc_port=free_port(), model_repository=str(repository)))
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize("kind", ["http-binary", "grpc"])
def test_load_a_model_with_its_files_then_choose_the_default(
    repository_server: Server, tiny_files: dict[str, Path], kind: str
) -> None:
    name = f"tiny-{kind}"
    onnx = tiny_files["onnx"].read_bytes()
    x = np.ones((2, 4), np.float32)
    with client_for(repository_server, kind) as client:
        client.load_model(name, config={"batching": {"max_batch_size": 4}}, files={"1/model.onnx": onnx})
        client.load_model(name, files={"2/model.onnx": onnx})
        rows = [row for row in client.repository_index() if row["name"] == name]
        assert [(row["version"], row["state"]) for row in rows] == [("1", "READY"), ("2", "READY")]
        assert client.infer(name, x)["y"].shape == (2, 3)
        with pytest.raises(InvalidInput, match=f"version 2 of '{name}' exists"):
            client.load_model(name, files={"2/model.onnx": onnx})
        with pytest.raises(InvalidInput, match="is not allowed"):
            client.load_model(name, files={"3/../../escape.onnx": onnx})
        if kind == "grpc":
            with pytest.raises(ModelbayError, match="HTTP route"):
                client.set_default_version(name, "1")
            return
        assert client.set_default_version(name, "1") == "1"
        assert client.metadata(name)["versions"] == ["1", "2"]
        assert client.set_default_version(name, None) == "2"
        with pytest.raises(ModelNotFound):
            client.set_default_version(name, "9")


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["http-json", "grpc"])
async def test_async_client_manages_the_repository(
    repository_server: Server, tiny_files: dict[str, Path], kind: str
) -> None:
    name = f"async-{kind}"
    async with client_for(repository_server, kind, AsyncClient) as client:
        await client.load_model(name, files={"4/model.onnx": tiny_files["onnx"].read_bytes()})
        assert {
            "name": name,
            "version": "4",
            "state": "READY",
            "reason": "",
        } in await client.repository_index()
        assert (await client.infer(name, np.ones((1, 4), np.float32)))["y"].shape == (1, 3)
        if kind != "grpc":
            assert await client.set_default_version(name, "4") == "4"
        await client.unload_model(name)
        assert name not in {row["name"] for row in await client.repository_index(ready=True)}
