"""The OIP binary tensor data extension over REST, and compressed request bodies."""

from __future__ import annotations

import gzip
import json
import struct
import zlib
from collections.abc import AsyncIterator

import httpx
import numpy as np
import pytest
import torch

from modelbay.server import Server
from modelbay.settings import BatchingConfig
from tests.conftest import asgi_client

pytestmark = pytest.mark.anyio
HEADER = "Inference-Header-Content-Length"


class Affine(torch.nn.Module):
    """y = 2x + 1 on FP16 input, plus the row sums as FP64: two outputs of two datatypes."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * 2 + 1, x.double().sum(dim=1)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    server = Server()
    server.add_model(
        "affine", Affine(), example=torch.zeros(1, 3, dtype=torch.float16), batching=BatchingConfig(8)
    )
    async with asgi_client(server) as client:
        yield client


def binary_request(header: dict, *blobs: bytes) -> tuple[bytes, dict[str, str]]:
    text = json.dumps(header).encode()
    return text + b"".join(blobs), {HEADER: str(len(text)), "content-type": "application/octet-stream"}


def split_response(response: httpx.Response) -> tuple[dict, bytes]:
    length = int(response.headers[HEADER])
    return json.loads(response.content[:length]), response.content[length:]


async def test_binary_in_binary_out(client: httpx.AsyncClient) -> None:
    x = np.array([[1.5, -2, 0], [4, 5, 6]], np.float16)
    header = {
        "inputs": [
            {"name": "x", "shape": [2, 3], "datatype": "FP16", "parameters": {"binary_data_size": x.nbytes}}
        ],
        "parameters": {"binary_data_output": True},
    }
    body, headers = binary_request(header, x.tobytes())
    response = await client.post("/v2/models/affine/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    meta, raw = split_response(response)
    first, second = meta["outputs"]
    assert (first["name"], first["datatype"], first["shape"]) == ("output0", "FP16", [2, 3])
    assert first["parameters"] == {"binary_data_size": 12} and "data" not in first
    assert (second["datatype"], second["parameters"]) == ("FP64", {"binary_data_size": 16})
    np.testing.assert_array_equal(np.frombuffer(raw[:12], "<f2").reshape(2, 3), x * 2 + 1)
    np.testing.assert_array_equal(np.frombuffer(raw[12:], "<f8"), x.astype(np.float64).sum(1))


async def test_per_output_choice_wins_over_the_request_default(client: httpx.AsyncClient) -> None:
    x = np.ones((1, 3), np.float16)
    header = {
        "inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP16", "parameters": {"binary_data_size": 6}}],
        "outputs": [{"name": "output0", "parameters": {"binary_data": False}}, {"name": "output1"}],
        "parameters": {"binary_data_output": True},
    }
    body, headers = binary_request(header, x.tobytes())
    meta, raw = split_response(await client.post("/v2/models/affine/infer", content=body, headers=headers))
    assert meta["outputs"][0]["data"] == [3.0, 3.0, 3.0]
    assert np.frombuffer(raw, "<f8").tolist() == [3.0]


async def test_json_input_with_binary_output_and_plain_json_without(client: httpx.AsyncClient) -> None:
    body = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP16", "data": [1, 2, 3]}]}
    plain = await client.post("/v2/models/affine/infer", json=body)
    assert HEADER not in plain.headers and plain.headers["content-type"] == "application/json"
    assert plain.json()["outputs"][1]["data"] == [6.0]
    body["outputs"] = [{"name": "output1", "parameters": {"binary_data": True}}]
    meta, raw = split_response(await client.post("/v2/models/affine/infer", json=body))
    assert [o["name"] for o in meta["outputs"]] == ["output1"] and np.frombuffer(raw, "<f8").tolist() == [6.0]


async def test_gzip_and_deflate_bodies(client: httpx.AsyncClient) -> None:
    body = json.dumps(
        {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP16", "data": [0, 0, 1]}]}
    ).encode()
    for encoding, packed in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))):
        reply = await client.post(
            "/v2/models/affine/infer", content=packed, headers={"content-encoding": encoding}
        )
        assert reply.json()["outputs"][1]["data"] == [1.0], encoding


def fp16_input(size: int, shape: list[int] | None = None) -> dict:
    return {
        "name": "x",
        "shape": shape or [1, 3],
        "datatype": "FP16",
        "parameters": {"binary_data_size": size},
    }


BAD = [
    (
        {"inputs": [fp16_input(6)]},
        b"\x00" * 4,
        "input 'x': binary_data_size 6 but only 4 bytes of binary data remain",
    ),
    (
        {"inputs": [fp16_input(6)]},
        b"\x00" * 8,
        "2 bytes of binary data are left after the inputs' binary_data_size",
    ),
    (
        {"inputs": [fp16_input(4, [1, 2])]},
        b"\x00" * 4,
        "input 'x': expected shape [-1, 3] (-1 is any size), got [1, 2]",
    ),
    (
        {"inputs": [fp16_input(5)]},
        b"\x00" * 5,
        "input 'x': FP16 shape [1, 3] needs 6 bytes of raw data, got 5",
    ),
    ({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP16"}]}, b"", "input 'x' has neither data nor"),
    (
        {"inputs": [{"name": "x", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 9}}]},
        struct.pack("<I", 3) + b"abc" + b"\x07\x00",
        "input 'x': BYTES data ends after 1 of 2 elements",
    ),
    (
        {"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}}]},
        struct.pack("<I", 9) + b"ab",
        "input 'x': BYTES element 0 claims 9 bytes, only 2 remain",
    ),
]


@pytest.mark.parametrize(("header", "blob", "message"), BAD)
async def test_bad_binary_bodies_are_400_with_what_was_wrong(
    client: httpx.AsyncClient, header: dict, blob: bytes, message: str
) -> None:
    body, headers = binary_request(header, blob)
    reply = await client.post("/v2/models/affine/infer", content=body, headers=headers)
    assert reply.status_code == 400
    assert message in reply.json()["error"]


@pytest.mark.parametrize(
    ("headers", "content", "status", "message"),
    [
        ({HEADER: "999"}, b"{}", 400, "Inference-Header-Content-Length is 999 but the body has 2 bytes"),
        ({HEADER: "-1"}, b"{}", 400, "Inference-Header-Content-Length must be a byte count, got '-1'"),
        ({"content-encoding": "br"}, b"{}", 415, "Content-Encoding 'br' is not supported"),
        ({"content-encoding": "gzip"}, gzip.compress(b"{}")[:-6], 400, "request body is truncated gzip data"),
        (
            {"content-encoding": "gzip"},
            gzip.compress(b"0" * 20_000_000),
            413,
            "inflates to more than the limit",
        ),
    ],
)
async def test_bad_headers_and_encodings(
    client: httpx.AsyncClient, headers: dict, content: bytes, status: int, message: str
) -> None:
    reply = await client.post("/v2/models/affine/infer", content=content, headers=headers)
    assert reply.status_code == status
    assert message in reply.json()["error"]
