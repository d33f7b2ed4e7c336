"""The HTTP API in-process (httpx over ASGI): every door, OIP v2 REST, and the error table."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from modelbay.errors import Overloaded
from modelbay.http.errors import error_response
from modelbay.server import DEFAULT_MODEL, Server
from modelbay.settings import BatchingConfig, Settings
from tests.conftest import SAMPLES, asgi_client

pytestmark = pytest.mark.anyio


@pytest.fixture
async def digits() -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings.load(overrides={"max_body_bytes": 20_000, "models": [{"path": str(DEFAULT_MODEL)}]})
    async with asgi_client(Server(settings)) as client:
        yield client


def sample(digit: int) -> bytes:
    return (SAMPLES / f"{digit}.png").read_bytes()


async def test_raw_image_body_gets_the_right_digit(digits: httpx.AsyncClient) -> None:
    for digit in range(10):
        response = await digits.post("/predict/digits", content=sample(digit))
        assert response.status_code == 200
        body = response.json()
        assert (body["model"], body["version"]) == ("digits", "1")
        assert body["predictions"][0]["label"] == str(digit)
        assert len(body["predictions"]) == 3
        assert body["predictions"][0]["score"] > 0.5


async def test_multipart_upload_and_base64_json(digits: httpx.AsyncClient) -> None:
    response = await digits.post("/predict/digits", files={"file": ("4.png", sample(4), "image/png")})
    assert response.json()["predictions"][0]["label"] == "4"
    encoded = base64.b64encode(sample(6)).decode()
    response = await digits.post("/predict/digits", json={"input": encoded})
    assert response.json()["predictions"][0]["label"] == "6"
    response = await digits.post(
        "/predict/digits", json={"inputs": [encoded, base64.b64encode(sample(2)).decode()]}
    )
    assert [p[0]["label"] for p in response.json()["predictions"]] == ["6", "2"]
    response = await digits.post(
        "/predict/digits",
        files=[("a", ("1.png", sample(1), "image/png")), ("b", ("8.png", sample(8), "image/png"))],
    )
    assert [p[0]["label"] for p in response.json()["predictions"]] == ["1", "8"]


async def test_oip_health_and_metadata(digits: httpx.AsyncClient) -> None:
    assert (await digits.get("/v2/health/live")).status_code == 200
    assert (await digits.get("/v2/health/ready")).status_code == 200
    assert (await digits.get("/v2/models/digits/ready")).status_code == 200
    assert (await digits.get("/v2/models/digits/versions/1/ready")).status_code == 200
    server = (await digits.get("/v2")).json()
    assert server["name"] == "modelbay" and server["extensions"] == ["binary_tensor_data", "model_repository"]
    metadata = (await digits.get("/v2/models/digits")).json()
    assert metadata == {
        "name": "digits",
        "versions": ["1"],
        "platform": "pytorch_exported",
        "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 8, 8]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
    }


async def test_oip_infer_returns_logits_for_every_row(digits: httpx.AsyncClient) -> None:
    from PIL import Image

    pixels = [np.asarray(Image.open(SAMPLES / f"{d}.png"), np.float32) / 255 for d in (3, 5)]
    request = {
        "id": "abc",
        "inputs": [
            {"name": "image", "shape": [2, 1, 8, 8], "datatype": "FP32", "data": np.stack(pixels).tolist()}
        ],
        "outputs": [{"name": "logits"}],
    }
    response = await digits.post("/v2/models/digits/versions/1/infer", json=request)
    assert response.status_code == 200
    body = response.json()
    assert (body["model_name"], body["model_version"], body["id"]) == ("digits", "1", "abc")
    (output,) = body["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("logits", "FP32", [2, 10])
    assert np.asarray(output["data"]).reshape(2, 10).argmax(1).tolist() == [3, 5]


def infer_body(
    shape: list[int], datatype: str = "FP32", data: list | None = None, name: str = "image"
) -> dict:
    count = int(np.prod(shape))
    return {
        "inputs": [
            {
                "name": name,
                "shape": shape,
                "datatype": datatype,
                "data": data if data is not None else [0] * count,
            }
        ]
    }


DEEP = 5_000  # past msgspec's recursion limit, within the 20 kB body limit
FORM_WITHOUT_FILE = b'--b0\r\nContent-Disposition: form-data; name="a"\r\n\r\nb\r\n--b0--\r\n'
BAD_REQUESTS = [
    ("POST", "/predict/nope", {"content": b"x"}, 404, "no model named 'nope'; served models: ['digits']"),
    ("GET", "/v2/models/nope", {}, 404, "no model named 'nope'"),
    (
        "POST",
        "/predict/digits",
        {"content": b'{"input": ' + b"[" * DEEP + b"]" * DEEP + b"}"},
        400,
        "request body is JSON nested too deeply",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        {"content": b'{"inputs": [{"data": ' + b"[" * DEEP + b"]" * DEEP + b"}]}"},
        400,
        "inference request is JSON nested too deeply",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        {"json": infer_body([1], data=functools.reduce(lambda inner, _: [inner], range(70), [1.0]))},
        400,
        "input 'image': FP32 data must hold numbers from -3.40282e+38 to 3.40282e+38: Expected `float`, got",
    ),
    ("GET", "/v2/models/digits/versions/7", {}, 404, "model 'digits' has no version '7'; versions: ['1']"),
    ("GET", "/v2/models/digits/versions/7/ready", {}, 404, "has no version '7'"),
    ("POST", "/predict/digits", {"content": b"GIF89a..."}, 400, "could not decode an image from 9 bytes"),
    ("POST", "/predict/digits", {"content": b""}, 400, "request body is empty"),
    (
        "POST",
        "/predict/digits",
        {"json": {"image": "x"}},
        400,
        'expected a JSON object {"input": ...} or {"inputs": [...]}, got [\'image\']',
    ),
    ("POST", "/predict/digits", {"json": {"input": "@@@"}}, 400, "input is not valid base64"),
    (
        "POST",
        "/predict/digits",
        {"content": b"{not json", "headers": {"content-type": "application/json"}},
        400,
        "request body is not valid JSON",
    ),
    (
        "POST",
        "/predict/digits",
        {"content": b"x" * 25_000},
        413,
        "request body of 25000 bytes is over the limit of 20000 bytes",
    ),
    (
        "POST",
        "/predict/digits",
        {"content": FORM_WITHOUT_FILE, "headers": {"content-type": "multipart/form-data; boundary=b0"}},
        415,
        "multipart body has no file part",
    ),
    (
        "POST",
        "/predict/digits",
        {"content": b"--b0\r\n", "headers": {"content-type": "multipart/form-data"}},
        400,
        "malformed multipart body: Missing boundary",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        {"json": infer_body([1, 1, 8, 8], "FP64")},
        400,
        "input 'image': expected datatype FP32, got FP64",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        {"json": infer_body([1, 64])},
        400,
        "input 'image': expected shape [-1, 1, 8, 8] (-1 is any size), got [1, 64]",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        {"json": infer_body([1, 1, 8, 8], data=[1, 2])},
        400,
        "input 'image': shape [1, 1, 8, 8] needs 64 elements, data has 2",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        {"json": infer_body([1, 1, 8, 8], "FP99")},
        400,
        "unknown datatype 'FP99'",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        {"json": infer_body([1, 4], name="pixels")},
        400,
        "expected inputs ['image']; missing ['image'], unknown ['pixels']",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        {"json": {"inputs": [{"name": "image"}]}},
        400,
        "Object missing required field `shape`",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        {"json": {**infer_body([1, 1, 8, 8]), "outputs": [{"name": "probs"}]}},
        400,
        "unknown requested output(s) ['probs']; model has ['logits']",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        {"json": infer_body([65, 1, 8, 8])},
        400,
        "request has 65 rows; model 'digits' takes 1 to 64 (max_batch_size)",
    ),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "message"), BAD_REQUESTS)
async def test_bad_requests_get_a_4xx_that_says_what_was_wrong(
    digits: httpx.AsyncClient, method: str, path: str, kwargs: dict, status: int, message: str
) -> None:
    response = await digits.request(method, path, **kwargs)
    assert response.status_code == status
    assert message in response.json()["error"]
    # ...and the server still answers correctly afterwards.
    assert (await digits.post("/predict/digits", content=sample(7))).json()["predictions"][0]["label"] == "7"


def test_overloaded_maps_to_503_with_retry_after() -> None:
    response = error_response(Overloaded("queue full"))
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert json.loads(bytes(response.body)) == {"error": "queue full"}


class CountingDouble(torch.nn.Module):
    """Doubles its input and records the batch size of every forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.batch_sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(x.shape[0])
        if (x > 1e6).any():
            raise ValueError("value out of the trained range")
        return x * 2


