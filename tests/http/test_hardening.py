"""Issue 9, in-process: what a careless or hostile client, or broken model code, can no longer do.

Each test here hung, crashed, leaked or answered wrongly on the code before the fix.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from modelbay.predictor import Predictor
from modelbay.server import DEFAULT_MODEL, Server
from modelbay.settings import BatchingConfig, Settings
from modelbay.types import TensorSpec
from tests.conftest import SAMPLES, asgi_client

pytestmark = pytest.mark.anyio
HEADER = "Inference-Header-Content-Length"


class Affine(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 + 1


class Gated(Predictor):
    """Echoes [rows, 2] FP32 tensors; `predict` (or `preprocess`) waits while `gate` is closed,
    as model code that hangs does."""

    inputs = (TensorSpec("x", "FP32", (-1, 2)),)
    outputs = (TensorSpec("y", "FP32", (-1, 2)),)

    def __init__(self, hang_in: str = "predict") -> None:
        self.gate = threading.Event()
        self.hang_in = hang_in
        self.preprocess_in_thread = hang_in == "preprocess"

    def decode_tensors(self, tensors: dict[str, np.ndarray]) -> Any:
        return self.preprocess(tensors["x"])

    def preprocess(self, example: Any) -> Any:
        if self.hang_in == "preprocess":
            self.gate.wait(30)
        return np.asarray(example, np.float32).reshape(-1, 2)

    def rows(self, item: Any) -> int:
        return len(item)

    def predict(self, batch: list[Any]) -> list[Any]:
        if self.hang_in == "predict":
            self.gate.wait(30)
        return batch

    def encode_tensors(self, output: Any) -> dict[str, np.ndarray]:
        return {"y": output}


def infer_json(shape: list[int], data: list, name: str = "x", datatype: str = "FP32") -> dict:
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}


def binary(header: dict, blob: bytes) -> tuple[bytes, dict[str, str]]:
    text = json.dumps(header).encode()
    return text + blob, {HEADER: str(len(text)), "content-type": "application/octet-stream"}


@pytest.fixture
async def affine() -> AsyncIterator[httpx.AsyncClient]:
    server = Server()
    server.add_model("affine", Affine(), example=torch.zeros(1, 3), batching=BatchingConfig(8, 0.0, 2))
    async with asgi_client(server) as client:
        yield client


@pytest.mark.parametrize("door", ["json", "binary"])
async def test_a_zero_row_request_is_refused_and_never_queued(affine: httpx.AsyncClient, door: str) -> None:
    for _ in range(3):  # more than max_queue_size 2: each would once have stayed queued for good
        if door == "json":
            reply = await affine.post("/v2/models/affine/infer", json=infer_json([0, 3], []))
        else:
            header = {"inputs": [{"name": "x", "shape": [0, 3], "datatype": "FP32"}]}
            header["inputs"][0]["parameters"] = {"binary_data_size": 0}
            content, headers = binary(header, b"")
            reply = await affine.post("/v2/models/affine/infer", content=content, headers=headers)
        assert reply.status_code == 400
        assert "request has 0 rows; model 'affine' takes 1 to 8 (max_batch_size)" in reply.json()["error"]
    good = await affine.post("/v2/models/affine/infer", json=infer_json([1, 3], [1, 2, 3]))
    assert good.status_code == 200 and good.json()["outputs"][0]["data"] == [3, 5, 7]


async def test_a_hung_model_answers_504_its_queue_drains_and_others_keep_serving() -> None:
    hung = Gated()
    server = Server()
    server.add_model("hung", hung, batching=BatchingConfig(4, 0.0, 2), timeout_s=0.3)
    server.add_model("affine", Affine(), example=torch.zeros(1, 3))
    async with asgi_client(server) as client:
        try:
            # Five one after the other, more than max_queue_size: each times out and leaves the
            # queue, so none is refused with 503 (once the queue filled with abandoned requests).
            for _ in range(5):
                reply = await client.post("/v2/models/hung/infer", json=infer_json([1, 2], [1, 2]))
                assert reply.status_code == 504
                assert "model 'hung' did not answer within the request's deadline" in reply.json()["error"]
            assert server.registry.get("hung").batcher.queue_depth == 0
            # A batch stuck in the model past timeout_s: not ready, so a load balancer moves on.
            assert (await client.get("/v2/models/hung/ready")).status_code == 400
            assert (await client.get("/v2/health/ready")).status_code == 400
            other = await client.post("/v2/models/affine/infer", json=infer_json([1, 3], [0, 0, 0]))
            assert other.status_code == 200 and other.json()["outputs"][0]["data"] == [1, 1, 1]
        finally:
            hung.gate.set()
        reply = await client.post("/v2/models/hung/infer", json=infer_json([1, 2], [5, 6]))
        assert reply.status_code == 200 and reply.json()["outputs"][0]["data"] == [5, 6]
        assert (await client.get("/v2/models/hung/ready")).status_code == 200


async def test_a_hanging_preprocess_holds_only_its_own_model() -> None:
    stuck = Gated(hang_in="preprocess")
    settings = Settings.load(overrides={"models": [{"path": str(DEFAULT_MODEL)}]})
    server = Server(settings)
    server.add_model("stuck", stuck, timeout_s=0.5, preprocess_threads=2)
    async with asgi_client(server) as client:
        try:
            # More hung requests than any shared pool had threads (6 here): the digits model's
            # image door, which preprocesses on threads too, must not notice.
            hung = [client.post("/predict/stuck", json={"input": [1, 2]}) for _ in range(8)]
            images = [
                client.post("/predict/digits", content=(SAMPLES / f"{d}.png").read_bytes()) for d in (3, 7)
            ]
            replies = await asyncio.gather(*hung, *images)
            assert [r.status_code for r in replies[:8]] == [504] * 8
            assert [r.json()["predictions"][0]["label"] for r in replies[8:]] == ["3", "7"]
        finally:
            stuck.gate.set()


class Exits(Predictor):
    """Raises SystemExit or KeyboardInterrupt in the hook the input names; echoes otherwise."""

    def __init__(self, in_thread: bool) -> None:
        self.preprocess_in_thread = in_thread

    def preprocess(self, example: Any) -> Any:
        if example == "preprocess":
            sys.exit(3)
        return example

    def predict(self, batch: list[Any]) -> list[Any]:
        if "predict" in batch:
            raise SystemExit(4)
        return batch

    def postprocess(self, output: Any) -> Any:
        if output == "postprocess":
            raise KeyboardInterrupt
        return output


@pytest.mark.parametrize("in_thread", [True, False])
async def test_system_exit_in_model_code_fails_only_that_request(in_thread: bool) -> None:
    server = Server()
    server.add_model("exits", Exits(in_thread), batching=BatchingConfig(8, 20.0))
    async with asgi_client(server) as client:
        bad = [
            client.post("/predict/exits", json={"input": hook})
            for hook in ("preprocess", "predict", "postprocess")
        ]
        good = [client.post("/predict/exits", json={"input": f"ok{i}"}) for i in range(3)]
        replies = await asyncio.gather(*bad, *good)
        assert [r.status_code for r in replies] == [500] * 3 + [200] * 3
        assert all("model 'exits' failed (error id" in r.json()["error"] for r in replies[:3])
        assert [r.json()["predictions"] for r in replies[3:]] == ["ok0", "ok1", "ok2"]


class Leaks(Predictor):
    def predict(self, batch: list[Any]) -> list[Any]:
        raise FileNotFoundError(2, "No such file or directory", "/srv/secret/creds/api_keys.txt")


async def test_a_model_error_text_reaches_the_log_not_the_client(caplog: pytest.LogCaptureFixture) -> None:
    server = Server()
    server.add_model("leaks", Leaks())
    async with asgi_client(server) as client:
        with caplog.at_level(logging.ERROR, logger="modelbay.batcher"):
            reply = await client.post("/predict/leaks", json={"input": 1})
    assert reply.status_code == 500
    error = reply.json()["error"]
    assert "secret" not in error and "FileNotFoundError" not in error
    error_id = error.split("error id ")[1][:12]
    logged = [r for r in caplog.records if error_id in r.getMessage()]
    assert logged and "/srv/secret/creds/api_keys.txt" in caplog.text


async def test_a_tiny_request_declaring_a_huge_tensor_allocates_nothing(affine: httpx.AsyncClient) -> None:
    header = {"inputs": [{"name": "x", "shape": [100_000_000], "datatype": "BYTES"}]}
    header["inputs"][0]["parameters"] = {"binary_data_size": 8}
    content, headers = binary(header, b"\x04\x00\x00\x00abcd")
    assert len(content) < 130
    tracemalloc.start()
    try:
        for model in ("affine", "nope"):
            reply = await affine.post(f"/v2/models/{model}/infer", content=content, headers=headers)
            assert reply.status_code == 400
            assert "BYTES shape [100000000] has 100000000 elements" in reply.json()["error"]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000  # was an 800 MB object array


HUGE = [9223372036854775807, 0]


@pytest.mark.parametrize(
    ("request_kwargs", "message"),
    [
        ({"json": infer_json(HUGE, [])}, f"shape {HUGE} has more than"),
        (
            {"json": infer_json([2, 3], [1e39] * 6)},
            "FP32 data must hold numbers from -3.40282e+38 to 3.40282e+38: Expected `float` <= 3.40282346",
        ),
        ({"json": infer_json([1, 3], [1.0, True, 2.0])}, "FP32 data must hold numbers from"),
        ({"json": infer_json([1, 3], [1, 2, 3], datatype="INT64")}, "expected datatype FP32, got INT64"),
        ({"json": infer_json([1, -3], [])}, "has a negative dimension"),
        ({"json": infer_json([1] * 40, [1])}, "shape has 40 dimensions; at most 32"),
        (
            {"content": b'{"inputs": []}', "headers": {HEADER: b"\xb2"}},  # "²" passes str.isdigit
            "Inference-Header-Content-Length must be a byte count, got '²'",
        ),
        ({"content": b"{}", "headers": {HEADER: "99"}}, "Inference-Header-Content-Length is 99"),
    ],
)
async def test_client_mistakes_are_400_never_500(
    affine: httpx.AsyncClient, request_kwargs: dict, message: str
) -> None:
    reply = await affine.post("/v2/models/affine/infer", **request_kwargs)
    assert reply.status_code == 400 and message in reply.json()["error"]


async def test_binary_shape_absurd_is_400(affine: httpx.AsyncClient) -> None:
    header = {
        "inputs": [{"name": "x", "shape": HUGE, "datatype": "FP32", "parameters": {"binary_data_size": 0}}]
    }
    content, headers = binary(header, b"")
    reply = await affine.post("/v2/models/affine/infer", content=content, headers=headers)
    assert reply.status_code == 400 and "has more than" in reply.json()["error"]


async def test_more_examples_than_the_queue_holds_is_413_and_nothing_stays_queued() -> None:
    server = Server()
    server.add_model("affine", Affine(), example=torch.zeros(1, 3), batching=BatchingConfig(8, 0.0, 4))
    async with asgi_client(server) as client:
        for _ in range(3):
            reply = await client.post("/predict/affine", json={"inputs": [[1, 2, 3]] * 5})
            assert reply.status_code == 413
            assert "request has 5 examples; model 'affine' queues at most 4" in reply.json()["error"]
        assert server.registry.get("affine").batcher.queue_depth == 0
        reply = await client.post("/predict/affine", json={"inputs": [[1, 2, 3]] * 4})
        assert reply.status_code == 200 and reply.json()["predictions"] == [[3, 5, 7]] * 4


async def test_a_failing_example_withdraws_the_rest_of_its_request() -> None:
    hung = Gated()
    server = Server()
    server.add_model("gated", hung, batching=BatchingConfig(1, 0.0, 8), timeout_s=0.3)
    async with asgi_client(server) as client:
        try:
            reply = await client.post("/predict/gated", json={"inputs": [[1, 2], [3, 4], [5, 6]]})
            assert reply.status_code == 504
            assert server.registry.get("gated").batcher.queue_depth == 0
        finally:
            hung.gate.set()


class PythonNaN(Predictor):
    def predict(self, batch: list[Any]) -> list[Any]:
        return [{"score": None if x is None else float("nan")} for x in batch]


class NaNs(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / 0


async def test_nan_or_infinity_in_an_output_is_reported_not_sent_as_null() -> None:
    server = Server()
    server.add_model("nans", NaNs(), example=torch.zeros(1, 2))
    server.add_model("python-nan", PythonNaN())
    async with asgi_client(server) as client:
        reply = await client.post("/v2/models/nans/infer", json=infer_json([1, 2], [0, 1]))
        assert reply.status_code == 500 and "holds NaN or infinity, which JSON cannot carry" in reply.text
        reply = await client.post("/predict/nans", json={"input": [0, 1]})
        assert reply.status_code == 500 and "NaN or infinity" in reply.text
        reply = await client.post("/predict/python-nan", json={"input": 1})  # a float, not numpy
        assert reply.status_code == 500 and "NaN or infinity" in reply.text
        reply = await client.post("/predict/python-nan", json={"input": None})  # a real null is fine
        assert reply.status_code == 200 and reply.json()["predictions"] == {"score": None}
        body = infer_json([1, 2], [0, 1])
        body["parameters"] = {"binary_data_output": True}
        reply = await client.post("/v2/models/nans/infer", json=body)
        assert reply.status_code == 200
        raw = reply.content[int(reply.headers[HEADER]) :]
        values = np.frombuffer(raw, np.float32)
        assert np.isnan(values[0]) and np.isposinf(values[1])


async def test_unknown_routes_and_methods_answer_json(affine: httpx.AsyncClient) -> None:
    reply = await affine.get("/v2/nothing/here")
    assert reply.status_code == 404 and reply.json() == {
        "error": "no route GET /v2/nothing/here; GET /docs lists the routes"
    }
    reply = await affine.post("/v2/health/live")
    assert (
        reply.status_code == 405 and reply.json()["error"] == "method POST is not allowed on /v2/health/live"
    )


async def test_a_small_file_of_a_huge_image_is_refused_before_decoding() -> None:
    import io

    from PIL import Image

    png = io.BytesIO()
    Image.new("RGB", (6300, 6300)).save(png, "PNG")  # ~120 MB of pixels in a file of ~120 kB
    assert len(png.getvalue()) < 200_000
    settings = Settings.load(overrides={"models": [{"path": str(DEFAULT_MODEL)}]})
    async with asgi_client(Server(settings)) as client:
        reply = await client.post("/predict/digits", content=png.getvalue())
    # The limit (4096 x 4096 by default) is read from the header: nothing was decoded.
    assert reply.status_code == 413
    assert reply.json()["error"] == "image is 6300x6300 pixels, more than the limit of 16777216"
