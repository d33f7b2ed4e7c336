"""Traffic policies over HTTP, in-process, with real versions of a real model: a weighted split
(canary), sticky assignment by a header (A/B), shadow calls (recorded and compared, never
returned, never failing the caller), runtime changes through the management API."""

from __future__ import annotations

import asyncio
import collections
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import torch

from modelbay.runtime.dataplane import Dataplane
from modelbay.runtime.fetch import UrlFetcher
from modelbay.server import DEFAULT_MODEL, Server
from modelbay.settings import Settings
from tests.conftest import SAMPLES, sample, tiny_module
from tests.http.test_live_repository import live
from tests.unit.test_fetch import Origin, answer, loopback_allowed, resolver

pytestmark = pytest.mark.anyio
ROW = [0.5, -1.0, 2.0, 0.25]
BODY = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}
# Each version a different network, so an answer tells which one computed it; 4 is 2's twin.
HIDDEN = {"1": 8, "2": 16, "3": 5, "4": 16}
TRAFFIC = "/v2/repository/models/tiny/traffic"
# A version that fails every batch, and one that holds its batch until a file named "go" appears
# in its folder (so a test decides when it answers, without sleeping).
FAILING = """
def load(model_dir):
    return None


def predict(model, inputs):
    raise RuntimeError("the shadow version is broken")
"""
HELD = """
import time
from pathlib import Path


def load(model_dir):
    return Path(model_dir) / "go"


def predict(go, inputs):
    deadline = time.monotonic() + 30
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return [{"held": True} for _ in inputs]
"""


@pytest.fixture(scope="module")
def version_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("traffic-versions")
    files = {}
    for version, hidden in HIDDEN.items():
        batch = torch.export.Dim("batch")
        program = torch.export.export(tiny_module(hidden), (torch.randn(2, 4),), dynamic_shapes=({0: batch},))
        files[version] = out / f"v{version}.pt2"
        torch.export.save(program, files[version])
    return files


def expected(version: str) -> list[float]:
    return tiny_module(HIDDEN[version])(torch.tensor([ROW])).detach().reshape(-1).tolist()


def repository(root: Path, files: dict[str, Path], *versions: str) -> Path:
    for version in versions:
        (root / "tiny" / version).mkdir(parents=True)
        shutil.copy(files[version], root / "tiny" / version / "model.pt2")
    return root


def handler_version(root: Path, version: str, code: str, manifest: str = "") -> Path:
    folder = root / "tiny" / version
    folder.mkdir(parents=True)
    (folder / "predict.py").write_text(code)
    (folder / "modelbay.yaml").write_text(manifest or "timeout_s: 30\n")
    return folder


async def infer(client: httpx.AsyncClient, path: str = "/v2/models/tiny/infer", **headers: str) -> str:
    """One inference; returns the version that answered, after checking its outputs are that version's."""
    reply = await client.post(path, json=BODY, headers=headers)
    assert reply.status_code == 200, reply.text
    version = reply.headers["x-model-version"]
    assert reply.json()["model_version"] == version
    assert reply.json()["outputs"][0]["data"] == pytest.approx(expected(version), abs=1e-6)
    return version


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not within 10 s")


async def shadows_done(dataplane: Dataplane) -> None:
    await until(lambda: not dataplane.shadows.in_flight)


async def test_the_split_sends_each_version_its_share(tmp_path: Path, version_files: dict[str, Path]) -> None:
    async with live(repository(tmp_path, version_files, "2", "3")) as (client, dataplane):
        dataplane.random = random.Random(2024).random
        reply = await client.post(TRAFFIC, json={"split": {"2": 90, "3": 10}})
        assert reply.status_code == 200, reply.text
        assert reply.json()["serving"] == {"split": {"2": 90.0, "3": 10.0}, "shadow": None}
        counts = collections.Counter([await infer(client) for _ in range(2000)])
        assert counts["3"] / 2000 == pytest.approx(0.10, abs=0.02), counts
        # The /predict door follows the same policy.
        predicted = collections.Counter()
        for _ in range(400):
            reply = await client.post("/predict/tiny", json={"input": ROW})
            assert reply.headers["x-model-version"] == reply.json()["version"]
            predicted[reply.json()["version"]] += 1
        assert predicted["3"] / 400 == pytest.approx(0.10, abs=0.05), predicted
        scraped = (await client.get("/metrics")).text
        served = {
            v: sample(scraped, "modelbay_requests_total", model="tiny", version=v, door="infer") for v in "23"
        }
        assert served == {"2": counts["2"], "3": counts["3"]}  # the metrics carry the version


