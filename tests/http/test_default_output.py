"""`batching.default_output`: a request that would miss its SLO gets the model's default, flagged."""

from __future__ import annotations

import asyncio
import re
import time

import pytest
import torch

from modelbay.errors import ModelLoadError
from modelbay.server import Server
from modelbay.settings import BatchingConfig, CacheConfig
from tests.conftest import asgi_client, sample

pytestmark = pytest.mark.anyio

BATCH_S = 0.5  # every forward pass of the slow model takes this long
SLO_MS = 600.0  # a request that waits for one batch and then runs its own would take ~1 s


class Slow(torch.nn.Module):
    """A real Linear(2 -> 2) whose forward pass takes BATCH_S (a heavy model, in miniature)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(BATCH_S)
        return self.linear(x)


def slow_server(cache: CacheConfig | None = None) -> tuple[Server, Slow]:
    server = Server()
    model = Slow()
    batching = BatchingConfig(max_batch_size=8, slo_ms=SLO_MS, default_output=[-1.0, -1.0])
    server.add_model("slow", model, example=torch.zeros(1, 2), batching=batching, cache=cache)
    return server, model


async def test_requests_queued_behind_a_slow_batch_get_the_default_flagged() -> None:
    server, model = slow_server()
    x = [[0.5, 2.0]]
    with torch.inference_mode():
        expected = model.linear(torch.tensor(x))[0].tolist()
    async with asgi_client(server) as client:
        first = asyncio.ensure_future(client.post("/predict/slow", json={"input": x[0]}))
        await asyncio.sleep(0.2)  # the first batch is running; these two wait for it
        simple = asyncio.ensure_future(client.post("/predict/slow", json={"input": x[0]}))
        infer_body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": x[0]}]}
        oip = asyncio.ensure_future(client.post("/v2/models/slow/infer", json=infer_body))
        first_reply, simple_reply, oip_reply = await asyncio.gather(first, simple, oip)
        later = await client.post("/predict/slow", json={"input": x[0]})  # nothing ahead of it
        metrics = (await client.get("/metrics")).text
    assert first_reply.json()["predictions"] == pytest.approx(expected)
    assert "default_predictions" not in first_reply.json()
    assert simple_reply.status_code == 200
    assert simple_reply.json()["predictions"] == [-1.0, -1.0]
    assert simple_reply.json()["default_predictions"] == [0]
    answer = oip_reply.json()
    assert oip_reply.status_code == 200, answer
    assert answer["parameters"] == {"default_output": True}
    assert answer["outputs"][0]["data"] == [-1.0, -1.0] and answer["outputs"][0]["shape"] == [1, 2]
    assert later.json()["predictions"] == pytest.approx(expected)
    assert sample(metrics, "modelbay_default_outputs_total", model="slow") == 2
    assert sample(metrics, "modelbay_batch_size_count", model="slow") == 2  # the defaults never ran


async def test_a_default_answer_is_not_cached() -> None:
    server, model = slow_server(CacheConfig(16))
    async with asgi_client(server) as client:
        first = asyncio.ensure_future(client.post("/predict/slow", json={"input": [1.0, 1.0]}))
        await asyncio.sleep(0.2)
        late = await client.post("/predict/slow", json={"input": [3.0, 3.0]})
        await first
        again = await client.post("/predict/slow", json={"input": [3.0, 3.0]})
    assert late.json()["default_predictions"] == [0]
    with torch.inference_mode():
        expected = model.linear(torch.tensor([[3.0, 3.0]]))[0].tolist()
    assert "default_predictions" not in again.json()
    assert again.json()["predictions"] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("default", "message"),
    [
        ([1.0, 2.0, 3.0], "output 'output': expected shape [-1, 2]"),
        ({"logits": [1.0, 2.0]}, "model's outputs are"),
    ],
)
def test_a_default_that_does_not_fit_the_outputs_is_refused_at_load(default: object, message: str) -> None:
    server = Server()
    batching = BatchingConfig(max_batch_size=8, slo_ms=100, default_output=default)
    server.add_model("m", torch.nn.Linear(2, 2), example=torch.zeros(1, 2), batching=batching)
    with pytest.raises(ModelLoadError, match=re.escape(message)):
        server.load()
