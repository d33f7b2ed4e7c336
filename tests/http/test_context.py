"""What a request's context carries from the HTTP door to the core: who called, its trace, its
routing key (what access rules, traffic splits and traces will read)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from modelbay.runtime.context import RequestContext
from modelbay.server import Server
from tests.conftest import asgi_client

pytestmark = pytest.mark.anyio
TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def test_the_context_says_who_called_and_which_trace(tiny: torch.nn.Module) -> None:
    server = Server()
    server.add_model("tiny", tiny, example=torch.zeros(1, 4))
    seen: list[RequestContext] = []
    async with asgi_client(server) as client:
        dataplane = client._transport.app.inference.dataplane  # type: ignore[attr-defined]
        for door in ("infer", "predict"):
            original = getattr(dataplane, door)

            async def record(*args: Any, original: Any = original) -> Any:
                seen.append(args[-1])
                return await original(*args)

            setattr(dataplane, door, record)
        headers = {"traceparent": TRACE, "modelbay-routing-key": "user-42"}
        body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
        assert (await client.post("/v2/models/tiny/infer", json=body, headers=headers)).status_code == 200
        reply = await client.post("/predict/tiny", json={"input": [1, 2, 3, 4]})
        assert reply.status_code == 200, reply.text
    infer, predict = seen
    assert (infer.caller, infer.trace, infer.routing_key) == ("127.0.0.1", TRACE, "user-42")
    assert (predict.caller, predict.trace, predict.routing_key) == ("127.0.0.1", None, None)