async def test_a_sticky_caller_always_gets_the_same_version(
    tmp_path: Path, version_files: dict[str, Path]
) -> None:
    async with live(repository(tmp_path, version_files, "2", "3")) as (client, _):
        policy = {"split": {"2": 50, "3": 50}, "sticky": {"header": "X-User-Id"}}
        assert (await client.post(TRAFFIC, json=policy)).status_code == 200
        seen = {}
        for user in range(40):
            versions = {await infer(client, **{"x-user-id": f"user-{user}"}) for _ in range(5)}
            assert len(versions) == 1, (user, versions)
            seen[user] = versions.pop()
        assert set(seen.values()) == {"2", "3"}
        # The routing key keeps a caller without the header on one version too.
        assert len({await infer(client, **{"modelbay-routing-key": "session-7"}) for _ in range(10)}) == 1
        # Without either, calls spread over both.
        assert {await infer(client) for _ in range(60)} == {"2", "3"}


async def test_a_call_naming_its_version_bypasses_the_policy(
    tmp_path: Path, version_files: dict[str, Path]
) -> None:
    async with live(repository(tmp_path, version_files, "1", "2", "3")) as (client, _):
        assert (await client.post(TRAFFIC, json={"split": {"3": 1}})).status_code == 200
        assert {await infer(client) for _ in range(10)} == {"3"}
        assert {await infer(client, "/v2/models/tiny/versions/1/infer") for _ in range(10)} == {"1"}
        reply = await client.post("/predict/tiny/versions/2", json={"input": ROW})
        assert reply.headers["x-model-version"] == "2" and reply.json()["version"] == "2"


async def test_shadow_answers_are_counted_and_compared_never_returned(
    tmp_path: Path, version_files: dict[str, Path]
) -> None:
    async with live(repository(tmp_path, version_files, "2", "3", "4")) as (client, dataplane):
        dataplane.set_default_version("tiny", "2")
        policy = {"shadow": {"version": "3", "percent": 100}}
        assert (await client.post(TRAFFIC, json=policy)).json()["serving"] == {"split": None, "shadow": "3"}
        assert {await infer(client) for _ in range(30)} == {"2"}  # version 3 never answers
        await shadows_done(dataplane)
        scraped = (await client.get("/metrics")).text
        labels = {"model": "tiny", "version": "3"}
        assert sample(scraped, "modelbay_shadow_requests_total", status="success", **labels) == 30
        assert sample(scraped, "modelbay_shadow_duration_seconds_count", **labels) == 30
        assert sample(scraped, "modelbay_shadow_agreement_total", result="disagree", **labels) == 30
        assert sample(scraped, "modelbay_requests_total", **labels) == 0  # not counted as served

        # Version 4 has version 2's weights: it agrees, on both doors.
        policy = {"shadow": {"version": "4", "percent": 100}}
        assert (await client.post(TRAFFIC, json=policy)).status_code == 200
        for _ in range(10):
            await infer(client)
            reply = await client.post("/predict/tiny", json={"inputs": [ROW, ROW]})
            assert reply.json()["version"] == "2"
        await shadows_done(dataplane)
        scraped = (await client.get("/metrics")).text
        labels = {"model": "tiny", "version": "4"}
        assert sample(scraped, "modelbay_shadow_agreement_total", result="agree", **labels) == 20
        assert sample(scraped, "modelbay_shadow_agreement_total", result="disagree", **labels) == 0

        # Unloaded, the shadow version stops being shadowed and its series go.
        shutil.rmtree(tmp_path / "tiny" / "4")
        assert (await client.post("/v2/repository/models/tiny/load")).status_code == 200
        assert (await client.get(TRAFFIC)).json()["serving"] == {"split": None, "shadow": None}
        await infer(client)
        assert dataplane.shadows.in_flight == 0
        assert 'version="4"' not in (await client.get("/metrics")).text


async def test_a_shadow_at_a_share_shadows_that_share(tmp_path: Path, version_files: dict[str, Path]) -> None:
    async with live(repository(tmp_path, version_files, "2", "3")) as (client, dataplane):
        dataplane.random = random.Random(5).random
        policy = {"split": {"2": 1}, "shadow": {"version": "3", "percent": 20}}
        assert (await client.post(TRAFFIC, json=policy)).status_code == 200
        for _ in range(1000):
            await infer(client)
        await shadows_done(dataplane)
        shadowed = sample((await client.get("/metrics")).text, "modelbay_shadow_requests_total", version="3")
        assert shadowed / 1000 == pytest.approx(0.20, abs=0.04)