async def test_concurrent_http_requests_are_merged_and_each_gets_its_own_rows() -> None:
    model = CountingDouble()
    server = Server()
    server.add_model("double", model, example=torch.zeros(1, 3), batching=BatchingConfig(64, 50.0, 256))
    async with asgi_client(server) as client:
        rows = [[float(i), i + 0.5, -i] for i in range(24)]
        replies = await asyncio.gather(
            *(
                client.post("/v2/models/double/infer", json=infer_body([1, 3], data=row, name="x"))
                for row in rows
            )
        )
    assert [r.status_code for r in replies] == [200] * 24
    for row, reply in zip(rows, replies, strict=True):
        assert reply.json()["outputs"][0]["data"] == [2 * v for v in row]
    assert sum(model.batch_sizes) == 24 + 1  # + the probe at setup
    assert len(model.batch_sizes) - 1 <= 3  # 24 requests in at most 3 forward passes


async def test_a_model_failure_is_a_500_for_that_request_only() -> None:
    model = CountingDouble()
    server = Server()
    server.add_model("double", model, example=torch.zeros(1, 2), batching=BatchingConfig(64, 50.0, 256))
    async with asgi_client(server) as client:
        good = [client.post("/predict/double", json={"input": [i, i]}) for i in range(4)]
        bad = client.post("/v2/models/double/infer", json=infer_body([1, 2], data=[1e7, 1], name="x"))
        replies = await asyncio.gather(*good, bad)
        assert [r.json()["predictions"] for r in replies[:4]] == [[2 * i, 2 * i] for i in range(4)]
        assert replies[4].status_code == 500
        error = replies[4].json()["error"]
        assert error.startswith("model 'double' failed (error id ") and "trained range" not in error
        assert (await client.post("/predict/double", json={"inputs": [[1, 2], [3, 4]]})).json()[
            "predictions"
        ] == [[2, 4], [6, 8]]


