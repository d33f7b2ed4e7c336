"""REST JSON vs REST binary vs gRPC for one 1x3x224x224 FP32 image tensor, side by side in one run.

    python examples/mobilenet/prepare.py          # once, for the MobileNetV2 rows
    python benchmarks/transports.py               # ~2 minutes; prints a Markdown table

The server (`modelbay serve`, both models, HTTP and gRPC) is pinned to core 0 and this load
generator to core 1 (when the machine has two). Each row sends requests for `--duration-s`
seconds from `concurrency` asyncio workers, with bodies encoded once up front, so the client does
little per request. Only 127.0.0.1 is contacted; every loop stops at its deadline.

Models:
  pool       a transport-bound image model: global average pool + Linear(3, 1000) (torch.export),
             so the time left is the transport's;
  mobilenet  examples/mobilenet (MobileNetV2, ~25 ms a forward pass on one core).
Bytes on the wire are request + response payloads (HTTP bodies, gRPC messages), headers excluded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from modelbay.client import _grpc, _rest  # noqa: E402
from modelbay.grpc.generated import grpc_predict_v2_pb2_grpc as pb_grpc  # noqa: E402

SHAPE = (1, 3, 224, 224)


class Pool(torch.nn.Module):
    """Global average pool + linear: an image classifier head with almost no compute."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, 1000)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fc(image.mean(dim=(2, 3)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def server(models: list[str], port: int, grpc_port: int) -> Iterator[None]:
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []
    command = [
        *pin,
        str(Path(sys.executable).parent / "modelbay"),
        "serve",
        *models,
        "--port",
        str(port),
        "--grpc-port",
        str(grpc_port),
        "--log-level",
        "warning",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                    break
            time.sleep(0.2)
        else:
            raise RuntimeError("server did not become ready")
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


async def drive(call: Callable[[], Awaitable[int]], concurrency: int, duration_s: float) -> dict[str, float]:
    """Run `call` from `concurrency` workers until the deadline; latencies in ms, bytes per request."""
    latencies: list[float] = []
    errors = 0
    received = 0
    deadline = time.monotonic() + duration_s

    async def worker() -> None:
        nonlocal errors, received
        while time.monotonic() < deadline:
            start = time.perf_counter()
            try:
                size = await call()  # not `received += await call()`: that reads `received` before awaiting
            except Exception:
                errors += 1
                continue
            latencies.append((time.perf_counter() - start) * 1000)
            received += size

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.monotonic() - started
    done = max(1, len(latencies))
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(latencies, 50)) if latencies else float("nan"),
        "p99_ms": float(np.percentile(latencies, 99)) if latencies else float("nan"),
        "errors": errors,
        "response_bytes": received / done,
    }


async def measure(
    model: str, transport: str, port: int, grpc_port: int, concurrency: int, duration_s: float
) -> dict:
    image = np.random.default_rng(0).random(SHAPE, dtype=np.float32)
    inputs = {"image": image}
    if transport == "grpc":
        message = _grpc.infer_message(model, None, inputs, None, None)
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{grpc_port}", options=_grpc.CHANNEL_OPTIONS
        ) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)

            async def call() -> int:
                reply = await stub.ModelInfer(message)
                return int(reply.ByteSize())

            await call()  # warm-up
            result = await drive(call, concurrency, duration_s)
        return {**result, "request_bytes": message.ByteSize()}
    body, headers = _rest.infer_body(inputs, None, transport == "rest-binary", None)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=120) as client:

        async def call() -> int:
            response = await client.post(f"/v2/models/{model}/infer", content=body, headers=headers)
            response.raise_for_status()
            return len(response.content)

        await call()
        result = await drive(call, concurrency, duration_s)
    return {**result, "request_bytes": len(body)}


def table(rows: list[dict]) -> str:
    lines = [
        "| model | transport | concurrency | req/s | p50 ms | p99 ms | errors | request bytes "
        "| response bytes | req/s vs JSON |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = {(r["model"], r["concurrency"]): r["rps"] for r in rows if r["transport"] == "rest-json"}
    for r in rows:
        ratio = r["rps"] / base[(r["model"], r["concurrency"])]
        lines.append(
            f"| {r['model']} | {r['transport']} | {r['concurrency']} | {r['rps']:.1f} | {r['p50_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {r['errors']} | {r['request_bytes']:,} | {r['response_bytes']:,.0f} "
            f"| {ratio:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["pool", "mobilenet"], choices=["pool", "mobilenet"])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--duration-s", type=float, default=5.0)
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        if "pool" in args.models:
            folder = Path(tmp) / "pool"
            folder.mkdir()
            program = torch.export.export(
                Pool().eval(), (torch.zeros(2, *SHAPE[1:]),), dynamic_shapes=({0: torch.export.Dim("batch")},)
            )
            torch.export.save(program, folder / "pool.pt2")
            (folder / "modelbay.yaml").write_text(
                "inputs: [{name: image, datatype: FP32, shape: [-1, 3, 224, 224]}]\n"
            )
            paths.append(str(folder))
        if "mobilenet" in args.models:
            if not (ROOT / "examples/mobilenet/model/mobilenet_v2.pth").is_file():
                sys.exit("run `python examples/mobilenet/prepare.py` first (or pass --models pool)")
            paths.append(str(ROOT / "examples/mobilenet/model"))
        port, grpc_port = free_port(), free_port()
        with server(paths, port, grpc_port):
            if (os.cpu_count() or 1) > 1:
                os.sched_setaffinity(0, {1})
            rows = []
            for model in args.models:
                for concurrency in args.concurrency:
                    for transport in ("rest-json", "rest-binary", "grpc"):
                        result = asyncio.run(
                            measure(model, transport, port, grpc_port, concurrency, args.duration_s)
                        )
                        rows.append(
                            {"model": model, "transport": transport, "concurrency": concurrency, **result}
                        )
                        print(
                            f"{model} {transport} c={concurrency}: {result['rps']:.1f} req/s", file=sys.stderr
                        )
    print(table(rows))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
