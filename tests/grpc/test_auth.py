"""API keys at the gRPC door, on a real port with a real channel: every RPC is checked; the key
travels as `authorization: Bearer` or `x-api-key` metadata; refusals are UNAUTHENTICATED,
PERMISSION_DENIED and RESOURCE_EXHAUSTED (with a `retry-after` trailer)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import torch

from modelbay.auth.keys import create_key
from modelbay.grpc.generated import grpc_predict_v2_pb2 as pb
from modelbay.grpc.generated import grpc_predict_v2_pb2_grpc as pb_grpc
from modelbay.runtime.context import RequestContext
from modelbay.server import Server
from modelbay.settings import Settings
from tests.conftest import free_port


class Served:
    def __init__(self, server: Server, stub: pb_grpc.GRPCInferenceServiceStub, keys: dict[str, str]) -> None:
        self.server, self.stub, self.keys = server, stub, keys


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny: torch.nn.Module) -> Iterator[Served]:
    path = tmp_path_factory.mktemp("auth") / "keys.yaml"
    keys = {
        "app": create_key(path, "app", ["infer"], ["tiny"])[0],
        "ops": create_key(path, "ops", ["admin"])[0],
        "slow": create_key(path, "slow", ["infer"], rate_per_s=0.001, burst=1)[0],
    }
    server = Server(Settings(port=0, grpc_port=free_port(), auth=str(path)))
    server.add_model("tiny", tiny, example=torch.zeros(1, 4))
    server.add_model("other", tiny, example=torch.zeros(1, 4))
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.settings.grpc_port}")
    try:
        yield Served(server, pb_grpc.GRPCInferenceServiceStub(channel), keys)
    finally:
        channel.close()
        server.stop()


def infer_request(model: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    contents = pb.InferTensorContents(fp32_contents=[1, 2, 3, 4])
    request.inputs.add(name="input", datatype="FP32", shape=[1, 4], contents=contents)
    return request


def calls(stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> list[tuple[Any, Any]]:
    """Every RPC that needs a key, for `model` where it names one."""
    return [
        (stub.ModelInfer, infer_request(model)),
        (stub.ModelMetadata, pb.ModelMetadataRequest(name=model)),
        (stub.ModelReady, pb.ModelReadyRequest(name=model)),
    ]


def admin_calls(stub: pb_grpc.GRPCInferenceServiceStub) -> list[tuple[Any, Any]]:
    return [
        (stub.RepositoryIndex, pb.RepositoryIndexRequest()),
        (stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name="nope")),
        (stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name="nope")),
    ]


def refused(method: Any, request: Any, metadata: Any = None) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        method(request, metadata=metadata)
    return err.value


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def test_every_rpc_needs_a_valid_key_but_health(served: Served) -> None:
    stub, keys = served.stub, served.keys
    for method, request in calls(stub, "tiny") + admin_calls(stub):
        for metadata in (None, bearer("mb_not-a-key"), (("x-api-key", "mb_not-a-key"),)):
            error = refused(method, request, metadata)
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, method
            assert "mb_not-a-key" not in (error.details() or "")
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    assert stub.ServerMetadata(pb.ServerMetadataRequest()).name == "modelbay"
    for metadata in (bearer(keys["app"]), (("x-api-key", keys["app"]),), bearer(keys["ops"])):
        assert stub.ModelInfer(infer_request("tiny"), metadata=metadata).model_name == "tiny"
        assert stub.ModelMetadata(pb.ModelMetadataRequest(name="tiny"), metadata=metadata).name == "tiny"
        assert stub.ModelReady(pb.ModelReadyRequest(name="tiny"), metadata=metadata).ready


def test_a_key_of_the_wrong_scope_or_model_is_permission_denied(served: Served) -> None:
    stub, keys = served.stub, served.keys
    for method, request in calls(stub, "other"):
        error = refused(method, request, bearer(keys["app"]))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error.details() == "API key 'app' may not use model 'other'; it may use tiny"
    for method, request in admin_calls(stub):
        error = refused(method, request, bearer(keys["app"]))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "needs the admin scope" in (error.details() or "")
    index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), metadata=bearer(keys["ops"]))
    assert {m.name for m in index.models} == {"tiny", "other"}
    error = refused(
        stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name="nope"), bearer(keys["ops"])
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND  # past the check: the model is unknown


def test_a_key_over_its_rate_limit_is_resource_exhausted_with_retry_after(served: Served) -> None:
    stub, key = served.stub, served.keys["slow"]
    assert stub.ModelInfer(infer_request("tiny"), metadata=bearer(key)).model_name == "tiny"
    error = refused(stub.ModelInfer, infer_request("tiny"), bearer(key))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    (wait,) = [value for key, value in error.trailing_metadata() or () if key == "retry-after"]
    assert 990 <= int(wait) <= 1000  # one token at 0.001/s, rounded up to whole seconds
    assert error.details() == (
        f"API key 'slow' is over its rate limit (0.001 requests/s, burst 1); retry in {wait} s"
    )


def test_the_request_context_names_the_key(served: Served) -> None:
    dataplane = served.server._uvicorn.config.app.inference.dataplane
    original = dataplane.infer
    seen: list[RequestContext] = []

    async def record(request: Any, context: RequestContext) -> Any:
        seen.append(context)
        return await original(request, context)

    dataplane.infer = record
    try:
        served.stub.ModelInfer(infer_request("tiny"), metadata=bearer(served.keys["ops"]))
    finally:
        dataplane.infer = original
    assert [context.caller for context in seen] == ["ops"]
