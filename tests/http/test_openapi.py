"""The OpenAPI document (http/openapi.py) against the app that serves it, in-process.

What the document calls a valid request the server takes; the requests a fuzzer would once have
been told were valid (`{}`, an empty multipart) it now calls invalid, and the server refuses them;
and it lists every route the app serves, each answered at its documented method.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import jsonschema_rs
import pytest
import torch
from starlette.routing import Route

from modelbay.http.openapi import openapi_document
from modelbay.server import Server
from modelbay.settings import Settings
from tests.conftest import asgi_client, tiny_module

pytestmark = pytest.mark.anyio

DOCUMENT = openapi_document()
ROW = [0.5, -1.0, 2.0, 0.0]
PREDICT = DOCUMENT["paths"]["/predict/{model}"]["post"]["requestBody"]["content"]
INFER = DOCUMENT["paths"]["/v2/models/{model}/infer"]["post"]["requestBody"]["content"]


def tensor(shape: list[int], data: Any, datatype: str = "FP32", **extra: Any) -> dict[str, Any]:
    return {"name": "input", "shape": shape, "datatype": datatype, "data": data, **extra}


def tiny_server() -> Server:
    server = Server(Settings(grpc_port=0))
    server.add_model("tiny", tiny_module(), example=torch.zeros(1, 4))
    return server


@pytest.fixture
async def tiny() -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(tiny_server()) as client:
        yield client


@pytest.mark.parametrize("body", [{"input": ROW}, {"inputs": [ROW, ROW]}])
async def test_predict_json_the_schema_calls_valid_is_answered(tiny: httpx.AsyncClient, body: Any) -> None:
    assert jsonschema_rs.is_valid(PREDICT["application/json"]["schema"], body)
    assert (await tiny.post("/predict/tiny", json=body)).status_code == 200


@pytest.mark.parametrize("body", [{}, {"inputs": []}, {"inputs": ROW[0]}, {"values": ROW}, [ROW]])
async def test_predict_json_the_schema_refuses_is_refused(tiny: httpx.AsyncClient, body: Any) -> None:
    assert not jsonschema_rs.is_valid(PREDICT["application/json"]["schema"], body)
    assert (await tiny.post("/predict/tiny", json=body)).status_code == 400


async def test_predict_multipart_needs_a_file_part(tiny: httpx.AsyncClient) -> None:
    schema = PREDICT["multipart/form-data"]["schema"]
    assert not jsonschema_rs.is_valid(schema, {})
    assert not jsonschema_rs.is_valid(schema, {"note": "hello"})
    reply = await tiny.post("/predict/tiny", data={"note": "hello"}, files={})
    assert reply.status_code in (400, 415)
    empty = await tiny.post(
        "/predict/tiny", content=b"--x--\r\n", headers={"content-type": "multipart/form-data; boundary=x"}
    )
    assert empty.status_code in (400, 415)
    assert jsonschema_rs.is_valid(schema, {"file": "raw bytes"})


async def test_infer_request_the_schema_calls_valid_is_answered(tiny: httpx.AsyncClient) -> None:
    body = {"id": "a", "inputs": [tensor([1, 4], ROW)], "outputs": [{"name": "output"}]}
    assert jsonschema_rs.is_valid(INFER["application/json"]["schema"], body)
    reply = await tiny.post("/v2/models/tiny/infer", json=body)
    assert reply.status_code == 200
    response_schema = DOCUMENT["paths"]["/v2/models/{model}/infer"]["post"]["responses"]["200"]
    assert jsonschema_rs.is_valid(response_schema["content"]["application/json"]["schema"], reply.json())


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"inputs": []},
        {"inputs": [tensor([-1, 4], ROW)]},
        {"inputs": [tensor([1] * 33, [1.0])]},
        {"inputs": [tensor([1, 4], ROW, "FP8")]},
        {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32"}]},
        {"inputs": [tensor([1, 4], ROW)], "outputs": [{}]},
    ],
    ids=["empty", "no-inputs", "negative-dim", "33-dims", "unknown-datatype", "no-data", "output-no-name"],
)
async def test_infer_request_the_schema_refuses_is_refused(tiny: httpx.AsyncClient, body: Any) -> None:
    assert not jsonschema_rs.is_valid(INFER["application/json"]["schema"], body)
    assert (await tiny.post("/v2/models/tiny/infer", json=body)).status_code == 400


async def test_the_document_lists_every_route_and_each_is_served(tiny: httpx.AsyncClient) -> None:
    server = tiny_server()
    server.load()
    served = {route.path for route in server.app().starlette.routes if isinstance(route, Route)}
    assert served - set(DOCUMENT["paths"]) == {"/", "/openapi.json", "/docs"}
    # The model repository's unload goes last: after it, the model is gone.
    paths = sorted(DOCUMENT["paths"].items(), key=lambda entry: entry[0].endswith("/unload"))
    for path, item in paths:
        url = path.format(model="tiny", version="1")
        for method in item:
            body = {"inputs": [tensor([1, 4], ROW)]} if path.endswith("/infer") else {"input": ROW}
            if path.startswith("/v2/repository/"):
                body = {}
            reply = await tiny.request(method.upper(), url, json=body if method == "post" else None)
            # tiny is a module handed over in memory: it has no ONNX file (tests/http/test_download.py)
            expected = 404 if path.endswith("/onnx") else 200
            assert reply.status_code == expected, f"{method.upper()} {url}: {reply.status_code} {reply.text}"


def test_the_document_says_how_keys_are_sent_and_what_a_refusal_answers() -> None:
    schemes = DOCUMENT["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKey"] == {"type": "apiKey", "in": "header", "name": "x-api-key"}
    assert {} in DOCUMENT["security"]  # open without --auth
    for path, item in DOCUMENT["paths"].items():
        for method, operation in item.items():
            assert {"401", "403", "429"} <= operation["responses"].keys(), (method, path)
    infer = DOCUMENT["paths"]["/v2/models/{model}/infer"]["post"]
    assert "x-request-id" in {parameter["name"] for parameter in infer["parameters"]}
    assert {"x-request-id", "x-model-version"} <= infer["responses"]["200"]["headers"].keys()
