"""What a request's context carries from the gRPC door to the core: who called, its trace, its
routing key (metadata), as the HTTP door does (tests/http/test_context.py)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
import torch

from modelbay.grpc.generated import grpc_predict_v2_pb2 as pb
from modelbay.grpc.generated import grpc_predict_v2_pb2_grpc as pb_grpc
from modelbay.runtime.context import RequestContext
from modelbay.server import Server
from modelbay.settings import Settings
from tests.conftest import free_port

pytestmark = pytest.mark.anyio
TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def test_the_context_says_who_called_and_which_trace(tiny: torch.nn.Module) -> None:
    port = free_port()
    server = Server(Settings(port=0, grpc_port=port))
    server.add_model("tiny", tiny, example=torch.zeros(1, 4))
    server.load()
    app = server.app()
    dataplane = app.inference.dataplane
    seen: list[RequestContext] = []
    original = dataplane.infer

    async def record(request: Any, context: RequestContext) -> Any:
        seen.append(context)
        return await original(request, context)

    dataplane.infer = record  # type: ignore[method-assign]
    contents = pb.InferTensorContents(fp32_contents=[1, 2, 3, 4])
    request = pb.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 4], contents=contents)
    metadata = (("traceparent", TRACE), ("modelbay-routing-key", "user-42"))
    lifespan = app.starlette.router.lifespan_context(app.starlette)
    async with lifespan, grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert (await stub.ModelInfer(request, metadata=metadata)).model_name == "tiny"
        await stub.ModelInfer(request)
    with_metadata, without = seen
    assert (with_metadata.caller, with_metadata.trace, with_metadata.routing_key) == (
        "127.0.0.1",
        TRACE,
        "user-42",
    )
    assert (without.caller, without.trace, without.routing_key) == ("127.0.0.1", None, None)