async def test_a_failing_or_slow_shadow_never_fails_or_holds_the_caller(
    tmp_path: Path, version_files: dict[str, Path]
) -> None:
    repository(tmp_path, version_files, "2")
    handler_version(tmp_path, "5", FAILING)
    held = handler_version(
        tmp_path, "6", HELD, "timeout_s: 30\nbatching: {max_batch_size: 1, max_queue_size: 2}\n"
    )
    late = handler_version(tmp_path, "7", HELD, "timeout_s: 0.2\n")
    async with live(tmp_path) as (client, dataplane):
        dataplane.set_default_version("tiny", "2")
        labels = {"model": "tiny"}

        assert (await client.post(TRAFFIC, json={"shadow": {"version": "5"}})).status_code == 200
        for _ in range(5):
            reply = await client.post("/predict/tiny", json={"input": ROW})
            assert reply.status_code == 200 and reply.json()["version"] == "2"
        await shadows_done(dataplane)
        scraped = (await client.get("/metrics")).text
        assert (
            sample(scraped, "modelbay_shadow_requests_total", version="5", status="InferenceFailed", **labels)
            == 5
        )
        assert sample(scraped, "modelbay_requests_total", version="5", **labels) == 0

        # A shadow past its version's timeout_s is cancelled and counted; the caller had its answer.
        assert (await client.post(TRAFFIC, json={"shadow": {"version": "7"}})).status_code == 200
        reply = await client.post("/predict/tiny", json={"input": ROW})
        assert reply.status_code == 200 and reply.json()["version"] == "2"
        await shadows_done(dataplane)
        scraped = (await client.get("/metrics")).text
        assert sample(scraped, "modelbay_shadow_requests_total", version="7", status="DeadlineExceeded") == 1

        # A shadow version whose queue is half full is skipped, not waited for.
        shadow = dataplane.registry.get("tiny", "6")
        assert (await client.post(TRAFFIC, json={"shadow": {"version": "6"}})).status_code == 200
        assert (await client.post("/predict/tiny", json={"input": ROW})).status_code == 200
        await until(lambda: shadow.batcher.stalled(0.0))  # the first shadow is in the model, held
        assert (await client.post("/predict/tiny", json={"input": ROW})).status_code == 200
        await until(lambda: shadow.batcher.queue_depth == 1)  # the second waits in its queue
        assert dataplane.shadows.in_flight == 2  # both shadows wait, their callers were answered
        reply = await client.post("/predict/tiny", json={"input": ROW})
        assert reply.status_code == 200 and reply.json()["version"] == "2"
        scraped = (await client.get("/metrics")).text
        assert sample(scraped, "modelbay_shadow_requests_total", version="6", status="skipped") == 1
        (held / "go").touch()
        (late / "go").touch()  # its batch, whose shadow was cancelled, ends too
        await shadows_done(dataplane)
        scraped = (await client.get("/metrics")).text
        assert sample(scraped, "modelbay_shadow_requests_total", version="6", status="success") == 2
        # Predictions are compared as JSON: {"held": true} is not what version 2 said.
        assert sample(scraped, "modelbay_shadow_agreement_total", version="6", result="disagree") == 2


