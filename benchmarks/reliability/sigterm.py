"""SIGTERM with requests in flight: how many complete, how the rest fail, and how long the server
takes from SIGTERM to exit, with `--graceful-timeout-s` set.

    python benchmarks/reliability/sigterm.py                     # ~15 s
    python benchmarks/reliability/sigterm.py --graceful-timeout-s 1

The model (made in a temporary folder) takes `--service-s` per request (max_batch_size 1), so
`--http` + `--grpc` requests sent at once are still queued when SIGTERM comes half a second later:
about graceful_timeout_s / service_s of them can finish; the rest must get 503 / UNAVAILABLE when
the drain deadline passes, and the process must exit right after. Requests sent after SIGTERM
(one every 100 ms on a new connection) must be refused: 503, or the connection refused once the
port is closed.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import ROOT, Served, breakdown, serving, slow_model, table

sys.path.insert(0, str(ROOT / "src"))
from modelbay.grpc.generated import grpc_predict_v2_pb2 as pb
from modelbay.grpc.generated import grpc_predict_v2_pb2_grpc as pb_grpc

ROW = [0.5, -1.0, 2.0, 0.0]
BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}
TENSOR = pb.ModelInferRequest.InferInputTensor(
    name="x", datatype="FP32", shape=[1, 4], contents=pb.InferTensorContents(fp32_contents=ROW)
)
Result = tuple[str, float]  # what came back, and when (seconds after SIGTERM; negative: before)


async def http_request(client: httpx.AsyncClient, clock: dict[str, float]) -> Result:
    try:
        label = str((await client.post("/v2/models/slow/infer", json=BODY)).status_code)
    except httpx.HTTPError as exc:
        label = type(exc).__name__
    return label, time.monotonic() - clock["sigterm"]


async def grpc_request(stub: pb_grpc.GRPCInferenceServiceStub, clock: dict[str, float]) -> Result:
    try:
        await stub.ModelInfer(pb.ModelInferRequest(model_name="slow", inputs=[TENSOR]), timeout=60)
        label = "OK"
    except grpc.aio.AioRpcError as exc:
        label = exc.code().name
    return label, time.monotonic() - clock["sigterm"]


async def late_requests(url: str, stop: asyncio.Event) -> Counter[str]:
    """One request every 100 ms, each on a new connection, until `stop` is set."""
    seen: Counter[str] = Counter()
    while not stop.is_set():
        try:
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                seen[str((await client.post("/v2/models/slow/infer", json=BODY)).status_code)] += 1
        except httpx.HTTPError as exc:
            seen[type(exc).__name__] += 1
        await asyncio.sleep(0.1)
    return seen


@dataclass
class Drained:
    """What the in-flight requests of each door got, what later requests got, when the server exited."""

    doors: dict[str, list[Result]]
    late: Counter[str]
    exit_s: float


async def drain(served: Served, http_count: int, grpc_count: int, grace_s: float) -> Drained:
    clock = {"sigterm": float("inf")}
    limits = httpx.Limits(max_connections=http_count)
    async with (
        httpx.AsyncClient(base_url=served.url, timeout=60, limits=limits) as client,
        grpc.aio.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        http_tasks = [asyncio.create_task(http_request(client, clock)) for _ in range(http_count)]
        grpc_tasks = [asyncio.create_task(grpc_request(stub, clock)) for _ in range(grpc_count)]
        await asyncio.sleep(0.5)  # every request sent and queued
        clock["sigterm"] = time.monotonic()
        served.process.send_signal(signal.SIGTERM)
        stop = asyncio.Event()
        late = asyncio.create_task(late_requests(served.url, stop))
        while served.process.poll() is None and time.monotonic() - clock["sigterm"] < grace_s + 60:
            await asyncio.sleep(0.01)
        exit_s = time.monotonic() - clock["sigterm"]
        stop.set()
        doors = {"HTTP": await asyncio.gather(*http_tasks), "gRPC": await asyncio.gather(*grpc_tasks)}
        return Drained(doors, await late, exit_s)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--graceful-timeout-s", type=float, default=3.0)
    parser.add_argument("--service-s", type=float, default=0.5)
    parser.add_argument("--http", type=int, default=12)
    parser.add_argument("--grpc", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        model = slow_model(Path(folder), args.service_s)
        flags = ["--max-batch-size", "1", "--graceful-timeout-s", str(args.graceful_timeout_s)]
        with serving(str(model), *flags, "--log-level", "warning") as served:
            found = asyncio.run(drain(served, args.http, args.grpc, args.graceful_timeout_s))
            code = served.process.poll()
    status = f"signal {-code}" if code is not None and code < 0 else str(code)
    print(
        f"SIGTERM: {args.http} HTTP + {args.grpc} gRPC requests in flight to a model of "
        f"{args.service_s} s a request, --graceful-timeout-s {args.graceful_timeout_s}"
    )
    rows = []
    for door, ok in (("HTTP", "200"), ("gRPC", "OK")):
        results = found.doors[door]
        seen = Counter(label for label, _ in results)
        last = max((at for label, at in results if label == ok), default=float("nan"))
        rows.append([door, len(results), seen[ok], breakdown(seen, skip=(ok,)), last])
    print(table(["door", "in flight", "completed", "failed", "last completed after SIGTERM s"], rows))
    print()
    print(
        table(
            ["graceful_timeout_s", "SIGTERM to exit s", "exit", "requests sent after SIGTERM"],
            [[args.graceful_timeout_s, found.exit_s, status, breakdown(found.late, skip=())]],
        )
    )


if __name__ == "__main__":
    main()
