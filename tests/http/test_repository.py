"""The model repository extension over REST, in-process: index, load, unload, while serving."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from modelbay.predictor import Predictor
from modelbay.server import Server
from modelbay.settings import Settings
from tests.conftest import asgi_client

pytestmark = pytest.mark.anyio
ROW = [0.5, -1.0, 2.0, 0.25]


def infer_body(row: list[float]) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": row}]}


@pytest.fixture
async def served(tiny_files: dict[str, Path]) -> AsyncIterator[tuple[Server, httpx.AsyncClient]]:
    """The tiny MLP from its .pt2 file (so it can be loaded again from disk), as "tiny"."""
    settings = Settings.load(overrides={"models": [{"path": str(tiny_files["exported"]), "name": "tiny"}]})
    server = Server(settings)
    async with asgi_client(server) as client:
        yield server, client


async def test_index_unload_and_load_again(
    served: tuple[Server, httpx.AsyncClient], tiny: torch.nn.Module
) -> None:
    _, client = served
    expected = tiny(torch.tensor([ROW])).detach().numpy().reshape(-1).tolist()
    index = (await client.post("/v2/repository/index")).json()
    assert index == [{"name": "tiny", "version": "1", "state": "READY", "reason": ""}]

    assert (await client.post("/v2/repository/models/tiny/unload")).status_code == 200
    index = (await client.post("/v2/repository/index", json={})).json()
    assert index == [{"name": "tiny", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"}]
    assert (await client.post("/v2/repository/index", json={"ready": True})).json() == []
    gone = await client.post("/v2/models/tiny/infer", json=infer_body(ROW))
    assert gone.status_code == 404 and "no model named 'tiny'" in gone.json()["error"]

    assert (await client.post("/v2/repository/models/tiny/load", json={"parameters": {}})).status_code == 200
    assert [row["state"] for row in (await client.post("/v2/repository/index")).json()] == ["READY"]
    answer = await client.post("/v2/models/tiny/infer", json=infer_body(ROW))
    assert answer.json()["outputs"][0]["data"] == pytest.approx(expected, abs=1e-6)
    assert (await client.get("/v2/models/tiny/ready")).status_code == 200


async def test_a_reload_under_load_drops_no_request(served: tuple[Server, httpx.AsyncClient]) -> None:
    server, client = served
    before = server.registry.get("tiny")

    async def stream() -> list[int]:
        codes = []
        for _ in range(40):
            codes.append((await client.post("/v2/models/tiny/infer", json=infer_body(ROW))).status_code)
        return codes

    streams = [asyncio.ensure_future(stream()) for _ in range(4)]
    await asyncio.sleep(0.05)
    for _ in range(3):
        assert (await client.post("/v2/repository/models/tiny/load")).status_code == 200
    codes = [code for result in await asyncio.gather(*streams) for code in result]
    assert codes == [200] * 160
    after = server.registry.get("tiny")
    assert after is not before and not before.ready  # a new instance serves; the old one was stopped


async def test_a_failed_reload_leaves_the_serving_version_and_says_why(
    tiny_files: dict[str, Path], tmp_path: Path
) -> None:
    model = tmp_path / "tiny.pt2"
    model.write_bytes(tiny_files["exported"].read_bytes())
    server = Server(Settings.load(overrides={"models": [{"path": str(model)}]}))
    async with asgi_client(server) as client:
        model.write_bytes(b"not a model any more")
        reply = await client.post("/v2/repository/models/tiny/load")
        assert reply.status_code == 500 and "model 'tiny'" in reply.json()["error"]
        (row,) = (await client.post("/v2/repository/index")).json()
        assert row["state"] == "READY" and row["reason"].startswith("reload failed, the previous load serves")
        assert (await client.post("/v2/models/tiny/infer", json=infer_body(ROW))).status_code == 200
        assert (await client.post("/v2/repository/models/tiny/unload")).status_code == 200
        reply = await client.post("/v2/repository/models/tiny/load")
        assert reply.status_code == 500
        (row,) = (await client.post("/v2/repository/index")).json()
        assert row["state"] == "FAILED" and "tiny" in row["reason"]


class Gate(Predictor):
    """Echoes its items; `predict` waits for `gate`."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()

    def predict(self, batch: list[Any]) -> list[Any]:
        self.entered.set()
        self.gate.wait(30)
        return batch


async def test_unload_lets_the_requests_in_flight_finish() -> None:
    gated = Gate()
    server = Server()
    server.add_model("gated", gated)
    async with asgi_client(server) as client:
        in_flight = asyncio.ensure_future(client.post("/predict/gated", json={"input": "x"}))
        while not gated.entered.is_set():
            await asyncio.sleep(0.01)
        unloading = asyncio.ensure_future(client.post("/v2/repository/models/gated/unload"))
        await asyncio.sleep(0.2)
        assert not unloading.done()  # it waits for the request in the model
        (row,) = (await client.post("/v2/repository/index")).json()
        assert row["state"] == "UNLOADING"
        refused = await client.post("/predict/gated", json={"input": "y"})
        assert refused.status_code == 404  # no new request reaches a version being unloaded
        gated.gate.set()
        assert (await in_flight).json()["predictions"] == "x"
        assert (await unloading).status_code == 200
        # A model added in code is loaded again from the same predictor.
        assert (await client.post("/v2/repository/models/gated/load")).status_code == 200
        assert (await client.post("/predict/gated", json={"input": "z"})).json()["predictions"] == "z"


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        (
            "/v2/repository/models/nope/load",
            {},
            404,
            "no model named 'nope' among the server's model sources",
        ),
        ("/v2/repository/models/nope/unload", {}, 404, "model 'nope' is not loaded"),
        ("/v2/repository/index", {"ready": "yes"}, 400, '"ready" must be true or false'),
        ("/v2/repository/index", [1], 400, "expected a JSON object, got list"),
        (
            "/v2/repository/models/tiny/load",
            {"parameters": {"config": "{}", "file:1/model.onnx": "AA=="}},
            400,
            "loading a model sent with the request (config, file:1/model.onnx) is not supported yet",
        ),
    ],
)
async def test_repository_mistakes_say_what_was_wrong(
    served: tuple[Server, httpx.AsyncClient], path: str, body: Any, status: int, message: str
) -> None:
    _, client = served
    reply = await client.post(path, json=body)
    assert reply.status_code == status and message in reply.json()["error"]


async def test_the_repository_api_answers_only_loopback_clients(tiny_files: dict[str, Path]) -> None:
    server = Server(
        Settings.load(overrides={"grpc_port": 0, "models": [{"path": str(tiny_files["exported"])}]})
    )
    server.load()
    app = server.app()
    async with app.starlette.router.lifespan_context(app.starlette):
        transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://modelbay.test") as client:
            reply = await client.post("/v2/repository/models/tiny/unload")
            assert reply.status_code == 403 and "only loopback clients" in reply.json()["error"]
            assert (await client.post("/v2/models/tiny/infer", json=infer_body(ROW))).status_code == 200
