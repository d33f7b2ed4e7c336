"""The model repository extension over REST, in-process: index, load, unload, while serving."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from starlette.applications import Starlette

from modelbay.http.repository import repository_routes
from modelbay.predictor import Predictor
from modelbay.registry.registry import ModelRegistry
from modelbay.runtime.dataplane import Dataplane
from modelbay.server import Server
from modelbay.settings import Settings
from tests.conftest import asgi_client

pytestmark = pytest.mark.anyio
ROW = [0.5, -1.0, 2.0, 0.25]


def infer_body(row: list[float], name: str = "input") -> dict[str, Any]:
    return {"inputs": [{"name": name, "shape": [1, 4], "datatype": "FP32", "data": row}]}


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
            "this server has no model repository to write an uploaded model into",
        ),
        ("/v2/repository/models/tiny/load", {"parameters": []}, 400, '"parameters" must be an object'),
        ("/v2/repository/models/tiny/default", {"version": "7"}, 404, "'tiny'"),
        ("/v2/repository/models/nope/default", {}, 404, "'nope'"),
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


def upload(files: dict[str, bytes], config: dict[str, Any] | None = None) -> dict[str, Any]:
    """A load body as tritonclient.http sends it: config as a JSON string, files in base64."""
    parameters: dict[str, Any] = {
        f"file:{path}": base64.b64encode(data).decode() for path, data in files.items()
    }
    if config is not None:
        parameters["config"] = json.dumps(config)
    return {"parameters": parameters}


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[tuple[Path, httpx.AsyncClient]]:
    """A server over an empty model repository: (the repository, a client)."""
    repository = tmp_path / "repository"
    repository.mkdir()
    server = Server(Settings.load(overrides={"model_repository": str(repository)}))
    async with asgi_client(server) as client:
        yield repository, client


async def answered_by(client: httpx.AsyncClient, path: str) -> str:
    reply = await client.post(path, json=infer_body(ROW, "x"))
    assert reply.status_code == 200, reply.text
    return str(reply.json()["model_version"])


async def test_upload_versions_then_choose_the_default(
    live: tuple[Path, httpx.AsyncClient], tiny_files: dict[str, Path], tiny: torch.nn.Module
) -> None:
    repository, client = live
    expected = tiny(torch.tensor([ROW])).detach().numpy().reshape(-1).tolist()
    onnx = tiny_files["onnx"].read_bytes()
    config = {"task": "tensor", "batching": {"max_batch_size": 8}}
    reply = await client.post("/v2/repository/models/tiny/load", json=upload({"1/model.onnx": onnx}, config))
    assert reply.status_code == 200, reply.text
    assert (repository / "tiny" / "1" / "model.onnx").read_bytes() == onnx
    assert "max_batch_size: 8" in (repository / "tiny" / "1" / "modelbay.yaml").read_text()
    assert [p.name for p in repository.iterdir()] == ["tiny"]  # no staging folder left
    rows = (await client.post("/v2/repository/index")).json()
    assert rows == [{"name": "tiny", "version": "1", "state": "READY", "reason": ""}]
    answer = await client.post("/v2/models/tiny/infer", json=infer_body(ROW, "x"))
    assert answer.json()["outputs"][0]["data"] == pytest.approx(expected, abs=1e-5)

    reply = await client.post("/v2/repository/models/tiny/load", json=upload({"2/tiny.onnx": onnx}))
    assert reply.status_code == 200, reply.text
    assert [(r["version"], r["state"]) for r in (await client.post("/v2/repository/index")).json()] == [
        ("1", "READY"),
        ("2", "READY"),
    ]
    assert await answered_by(client, "/v2/models/tiny/infer") == "2"

    pinned = await client.post("/v2/repository/models/tiny/default", json={"version": "1"})
    assert pinned.json() == {"name": "tiny", "version": "1"}
    assert await answered_by(client, "/v2/models/tiny/infer") == "1"
    assert await answered_by(client, "/v2/models/tiny/versions/2/infer") == "2"
    highest = await client.post("/v2/repository/models/tiny/default", json={"version": None})
    assert highest.json() == {"name": "tiny", "version": "2"}
    assert await answered_by(client, "/v2/models/tiny/infer") == "2"
    assert (await client.post("/v2/repository/models/tiny/default")).json()["version"] == "2"

    again = await client.post("/v2/repository/models/tiny/load", json=upload({"2/tiny.onnx": onnx}))
    assert again.status_code == 400
    assert "version 2 of 'tiny' exists; versions are immutable: deploy a new version" in again.json()["error"]


UPLOAD_MISTAKES = [
    ({"file:1/model.onnx": "not base64!"}, "parameter 'file:1/model.onnx' is not valid base64"),
    ({"file:1/model.onnx": "AA"}, "is not valid base64"),
    ({"file:1/model.onnx": 7}, "must be the file's content in base64, got int"),
    ({"file:../1/model.onnx": "AA=="}, "must be <version>/<file>"),
    ({"file:1/../../x": "AA=="}, "is not allowed"),
    ({"file:/etc/passwd": "AA=="}, "must be relative"),
    ({"file:1/.env": "AA=="}, "is not allowed"),
    ({"config": "{"}, "parameter config is not JSON"),
    ({"config": "[1]"}, "must be a JSON object of modelbay.yaml fields, got list"),
    ({"config": {"task": "tensor"}}, "parameter config must be a JSON object as a string, got dict"),
    ({"config": '{"taks": "tensor"}', "file:1/model.onnx": "AA=="}, "unknown field `taks`"),
    ({"file:1/a.onnx": "AA==", "file:1/b.onnx": "AA=="}, "version 1 needs one model file at its top"),
    ({"unload_dependents": True}, "unknown load parameter 'unload_dependents'"),
]


@pytest.mark.parametrize(("parameters", "message"), UPLOAD_MISTAKES)
async def test_upload_mistakes_are_refused_and_write_nothing(
    live: tuple[Path, httpx.AsyncClient], parameters: dict[str, Any], message: str
) -> None:
    repository, client = live
    reply = await client.post("/v2/repository/models/m/load", json={"parameters": parameters})
    assert reply.status_code == 400 and message in reply.json()["error"], reply.text
    assert list(repository.iterdir()) == []


async def test_a_model_name_that_cannot_be_a_folder_is_refused(live: tuple[Path, httpx.AsyncClient]) -> None:
    repository, client = live
    for name in (".hidden", "a%5Cb"):
        reply = await client.post(f"/v2/repository/models/{name}/load", json=upload({"1/m.onnx": b"x"}))
        assert reply.status_code == 400 and "model name" in reply.json()["error"], reply.text
    assert list(repository.iterdir()) == []


@pytest.mark.parametrize("version", [2, True, ["1"]])
async def test_default_takes_a_version_string_or_null(
    served: tuple[Server, httpx.AsyncClient], version: Any
) -> None:
    _, client = served
    reply = await client.post("/v2/repository/models/tiny/default", json={"version": version})
    assert reply.status_code == 400 and '"version" must be a string, or null' in reply.json()["error"]


async def test_a_load_body_may_be_as_large_as_max_upload_bytes() -> None:
    """Loads are read within max_upload_bytes, the other repository bodies within max_body_bytes."""
    app = Starlette(routes=repository_routes(Dataplane(ModelRegistry()), 100, max_upload_bytes=1000))
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://modelbay.test") as client:
        body = upload({"1/model.onnx": b"x" * 500})
        reply = await client.post("/v2/repository/models/m/load", json=body)
        assert reply.status_code == 503  # read whole; refused only for want of a model manager
        reply = await client.post("/v2/repository/models/m/load", json=upload({"1/model.onnx": b"x" * 800}))
        assert reply.status_code == 413 and "(--max-upload-bytes)" in reply.json()["error"]
        reply = await client.post("/v2/repository/models/m/unload", json=body)
        assert reply.status_code == 413 and "over the limit of 100 bytes" in reply.json()["error"]
