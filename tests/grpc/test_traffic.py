"""The gRPC door follows a model's traffic policy as HTTP does (tests/http/test_traffic.py): the
split, the sticky header (as metadata), a named version bypassing it, the version answering
named in model_version."""

from __future__ import annotations

import collections
import random
from pathlib import Path

import grpc
import numpy as np
import pytest

from modelbay.grpc.generated import grpc_predict_v2_pb2 as pb
from modelbay.grpc.generated import grpc_predict_v2_pb2_grpc as pb_grpc
from modelbay.registry.traffic import traffic_policy
from tests.conftest import free_port
from tests.http.test_live_repository import live
from tests.http.test_traffic import ROW, expected, repository, version_files  # noqa: F401 (a fixture)

pytestmark = pytest.mark.anyio


def request(version: str = "") -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="tiny", model_version=version)
    message.inputs.add(
        name="input", datatype="FP32", shape=[1, 4], contents=pb.InferTensorContents(fp32_contents=ROW)
    )
    return message


async def test_grpc_calls_follow_the_policy(tmp_path: Path, version_files: dict[str, Path]) -> None:  # noqa: F811
    port = free_port()
    async with live(repository(tmp_path, version_files, "1", "2", "3"), grpc_port=port) as (_, dataplane):
        dataplane.random = random.Random(9).random
        policy = traffic_policy({"split": {"1": 75, "2": 25}, "sticky": {"header": "x-user-id"}})
        dataplane.set_traffic("tiny", policy)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)

            async def version_of(message: pb.ModelInferRequest, *metadata: tuple[str, str]) -> str:
                reply = await stub.ModelInfer(message, metadata=metadata or None)
                got = np.frombuffer(reply.raw_output_contents[0], dtype=np.float32).tolist()
                assert got == pytest.approx(expected(reply.model_version), abs=1e-6)
                return str(reply.model_version)

            counts = collections.Counter([await version_of(request()) for _ in range(400)])
            assert set(counts) == {"1", "2"} and counts["2"] / 400 == pytest.approx(0.25, abs=0.06)
            for user in ("ana", "bo", "cy", "di"):
                seen = {await version_of(request(), ("x-user-id", user)) for _ in range(8)}
                assert len(seen) == 1, (user, seen)
            assert {await version_of(request("3")) for _ in range(5)} == {"3"}
