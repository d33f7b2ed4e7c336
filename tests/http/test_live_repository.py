"""A model repository served live, in-process: versions copied in, changed, removed and broken
while the server answers; the model control modes; the default version."""

from __future__ import annotations

import contextlib
import shutil
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import torch

from modelbay.errors import InvalidInput, ModelNotFound
from modelbay.runtime.dataplane import Dataplane
from modelbay.server import Server
from modelbay.settings import Settings
from tests.conftest import tiny_module

pytestmark = pytest.mark.anyio
ROW = [0.5, -1.0, 2.0, 0.25]
HIDDEN = {"1": 8, "2": 16, "3": 5}  # each version a different network, so answers tell them apart


@pytest.fixture(scope="module")
def version_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One torch.export file per model version, each of a different hidden size."""
    out = tmp_path_factory.mktemp("versions")
    files = {}
    for version, hidden in HIDDEN.items():
        batch = torch.export.Dim("batch")
        program = torch.export.export(tiny_module(hidden), (torch.randn(2, 4),), dynamic_shapes=({0: batch},))
        files[version] = out / f"v{version}.pt2"
        torch.export.save(program, files[version])
    return files


def expected(version: str) -> list[float]:
    return tiny_module(HIDDEN[version])(torch.tensor([ROW])).detach().reshape(-1).tolist()


def add_version(repository: Path, name: str, version: str, files: dict[str, Path]) -> None:
    (repository / name / version).mkdir(parents=True)
    shutil.copy(files[version], repository / name / version / "model.pt2")


@contextlib.asynccontextmanager
async def live(repository: Path, **settings: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Dataplane]]:
    """The app serving `repository` live, with its lifespan running: an httpx client and its dataplane."""
    overrides = {"model_repository": str(repository), "grpc_port": 0, **settings}
    server = Server(Settings.load(overrides=overrides))
    server.load()
    app = server.app()
    async with app.starlette.router.lifespan_context(app.starlette):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://modelbay.test") as client:
            yield client, app.inference.dataplane


BODY = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}


async def answer(client: httpx.AsyncClient, path: str = "/v2/models/tiny/infer") -> list[float]:
    reply = await client.post(path, json=BODY)
    assert reply.status_code == 200, reply.text
    data: list[float] = reply.json()["outputs"][0]["data"]
    return data


async def index(client: httpx.AsyncClient) -> list[tuple[str, str, str]]:
    rows = (await client.post("/v2/repository/index")).json()
    return [(row["name"], row["version"], row["state"]) for row in rows]


async def test_versions_copied_in_and_removed_are_loaded_and_unloaded(
    tmp_path: Path, version_files: dict[str, Path]
) -> None:
    add_version(tmp_path, "tiny", "1", version_files)
    async with live(tmp_path) as (client, dataplane):
        assert await answer(client) == pytest.approx(expected("1"), abs=1e-6)
        add_version(tmp_path, "tiny", "2", version_files)
        rows = (await client.post("/v2/repository/index")).json()
        assert rows[1] == {"name": "tiny", "version": "2", "state": "UNAVAILABLE", "reason": "not loaded"}
        first = dataplane.registry.get("tiny", "1")

        assert (await client.post("/v2/repository/models/tiny/load")).status_code == 200
        assert await index(client) == [("tiny", "1", "READY"), ("tiny", "2", "READY")]
        assert await answer(client) == pytest.approx(expected("2"), abs=1e-6)  # the highest is the default
        first_answer = await answer(client, "/v2/models/tiny/versions/1/infer")
        assert first_answer == pytest.approx(expected("1"), abs=1e-6)
        assert dataplane.registry.get("tiny", "1") is first  # unchanged on disk: not loaded again

        shutil.rmtree(tmp_path / "tiny" / "1")
        assert (await client.post("/v2/repository/models/tiny/load")).status_code == 200
        assert await index(client) == [("tiny", "1", "UNAVAILABLE"), ("tiny", "2", "READY")]
        assert not first.ready
        gone = await client.post("/v2/models/tiny/versions/1/infer", json=BODY)
        assert gone.status_code == 404

        # A version's files replaced in place: loaded again, the new network answers.
        shutil.copy(version_files["3"], tmp_path / "tiny" / "2" / "model.pt2")
        assert (await client.post("/v2/repository/models/tiny/load")).status_code == 200
        assert await answer(client) == pytest.approx(expected("3"), abs=1e-6)


async def test_a_broken_new_version_fails_alone_and_the_index_says_why(
    tmp_path: Path, version_files: dict[str, Path]
) -> None:
    add_version(tmp_path, "tiny", "1", version_files)
    async with live(tmp_path) as (client, _):
        (tmp_path / "tiny" / "2").mkdir()
        (tmp_path / "tiny" / "2" / "model.pt2").write_bytes(b"not a model")
        reply = await client.post("/v2/repository/models/tiny/load")
        assert reply.status_code == 500 and "version 2" in reply.json()["error"]
        rows = (await client.post("/v2/repository/index")).json()
        assert [(row["version"], row["state"]) for row in rows] == [("1", "READY"), ("2", "FAILED")]
        assert "model.pt2" in rows[1]["reason"] or "pt2" in rows[1]["reason"], rows[1]["reason"]
        assert await answer(client) == pytest.approx(expected("1"), abs=1e-6)  # version 1 still answers

        shutil.copy(version_files["2"], tmp_path / "tiny" / "2" / "model.pt2")  # mended
        assert (await client.post("/v2/repository/models/tiny/load")).status_code == 200
        assert await answer(client) == pytest.approx(expected("2"), abs=1e-6)


async def test_set_default_rolls_back_and_forward(tmp_path: Path, version_files: dict[str, Path]) -> None:
    add_version(tmp_path, "tiny", "1", version_files)
    add_version(tmp_path, "tiny", "2", version_files)
    async with live(tmp_path) as (client, dataplane):
        dataplane.set_default_version("tiny", "1")
        assert await answer(client) == pytest.approx(expected("1"), abs=1e-6)
        add_version(tmp_path, "tiny", "3", version_files)
        assert (await client.post("/v2/repository/models/tiny/load")).status_code == 200
        assert await answer(client) == pytest.approx(expected("1"), abs=1e-6)  # the pin holds
        dataplane.set_default_version("tiny", None)
        assert await answer(client) == pytest.approx(expected("3"), abs=1e-6)
        with pytest.raises(ModelNotFound, match="no version '7'"):
            dataplane.set_default_version("tiny", "7")


async def test_explicit_mode_loads_only_the_named_models_at_start(
    tmp_path: Path, version_files: dict[str, Path]
) -> None:
    add_version(tmp_path, "tiny", "1", version_files)
    add_version(tmp_path, "other", "1", version_files)
    async with live(tmp_path, load_models=["tiny"]) as (client, _):
        assert await index(client) == [("other", "1", "UNAVAILABLE"), ("tiny", "1", "READY")]
        assert (await client.post("/v2/models/other/infer", json=BODY)).status_code == 404
        assert (await client.post("/v2/repository/models/other/load")).status_code == 200
        assert await answer(client, "/v2/models/other/infer") == pytest.approx(expected("1"), abs=1e-6)


async def test_a_load_config_overrides_the_model_settings_for_later_loads(
    tmp_path: Path, version_files: dict[str, Path]
) -> None:
    add_version(tmp_path, "tiny", "1", version_files)
    async with live(tmp_path) as (_, dataplane):
        await dataplane.load_model("tiny", config={"batching": {"max_batch_size": 3}})
        assert dataplane.registry.get("tiny").batching.max_batch_size == 3
        add_version(tmp_path, "tiny", "2", version_files)
        await dataplane.load_model("tiny")
        assert dataplane.registry.get("tiny", "2").batching.max_batch_size == 3
        with pytest.raises(InvalidInput, match="must be a JSON object"):
            await dataplane.load_model("tiny", config=["not", "a", "mapping"])  # type: ignore[arg-type]


async def test_control_mode_none_serves_the_start_and_refuses_changes(
    tmp_path: Path, version_files: dict[str, Path]
) -> None:
    add_version(tmp_path, "tiny", "1", version_files)
    async with live(tmp_path, model_control_mode="none") as (client, _):
        assert await index(client) == [("tiny", "1", "READY")]
        reply = await client.post("/v2/repository/models/tiny/unload")
        assert reply.status_code == 400 and "model control mode is none" in reply.json()["error"]
        assert await answer(client) == pytest.approx(expected("1"), abs=1e-6)


async def test_poll_mode_loads_a_version_once_its_files_stay_the_same(
    tmp_path: Path, version_files: dict[str, Path]
) -> None:
    add_version(tmp_path, "tiny", "1", version_files)
    # A long interval: the test drives the polls itself.
    async with live(tmp_path, model_control_mode="poll", repository_poll_s=3600) as (client, dataplane):
        manager = dataplane.manager
        assert manager is not None
        add_version(tmp_path, "tiny", "2", version_files)
        await manager.poll_once()  # first seen: maybe still being copied
        assert await index(client) == [("tiny", "1", "READY"), ("tiny", "2", "UNAVAILABLE")]
        await manager.poll_once()  # the same files one poll later: loaded
        assert await index(client) == [("tiny", "1", "READY"), ("tiny", "2", "READY")]
        assert await answer(client) == pytest.approx(expected("2"), abs=1e-6)
        reply = await client.post("/v2/repository/models/tiny/unload")
        assert reply.status_code == 400 and "remove its folder" in reply.json()["error"]

        shutil.rmtree(tmp_path / "tiny")
        await manager.poll_once()
        await manager.poll_once()
        assert [state for _, _, state in await index(client)] == ["UNAVAILABLE", "UNAVAILABLE"]
        assert (await client.post("/v2/models/tiny/infer", json=BODY)).status_code == 404


def test_settings_refuse_an_unknown_control_mode() -> None:
    with pytest.raises(msgspec.ValidationError, match="model_control_mode must be one of"):
        Settings(model_control_mode="sometimes")


async def test_a_model_name_never_reaches_outside_the_repository(
    tmp_path: Path, version_files: dict[str, Path]
) -> None:
    repository = tmp_path / "models"
    add_version(repository, "tiny", "1", version_files)
    add_version(tmp_path, "outside", "1", version_files)  # beside the repository, not in it
    async with live(repository) as (_, dataplane):
        for name in ("../outside", "tiny/../../outside", "..", ".hidden"):
            with pytest.raises(ModelNotFound):
                await dataplane.load_model(name)
        assert [model.name for model in dataplane.registry] == ["tiny"]


async def test_an_unloaded_version_is_freed_and_its_series_dropped(
    tmp_path: Path, version_files: dict[str, Path]
) -> None:
    add_version(tmp_path, "tiny", "1", version_files)
    async with live(tmp_path) as (client, dataplane):
        await answer(client)
        first = weakref.ref(dataplane.registry.get("tiny", "1"))
        add_version(tmp_path, "tiny", "2", version_files)
        shutil.rmtree(tmp_path / "tiny" / "1")
        await dataplane.load_model("tiny")  # version 2 in, version 1 out
        # Freed by the time the load returns: nothing (a metrics gauge, the manager) holds it, and
        # the manager collected its reference cycles.
        assert first() is None
        scraped = (await client.get("/metrics")).text
        assert 'modelbay_queue_depth{model="tiny",version="2"}' in scraped
        assert 'version="1"' not in scraped
