"""modelbay.client with `api_key=` against a real server with API keys, over HTTP and gRPC: the key
goes with every call, and the server's refusals come back as Unauthenticated, Forbidden and
TooManyRequests (with the seconds to wait)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from modelbay.auth.keys import create_key
from modelbay.client import AsyncClient, Client
from modelbay.errors import Forbidden, TooManyRequests, Unauthenticated, Unavailable
from modelbay.server import Server
from modelbay.settings import Settings
from tests.conftest import free_port

URLS = ["http-binary", "http-json", "grpc"]
X = np.array([[1, 2, 3, 4]], np.float32)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny: torch.nn.Module) -> Iterator[tuple[Server, dict]]:
    path = tmp_path_factory.mktemp("auth") / "keys.yaml"
    keys = {
        "app": create_key(path, "app", ["infer"], ["tiny"])[0],
        "ops": create_key(path, "ops", ["admin"])[0],
    }
    server = Server(Settings(port=0, grpc_port=free_port(), auth=str(path)))
    server.add_model("tiny", tiny, example=torch.zeros(1, 4))
    server.add_model("other", tiny, example=torch.zeros(1, 4))
    server.start()
    yield server, {**keys, "path": str(path)}
    server.stop()


def client_for(server: Server, kind: str, api_key: str | None, cls: type = Client) -> Any:
    if kind == "grpc":
        return cls(f"grpc://127.0.0.1:{server.settings.grpc_port}", api_key=api_key)
    return cls(server.url, binary=kind == "http-binary", api_key=api_key)


@pytest.mark.parametrize("kind", URLS)
def test_a_client_with_a_key_infers_and_gets_the_refusals_as_exceptions(
    served: tuple[Server, dict], tiny: torch.nn.Module, kind: str
) -> None:
    server, keys = served
    expected = tiny(torch.from_numpy(X)).detach().numpy()
    with client_for(server, kind, keys["app"]) as client:
        (y,) = client.infer("tiny", X).values()
        np.testing.assert_allclose(y, expected, rtol=1e-6)
        assert client.metadata("tiny")["name"] == "tiny" and client.ready("tiny")
        assert client.live() and client.ready()  # open
        with pytest.raises(Forbidden, match="API key 'app' may not use model 'other'; it may use tiny"):
            client.infer("other", {"input": X})
        with pytest.raises(Forbidden, match="needs the admin scope"):
            client.repository_index()
    with client_for(server, kind, keys["ops"]) as client:
        assert {row["name"] for row in client.repository_index()} == {"tiny", "other"}
        client.infer("other", {"input": X})
    for key in (None, "mb_not-a-key"):
        with client_for(server, kind, key) as client:
            with pytest.raises(Unauthenticated) as refused:
                client.infer("tiny", {"input": X})
            assert "mb_not-a-key" not in str(refused.value)


@pytest.mark.anyio
@pytest.mark.parametrize("kind", URLS)
async def test_the_async_client_sends_its_key_too(served: tuple[Server, dict], kind: str) -> None:
    server, keys = served
    async with client_for(server, kind, keys["app"], AsyncClient) as client:
        assert set(await client.infer("tiny", {"input": X}))
        with pytest.raises(Forbidden):
            await client.infer("other", {"input": X})
    async with client_for(server, kind, None, AsyncClient) as client:
        with pytest.raises(Unauthenticated):
            await client.infer("tiny", {"input": X})


@pytest.mark.parametrize("kind", ["http-json", "grpc"])
def test_a_key_over_its_rate_limit_raises_too_many_requests(served: tuple[Server, dict], kind: str) -> None:
    server, keys = served
    key, _ = create_key(Path(keys["path"]), f"slow-{kind}", ["infer"], rate_per_s=0.01, burst=1)
    assert server.access is not None and server.access.reload()
    with client_for(server, kind, key) as client:
        client.infer("tiny", {"input": X})
        with pytest.raises(TooManyRequests) as refused:
            client.infer("tiny", {"input": X})
    assert isinstance(refused.value, Unavailable) and 90 <= refused.value.retry_after_s <= 100
