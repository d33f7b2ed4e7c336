"""GET /metrics: request counts by outcome, batch sizes, queue waits, cache hits, in Prometheus text."""

from __future__ import annotations

import asyncio

import pytest
import torch

from modelbay.server import Server
from modelbay.settings import BatchingConfig, CacheConfig
from tests.conftest import asgi_client, sample

pytestmark = pytest.mark.anyio


async def test_metrics_count_requests_batches_and_cache() -> None:
    server = Server()
    server.add_model(
        "double", torch.nn.Linear(2, 2), example=torch.zeros(1, 2), batching=BatchingConfig(16, 20.0)
    )
    server.add_model("cached", torch.nn.Linear(2, 2), example=torch.zeros(1, 2), cache=CacheConfig(16))
    async with asgi_client(server) as client:
        replies = await asyncio.gather(
            *(client.post("/predict/double", json={"input": [i, 1]}) for i in range(8))
        )
        assert all(r.status_code == 200 for r in replies)
        assert (await client.post("/predict/double", json={"input": [1]})).status_code == 400
        assert (await client.post("/predict/nope", json={"input": [1]})).status_code == 404
        for _ in range(3):
            assert (await client.post("/predict/cached", json={"input": [5, 6]})).status_code == 200
        response = await client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    model = {"model": "double", "version": "1"}
    assert sample(text, "modelbay_requests_total", **model, door="predict", status="success") == 8
    assert sample(text, "modelbay_requests_total", **model, door="predict", status="InvalidInput") == 1
    assert sample(text, "modelbay_requests_total", model="", door="predict", status="ModelNotFound") == 1
    assert sample(text, "modelbay_request_duration_seconds_count", **model, door="predict") == 9
    assert sample(text, "modelbay_queue_wait_seconds_count", **model) == 8
    batches = sample(text, "modelbay_batch_size_count", **model)
    assert 1 <= batches < 8  # the 8 concurrent requests shared forward passes
    assert sample(text, "modelbay_batch_size_sum", **model) == 8
    assert sample(text, "modelbay_inference_duration_seconds_count", **model) == batches
    assert sample(text, "modelbay_queue_depth", **model) == 0
    cached = {"model": "cached", "version": "1"}
    assert sample(text, "modelbay_cache_requests_total", **cached, result="miss") == 1
    assert sample(text, "modelbay_cache_requests_total", **cached, result="hit") == 2
    assert sample(text, "modelbay_batch_size_sum", **cached) == 1  # computed once
