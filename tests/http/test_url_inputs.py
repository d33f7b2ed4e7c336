"""Inputs by URL through the simple door, in-process: a real digits model, a real HTTP origin on
loopback serving the example scans, and the server's fetcher given the test's resolver and an
address check that lets that one loopback address through (tests/unit/test_fetch.py says why).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from modelbay.runtime.fetch import UrlFetcher
from modelbay.server import DEFAULT_MODEL, Server
from modelbay.settings import Settings
from tests.conftest import SAMPLES
from tests.unit.test_fetch import Origin, answer, loopback_allowed, redirect, resolver, stall

pytestmark = pytest.mark.anyio

NAMES = {"images.test": ["127.0.0.1"], "internal.test": ["10.0.0.5"]}
POLICY = {"allow_hosts": ["images.test", "internal.test"], "allow_http": True, "max_bytes": 4096}


def scan(digit: int) -> bytes:
    return (SAMPLES / f"{digit}.png").read_bytes()


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    routes = {f"/{digit}.png": answer(200, scan(digit)) for digit in range(10)}
    async with Origin(routes) as served:
        served.routes["/big.png"] = answer(200, b"x" * 5000)
        served.routes["/slow.png"] = stall
        served.routes["/inside.png"] = redirect(served.url("/7.png", host="internal.test"))
        yield served


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """digits (URLs from images.test, 1 s to fetch), strict (the same, with a 0.3 s request
    deadline and 10 s to fetch), plain (no url_inputs), cached (with a prediction cache)."""
    models: list[dict[str, Any]] = [
        {"path": str(DEFAULT_MODEL), "url_inputs": {**POLICY, "timeout_s": 1.0}},
        {"path": str(DEFAULT_MODEL), "name": "strict", "timeout_s": 0.3, "url_inputs": POLICY},
        {"path": str(DEFAULT_MODEL), "name": "plain"},
        {"path": str(DEFAULT_MODEL), "name": "cached", "cache": {"max_entries": 8}, "url_inputs": POLICY},
    ]
    server = Server(Settings.load(overrides={"grpc_port": 0, "models": models}))
    server.load()
    app = server.app()
    app.inference.dataplane.fetcher = UrlFetcher(resolver(NAMES), loopback_allowed)
    async with app.starlette.router.lifespan_context(app.starlette):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://modelbay.test") as http:
            yield http


async def test_an_image_by_url_is_predicted_as_the_same_image_uploaded(
    client: httpx.AsyncClient, origin: Origin
) -> None:
    uploaded = (await client.post("/predict/digits", content=scan(7))).json()
    assert uploaded["predictions"][0]["label"] == "7"
    by_query = await client.post("/predict/digits", params={"url": origin.url("/7.png")})
    by_json = await client.post("/predict/digits", json={"url": origin.url("/7.png")})
    for response in (by_query, by_json):
        assert response.status_code == 200, response.text
        assert response.json() == uploaded
    assert origin.paths == ["/7.png", "/7.png"]


async def test_several_urls_answer_in_order(client: httpx.AsyncClient, origin: Origin) -> None:
    urls = [origin.url(f"/{digit}.png") for digit in (3, 8, 1)]
    uploaded = await client.post(
        "/predict/digits", json={"inputs": [base64.b64encode(scan(d)).decode() for d in (3, 8, 1)]}
    )
    by_json = await client.post("/predict/digits", json={"urls": urls})
    by_query = await client.post("/predict/digits", params=[("url", url) for url in urls])
    for response in (by_json, by_query):
        assert response.status_code == 200, response.text
        assert response.json()["predictions"] == uploaded.json()["predictions"]
        assert [p[0]["label"] for p in response.json()["predictions"]] == ["3", "8", "1"]


async def test_a_model_without_url_inputs_refuses_urls_and_fetches_nothing(
    client: httpx.AsyncClient, origin: Origin
) -> None:
    for request in ({"params": {"url": origin.url("/7.png")}}, {"json": {"url": origin.url("/7.png")}}):
        response = await client.post("/predict/plain", **request)
        assert response.status_code == 400
        assert response.json() == {
            "error": "model 'plain' does not take inputs by URL (its settings have no url_inputs)"
        }
    assert origin.paths == []


async def test_the_door_takes_one_form_at_a_time(client: httpx.AsyncClient, origin: Origin) -> None:
    url = origin.url("/7.png")
    cases: dict[str, dict[str, Any]] = {
        "send the example in the body or as ?url=, not both": {"params": {"url": url}, "content": scan(7)},
        "send one of input, inputs, url or urls, not input and url": {"json": {"url": url, "input": "x"}},
        '"url" must be a string, got int': {"json": {"url": 7}},
        '"urls" must be a list of one or more URL strings': {"json": {"urls": []}},
    }
    for error, request in cases.items():
        response = await client.post("/predict/digits", **request)
        assert (response.status_code, response.json()) == (400, {"error": error})
    empty = await client.post("/predict/digits", params={"url": ""})
    assert empty.json() == {"error": "only https and http URLs are fetched; it has no scheme"}
    assert origin.paths == []


async def test_refusals_and_failures_get_their_status(client: httpx.AsyncClient, origin: Origin) -> None:
    cases = {
        origin.url("/7.png", host="evil.test"): (
            400,
            "host 'evil.test' is not in the model's url_inputs.allow_hosts",
        ),
        origin.url("/7.png", host="internal.test"): (
            400,
            "internal.test resolves to 10.0.0.5, a private address; "
            "URL inputs are never fetched from such addresses",
        ),
        origin.url("/inside.png"): (
            400,
            "internal.test resolves to 10.0.0.5, a private address; "
            "URL inputs are never fetched from such addresses",
        ),
        origin.url("/none.png"): (
            400,
            f"fetching {origin.url('/none.png')} failed: images.test answered 404 X",
        ),
        origin.url("/big.png"): (
            413,
            f"the body at {origin.url('/big.png')} is over the model's url_inputs.max_bytes (4096 bytes)",
        ),
        origin.url("/slow.png"): (
            504,
            f"fetching {origin.url('/slow.png')} took longer than the model's url_inputs.timeout_s (1.0 s)",
        ),
    }
    for url, (status, error) in cases.items():
        response = await client.post("/predict/digits", params={"url": url})
        assert (response.status_code, response.json()) == (status, {"error": error}), url


async def test_the_requests_deadline_bounds_the_fetch(client: httpx.AsyncClient, origin: Origin) -> None:
    response = await client.post("/predict/strict", json={"url": origin.url("/slow.png")})
    assert response.status_code == 504
    assert response.json()["error"].startswith("model 'strict' did not answer within the request's deadline")


async def test_with_a_cache_the_url_is_the_key(client: httpx.AsyncClient, origin: Origin) -> None:
    answers = [await client.post("/predict/cached", json={"url": origin.url("/4.png")}) for _ in range(2)]
    assert answers[0].json() == answers[1].json()
    assert answers[0].json()["predictions"][0]["label"] == "4"
    assert origin.paths == ["/4.png"]  # the second was answered from the cache, not fetched again
    raw = await client.post("/predict/cached", content=scan(4))
    assert raw.json() == answers[0].json()
    other = await client.post("/predict/cached", json={"url": origin.url("/4.png") + "?again"})
    assert other.json() == answers[0].json() and origin.paths == ["/4.png", "/4.png?again"]
