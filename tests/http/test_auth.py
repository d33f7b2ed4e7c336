"""API keys at the HTTP door, in-process: every kind of route (the raw-ASGI hot routes, Starlette's
model routes, the model repository API) answers 401 without a valid key, 403 with one of the wrong
scope or model, 429 over its rate limit; health and /metrics stay open unless `auth_health`."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from modelbay.auth.keys import create_key, revoke_key
from modelbay.runtime.context import RequestContext
from modelbay.server import Server
from modelbay.settings import Settings

pytestmark = pytest.mark.anyio
ROW = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
PREDICT = {"input": [1, 2, 3, 4]}
OFF_LOOPBACK = ("10.1.2.3", 40000)


def key_file(folder: Path) -> tuple[Path, dict[str, str]]:
    """A key file of five keys (made by `modelbay keys create`'s code): their names -> keys."""
    path = folder / "keys.yaml"
    keys = {
        "app": create_key(path, "app", ["infer"], ["tiny"])[0],
        "all": create_key(path, "all", ["infer"])[0],
        "ops": create_key(path, "ops", ["admin"])[0],
        "slow": create_key(path, "slow", ["infer"], rate_per_s=0.001, burst=2)[0],
    }
    return path, keys


@contextlib.asynccontextmanager
async def served(
    tiny: torch.nn.Module, path: Path, client: tuple[str, int] = ("127.0.0.1", 50000), **settings: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """Models "tiny" and "other" behind `--auth path`, called in-process from `client`'s address."""
    server = Server(Settings(grpc_port=0, auth=str(path), **settings))
    server.add_model("tiny", tiny, example=torch.zeros(1, 4))
    server.add_model("other", tiny, example=torch.zeros(1, 4))
    server.load()
    app = server.app()
    async with app.starlette.router.lifespan_context(app.starlette):
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://modelbay.test") as http:
            yield http


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


# (method, path, JSON body) of every kind of route that needs a key, for model "tiny".
ROUTES = [
    ("POST", "/v2/models/tiny/infer", ROW),  # hot, raw ASGI
    ("POST", "/v2/models/tiny/versions/1/infer", ROW),
    ("POST", "/predict/tiny", PREDICT),  # hot, raw ASGI
    ("GET", "/v2/models/tiny", None),  # Starlette
    ("GET", "/v2/models/tiny/versions/1/ready", None),
    ("POST", "/v2/repository/index", {}),  # the model repository API
    ("POST", "/v2/repository/models/tiny/default", {"version": "1"}),
]
OPEN = ["/v2/health/live", "/v2/health/ready", "/v2", "/metrics", "/openapi.json"]


async def call(http: httpx.AsyncClient, method: str, path: str, body: Any, **headers: str) -> httpx.Response:
    return await http.request(method, path, json=body, headers=headers)


async def test_every_route_kind_needs_a_valid_key(tiny: torch.nn.Module, tmp_path: Path) -> None:
    path, keys = key_file(tmp_path)
    async with served(tiny, path) as http:
        for method, route, body in ROUTES:
            for headers in ({}, bearer("mb_not-a-key"), {"x-api-key": "mb_not-a-key"}):
                reply = await call(http, method, route, body, **headers)
                assert reply.status_code == 401, (route, headers, reply.text)
                assert reply.headers["www-authenticate"] == 'Bearer realm="modelbay"'
                error = reply.json()["error"]
                assert "needs an API key" in error or "not valid" in error
                assert "mb_not-a-key" not in error
            reply = await call(http, method, route, body, authorization="Basic dXNlcjpwYXNz")
            assert reply.status_code == 401 and "must be 'Bearer <key>'" in reply.json()["error"]
            for headers in (bearer(keys["ops"]), {"x-api-key": keys["ops"]}):  # admin implies infer
                reply = await call(http, method, route, body, **headers)
                assert reply.status_code == 200, (route, reply.text)


async def test_infer_keys_reach_their_models_only_and_never_the_repository_api(
    tiny: torch.nn.Module, tmp_path: Path
) -> None:
    path, keys = key_file(tmp_path)
    async with served(tiny, path) as http:
        for method, route, body in ROUTES:
            if route.startswith("/v2/repository"):
                for name in ("app", "all"):
                    reply = await call(http, method, route, body, **bearer(keys[name]))
                    assert reply.status_code == 403
                    assert reply.json()["error"] == (
                        f"API key '{name}' may not use the model repository API: that needs the "
                        "admin scope, and it has infer"
                    )
                continue
            for name in ("app", "all"):
                assert (await call(http, method, route, body, **bearer(keys[name]))).status_code == 200
            other = route.replace("tiny", "other")
            assert (await call(http, method, other, body, **bearer(keys["all"]))).status_code == 200
            reply = await call(http, method, other, body, **bearer(keys["app"]))
            assert reply.status_code == 403, other
            assert reply.json()["error"] == "API key 'app' may not use model 'other'; it may use tiny"
        # A route added later under /v2/repository is the admin's too (checked by prefix).
        reply = await http.post("/v2/repository/models/tiny/some-new-route", headers=bearer(keys["all"]))
        assert reply.status_code == 403
        reply = await http.post("/v2/repository/models/tiny/some-new-route", headers=bearer(keys["ops"]))
        assert reply.status_code == 404


async def test_health_and_metrics_stay_open_unless_auth_health(tiny: torch.nn.Module, tmp_path: Path) -> None:
    path, keys = key_file(tmp_path)
    async with served(tiny, path) as http:
        for route in OPEN:
            assert (await http.get(route)).status_code == 200, route
            assert (await http.get(route, headers=bearer("mb_not-a-key"))).status_code == 200, route
    async with served(tiny, path, auth_health=True) as http:
        for route in OPEN:
            assert (await http.get(route)).status_code == 401, route
            assert (await http.get(route, headers=bearer(keys["app"]))).status_code == 200, route


async def test_an_admin_key_manages_from_any_address_and_nothing_else_does(
    tiny: torch.nn.Module, tmp_path: Path
) -> None:
    path, keys = key_file(tmp_path)
    async with served(tiny, path, OFF_LOOPBACK) as http:
        reply = await http.post("/v2/repository/index", headers=bearer(keys["ops"]))
        assert reply.status_code == 200
        assert {(row["name"], row["state"]) for row in reply.json()} == {
            ("tiny", "READY"),
            ("other", "READY"),
        }
        assert (await http.post("/v2/repository/index")).status_code == 401
        reply = await http.post("/v2/repository/models/other/unload", headers=bearer(keys["ops"]))
        assert reply.status_code == 200
        assert (
            await http.post("/predict/other", json=PREDICT, headers=bearer(keys["all"]))
        ).status_code == 404


async def test_a_key_over_its_rate_limit_gets_429_with_retry_after(
    tiny: torch.nn.Module, tmp_path: Path
) -> None:
    path, keys = key_file(tmp_path)
    async with served(tiny, path) as http:
        slow = bearer(keys["slow"])
        assert (await http.post("/v2/models/tiny/infer", json=ROW, headers=slow)).status_code == 200
        assert (await http.get("/v2/models/tiny", headers=slow)).status_code == 200  # every route counts
        for method, route, body in ROUTES[:5]:
            reply = await call(http, method, route, body, **slow)
            assert reply.status_code == 429, route
            # One token at 0.001/s: 1000 s, less what has passed since, rounded up to whole seconds.
            wait = reply.headers["retry-after"]
            assert 990 <= int(wait) <= 1000
            assert reply.json()["error"] == (
                f"API key 'slow' is over its rate limit (0.001 requests/s, burst 2); retry in {wait} s"
            )
        assert (
            await http.post("/predict/tiny", json=PREDICT, headers=bearer(keys["all"]))
        ).status_code == 200


async def test_the_key_is_checked_before_the_body_is_read(tiny: torch.nn.Module, tmp_path: Path) -> None:
    path, _ = key_file(tmp_path)
    read = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal read
        for _ in range(64):
            read += 1
            yield b"x" * 1024 * 1024

    async with served(tiny, path) as http:
        for route in ("/predict/tiny", "/v2/models/tiny/infer", "/v2/repository/models/tiny/load"):
            reply = await http.post(route, content=body())
            assert reply.status_code == 401
    assert read <= 3  # httpx's transport may pull a chunk or two ahead; the server read none


async def test_the_request_context_names_the_key_and_no_log_line_holds_a_key(
    tiny: torch.nn.Module, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, keys = key_file(tmp_path)
    seen: list[RequestContext] = []
    caplog.set_level(logging.DEBUG)
    async with served(tiny, path) as http:
        dataplane = http._transport.app.inference.dataplane  # type: ignore[attr-defined]
        for door in ("infer", "predict"):
            original = getattr(dataplane, door)

            async def record(*args: Any, original: Any = original) -> Any:
                seen.append(args[-1])
                return await original(*args)

            setattr(dataplane, door, record)
        assert (
            await http.post("/v2/models/tiny/infer", json=ROW, headers=bearer(keys["app"]))
        ).status_code == 200
        reply = await http.post("/predict/tiny", json=PREDICT, headers={"x-api-key": keys["ops"]})
        assert reply.status_code == 200
        for key in keys.values():  # good keys, bad ones, every kind of refusal
            for method, route, body in ROUTES:
                await call(http, method, route, body, **bearer(key))
                await call(http, method, route, body, **bearer(key + "x"))
                await call(http, method, route.replace("tiny", "other"), body, **bearer(key))
    assert [context.caller for context in seen[:2]] == ["app", "ops"]
    assert caplog.records  # the server did log (startup, requests, errors)
    for key in keys.values():
        assert key not in caplog.text and key.removeprefix("mb_") not in caplog.text


async def test_a_revoked_key_is_refused_once_the_file_is_read_again(
    tiny: torch.nn.Module, tmp_path: Path
) -> None:
    path, keys = key_file(tmp_path)
    server = Server(Settings(grpc_port=0, auth=str(path)))
    server.add_model("tiny", tiny, example=torch.zeros(1, 4))
    server.load()
    app = server.app()
    assert server.access is not None
    async with app.starlette.router.lifespan_context(app.starlette):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://modelbay.test") as http:
            assert (
                await http.post("/predict/tiny", json=PREDICT, headers=bearer(keys["app"]))
            ).status_code == 200
            revoke_key(path, "app")
            server.access.reload()  # what Access.watch does every second
            reply = await http.post("/predict/tiny", json=PREDICT, headers=bearer(keys["app"]))
            assert reply.status_code == 401
            assert (
                await http.post("/predict/tiny", json=PREDICT, headers=bearer(keys["all"]))
            ).status_code == 200