async def test_a_runtime_change_is_atomic_and_refused_for_versions_not_loaded(
    tmp_path: Path, version_files: dict[str, Path]
) -> None:
    async with live(repository(tmp_path, version_files, "1", "2")) as (client, _):
        assert (await client.post(TRAFFIC, json={"split": {"1": 100}})).status_code == 200
        refused = await client.post(TRAFFIC, json={"split": {"1": 50, "3": 50}})
        assert refused.status_code == 400
        assert "version(s) ['3'] of model 'tiny'" in refused.json()["error"]
        bad = await client.post(TRAFFIC, json={"split": {"1": -5}})
        assert bad.status_code == 400 and "split weights must be >= 0" in bad.json()["error"]
        assert (await client.post(TRAFFIC, content=b"")).status_code == 400
        assert (await client.post("/v2/repository/models/nope/traffic", content=b"null")).status_code == 404
        now = (await client.get(TRAFFIC)).json()
        assert now == {
            "name": "tiny",
            "traffic": {"split": {"1": 100.0}, "sticky": None, "shadow": None},
            "serving": {"split": {"1": 100.0}, "shadow": None},
        }

        # Calls in flight while the policy changes each get the old policy or the new, whole.
        answered: list[list[str]] = [[], [], [], []]

        async def calls(seen: list[str]) -> None:
            for _ in range(40):
                seen.append(await infer(client))

        async def change() -> None:
            while sum(map(len, answered)) < 60:  # midway through the calls
                await asyncio.sleep(0.001)
            assert (await client.post(TRAFFIC, json={"split": {"2": 100}})).status_code == 200

        await asyncio.gather(*(calls(seen) for seen in answered), change())
        for versions in answered:
            assert set(versions) == {"1", "2"}, versions
            first_new = versions.index("2")
            assert set(versions[first_new:]) == {"2"}  # once a caller saw the new policy, never the old
        assert {await infer(client) for _ in range(20)} == {"2"}
        cleared = await client.post(TRAFFIC, content=b"null")  # JSON null clears it
        assert cleared.json()["traffic"] is None and cleared.json()["serving"]["split"] is None
        assert {await infer(client) for _ in range(5)} == {"2"}  # the default (highest) again


async def test_the_policy_of_modelbay_yaml_applies_and_an_unloaded_version_drops_out(
    tmp_path: Path, version_files: dict[str, Path]
) -> None:
    repository(tmp_path, version_files, "1", "2", "3")
    (tmp_path / "tiny" / "modelbay.yaml").write_text("traffic:\n  split: {1: 50, 3: 50}\n")
    async with live(tmp_path) as (client, dataplane):
        dataplane.random = random.Random(1).random
        assert (await client.get(TRAFFIC)).json()["serving"]["split"] == {"1": 50.0, "3": 50.0}
        assert {await infer(client) for _ in range(40)} == {"1", "3"}
        shutil.rmtree(tmp_path / "tiny" / "3")
        assert (await client.post("/v2/repository/models/tiny/load")).status_code == 200
        state = (await client.get(TRAFFIC)).json()
        assert state["traffic"]["split"] == {"1": 50.0, "3": 50.0}  # the policy stands...
        assert state["serving"]["split"] == {"1": 100.0}  # ...renormalised over what is loaded
        assert {await infer(client) for _ in range(20)} == {"1"}
        shutil.rmtree(tmp_path / "tiny" / "1")
        assert (await client.post("/v2/repository/models/tiny/load")).status_code == 200
        assert (await client.get(TRAFFIC)).json()["serving"]["split"] is None
        assert {await infer(client) for _ in range(5)} == {"2"}  # none left: the default answers


async def test_a_shadow_of_a_url_input_gets_the_fetched_bytes_and_fetches_nothing() -> None:
    """Inputs by URL (url_inputs): the served version fetches the image once; its shadow predicts
    from the same bytes, though the shadow version itself allows no URL."""
    policy = {"allow_hosts": ["images.test"], "allow_http": True}
    models = [
        {"path": str(DEFAULT_MODEL), "url_inputs": policy},
        {"path": str(DEFAULT_MODEL), "version": "2"},
    ]
    server = Server(Settings.load(overrides={"grpc_port": 0, "models": models}))
    server.load()
    app = server.app()
    dataplane = app.inference.dataplane
    dataplane.fetcher = UrlFetcher(resolver({"images.test": ["127.0.0.1"]}), loopback_allowed)
    seven = (SAMPLES / "7.png").read_bytes()
    lifespan = app.starlette.router.lifespan_context(app.starlette)
    async with lifespan, Origin({"/7.png": answer(200, seven)}) as origin:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://modelbay.test") as client:
            policy_body = {"split": {"1": 100}, "shadow": {"version": "2"}}
            assert (
                await client.post("/v2/repository/models/digits/traffic", json=policy_body)
            ).status_code == 200
            reply = await client.post(
                "/predict/digits", json={"url": origin.url("/7.png", host="images.test")}
            )
            assert reply.status_code == 200, reply.text
            assert reply.json()["version"] == "1" and reply.json()["predictions"][0]["label"] == "7"
            await shadows_done(dataplane)
            scraped = (await client.get("/metrics")).text
    assert origin.paths == ["/7.png"]  # fetched once, for the served call
    labels = {"model": "digits", "version": "2"}
    assert sample(scraped, "modelbay_shadow_requests_total", status="success", **labels) == 1
    assert sample(scraped, "modelbay_shadow_agreement_total", result="agree", **labels) == 1
