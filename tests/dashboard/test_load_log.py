"""Each version's load log (registry/load_log.py) and its route, in-process: the lines of a load and
only those, the error that made a version FAILED, the bounds, and who may read it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelbay.auth.keys import create_key
from modelbay.registry.load_log import LoadLog
from modelbay.server import Server
from modelbay.settings import Settings
from tests.conftest import asgi_client

pytestmark = pytest.mark.anyio
log = logging.getLogger("modelbay.test")


@pytest.fixture(autouse=True)
def info_logs(caplog: pytest.LogCaptureFixture) -> None:
    """The server's log at INFO, as `modelbay serve` sets it (the load log keeps what passes it)."""
    caplog.set_level(logging.INFO, logger="modelbay")


async def test_a_capture_keeps_its_own_lines_and_its_threads_but_not_other_tasks() -> None:
    loads = LoadLog()

    async def request() -> None:  # another task, e.g. a request served during the load
        for _ in range(3):
            log.info("a request's line")
            await asyncio.sleep(0)

    async def load() -> None:
        with loads.capture("m", "1"):
            log.info("first")
            await asyncio.sleep(0)
            await asyncio.to_thread(log.warning, "from the build thread")
            log.debug("below the level: not logged, not kept")
            log.error("last")

    await asyncio.gather(request(), load())
    lines = loads.lines("m", "1")
    assert [line.split(" ", 2)[2] for line in lines] == [
        "INFO modelbay.test: first",
        "WARNING modelbay.test: from the build thread",
        "ERROR modelbay.test: last",
    ]
    log.info("after the load")
    assert len(loads.lines("m", "1")) == 3
    assert loads._handler not in logging.getLogger().handlers
    assert loads.lines("m", "2") == []


def test_a_new_load_starts_afresh_and_the_logs_are_bounded() -> None:
    loads = LoadLog(max_lines=3, max_versions=2)
    with loads.capture("m", "1"):
        for n in range(5):
            log.info("line %d", n)
    assert [line.rsplit(" ", 1)[1] for line in loads.lines("m", "1")] == ["2", "3", "4"]
    with loads.capture("m", "1"):
        log.info("again")
    assert [line.rsplit(": ", 1)[1] for line in loads.lines("m", "1")] == ["again"]
    with loads.capture("m", "2"):
        log.info("two")
    with loads.capture("m", "3"):
        log.info("three")
    assert loads.lines("m", "1") == []  # the oldest load's log went first
    assert loads.lines("m", "2") and loads.lines("m", "3")


def test_two_logs_keep_apart() -> None:
    first, second = LoadLog(), LoadLog()
    with first.capture("m", "1"), second.capture("n", "1"):
        log.info("inner")
    with first.capture("m", "1"):
        log.info("only the first's")
    assert len(first.lines("m", "1")) == 1 and "only the first's" in first.lines("m", "1")[0]
    assert len(second.lines("n", "1")) == 1 and "inner" in second.lines("n", "1")[0]


@contextlib.asynccontextmanager
async def live(
    repository: Path, client: tuple[str, int] = ("127.0.0.1", 50000), **settings: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """The repository served in-process (only digits loaded at start), called from `client`."""
    overrides = {"model_repository": str(repository), "load_models": ["digits"], **settings}
    async with asgi_client(Server(Settings.load(overrides=overrides)), client) as http:
        yield http


def messages(reply: httpx.Response) -> list[str]:
    return [line.split(" ", 3)[3] for line in reply.json()["lines"]]


async def test_the_route_gives_a_load_s_steps_and_the_error_that_made_it_failed(repository: Path) -> None:
    async with live(repository) as http:
        started = await http.get("/v2/repository/models/digits/versions/1/log")
        assert {key: value for key, value in started.json().items() if key != "lines"} == {
            "name": "digits",
            "version": "1",
            "state": "READY",
            "reason": "",
        }
        said = messages(started)  # a version loaded when the server started has its log too
        assert said[0].startswith("modelbay.server: loading model 'digits' version 1 from ")
        assert any("version 1: set up and warmed up in " in line for line in said)
        not_loaded = await http.get("/v2/repository/models/broken/versions/1/log")
        assert not_loaded.json()["state"] == "UNAVAILABLE" and not_loaded.json()["lines"] == []

        assert (await http.post("/v2/repository/models/broken/load")).status_code == 500
        reply = await http.get("/v2/repository/models/broken/versions/1/log")
        assert reply.status_code == 200
        body = reply.json()
        assert body["state"] == "FAILED" and "INVALID_PROTOBUF" in body["reason"]
        said = messages(reply)
        assert said[0] == "modelbay.manager: loading model 'broken' version 1"
        assert said[-1].startswith("modelbay.manager: model 'broken' version 1 failed to load: ")
        assert body["reason"] in said[-1]
        assert reply.json()["lines"][-1].split(" ")[2] == "ERROR"

        assert (await http.post("/v2/repository/models/digits-onnx/load")).status_code == 200
        said = messages(await http.get("/v2/repository/models/digits-onnx/versions/1/log"))
        path = repository / "digits-onnx" / "1" / "model.onnx"
        assert said[0] == "modelbay.manager: loading model 'digits-onnx' version 1"
        assert said[1] == f"modelbay.manager: model 'digits-onnx' version 1: read {path} (onnxruntime_onnx)"
        assert said[2].startswith("modelbay.manager: model 'digits-onnx' version 1: set up and warmed up in ")
        assert said[3].startswith("modelbay.manager: model 'digits-onnx' version 1 ready in ")

        for path in (
            "/v2/repository/models/digits/versions/9/log",
            "/v2/repository/models/nope/versions/1/log",
        ):
            missing = await http.get(path)
            assert missing.status_code == 404 and "repository index" in missing.json()["error"]


async def test_the_route_is_the_model_repository_api_s(repository: Path, tmp_path: Path) -> None:
    route = "/v2/repository/models/digits/versions/1/log"
    async with live(repository, client=("10.1.2.3", 40000)) as http:
        refused = await http.get(route)
        assert refused.status_code == 403 and "loopback" in refused.json()["error"]
    keys = tmp_path / "keys.yaml"
    infer, _ = create_key(keys, "app", ["infer"])
    admin, _ = create_key(keys, "ops", ["admin"])
    async with live(repository, client=("10.1.2.3", 40000), auth=str(keys)) as http:
        assert (await http.get(route)).status_code == 401
        assert (await http.get(route, headers={"authorization": f"Bearer {infer}"})).status_code == 403
        assert (await http.get(route, headers={"authorization": f"Bearer {admin}"})).status_code == 200