FUNCTION_HANDLER = """
def load(model_dir):
    return {"offset": len(model_dir.name)}

def predict(model, inputs):
    return [{"length": len(x), "offset": model["offset"]} for x in inputs]
"""

CLASS_HANDLER = """
import numpy as np
from modelbay import InvalidInput, Predictor


class Reverse(Predictor):
    def setup(self, model_dir):
        self.ready = True

    def preprocess(self, example):
        if not isinstance(example, str):
            raise InvalidInput(f"expected text, got {type(example).__name__}")
        return example

    def predict(self, batch):
        return [text[::-1] for text in batch]

    def postprocess(self, output):
        return {"reversed": output}
"""


async def test_handler_folders(tmp_path: Path) -> None:
    functional = tmp_path / "lengths"
    functional.mkdir()
    (functional / "predict.py").write_text(FUNCTION_HANDLER)
    with_class = tmp_path / "reverse"
    with_class.mkdir()
    (with_class / "predict.py").write_text(CLASS_HANDLER)
    (with_class / "modelbay.yaml").write_text("version: 2\n")
    settings = Settings.load(overrides={"models": [{"path": str(functional)}, {"path": str(with_class)}]})
    async with asgi_client(Server(settings)) as client:
        reply = await client.post("/predict/lengths", json={"inputs": ["abc", [1, 2]]})
        assert reply.json()["predictions"] == [{"length": 3, "offset": 7}, {"length": 2, "offset": 7}]
        raw = await client.post(
            "/predict/lengths", content=b"\x00\x01", headers={"content-type": "application/octet-stream"}
        )
        assert raw.json()["predictions"] == {"length": 2, "offset": 7}
        reply = await client.post("/predict/reverse", json={"input": "stressed"})
        assert reply.json() == {"model": "reverse", "version": "2", "predictions": {"reversed": "desserts"}}
        reply = await client.post("/predict/reverse", json={"input": 5})
        assert reply.status_code == 400 and reply.json()["error"] == "expected text, got int"


async def test_openapi_document_and_docs_page(digits: httpx.AsyncClient) -> None:
    document = (await digits.get("/openapi.json")).json()
    assert document["openapi"] == "3.1.0"
    assert {"/predict/{model}", "/v2/models/{model}/infer", "/v2/health/ready", "/metrics"} <= set(
        document["paths"]
    )
    page = await digits.get("/docs")
    assert page.status_code == 200 and "/v2/models/{model}/versions/{version}/infer" in page.text
