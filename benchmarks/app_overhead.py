"""modelbay's own cost per request, without the network: the ASGI app called in-process.

    taskset -c 0 python benchmarks/app_overhead.py [--profile] [--auth]

Serves Linear(64->10) with max_batch_size 64 and sends 20,000 `POST /predict/linear` requests
straight to the ASGI app (no sockets, no HTTP parsing) from 64 concurrent tasks. Prints requests/s
and microseconds per request; `--profile` prints cProfile's top functions by own time instead.
`--auth`: the server checks API keys (a key file of one infer key, in a temporary folder) and
every request sends that key as `Authorization: Bearer`.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from modelbay.auth.keys import create_key
from modelbay.server import Server
from modelbay.settings import BatchingConfig, Settings

BODY = json.dumps({"input": [0.5] * 64}).encode()
HEADERS = [
    (b"host", b"bench"),
    (b"content-type", b"application/json"),
    (b"content-length", str(len(BODY)).encode()),
    (b"user-agent", b"wrk"),
    (b"accept", b"*/*"),
]
SCOPE = {"type": "http", "method": "POST", "path": "/predict/linear", "headers": HEADERS}


async def main(requests: int, concurrency: int, auth: bool = False) -> None:
    torch.manual_seed(0)
    scope = SCOPE
    settings = Settings(port=0, grpc_port=0)
    if auth:
        path = Path(tempfile.mkdtemp()) / "keys.yaml"
        key, _ = create_key(path, "bench", ["infer"])
        scope = {**SCOPE, "headers": [*HEADERS, (b"authorization", f"Bearer {key}".encode())]}
        settings = Settings(port=0, grpc_port=0, auth=str(path))
    server = Server(settings)
    server.add_model(
        "linear", torch.nn.Linear(64, 10), example=torch.zeros(1, 64), batching=BatchingConfig(64)
    )
    server.load()
    app = server.app()

    async def one() -> None:
        async def receive() -> dict:
            return {"type": "http.request", "body": BODY, "more_body": False}

        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        await app(scope, receive, send)
        assert sent[0]["status"] == 200, sent

    async with app.starlette.router.lifespan_context(app.starlette):
        for _ in range(200):
            await one()
        gate = asyncio.Semaphore(concurrency)

        async def gated() -> None:
            async with gate:
                await one()

        started = time.perf_counter()
        await asyncio.gather(*(gated() for _ in range(requests)))
        elapsed = time.perf_counter() - started
    print(f"{requests / elapsed:.0f} requests/s in-process, {elapsed / requests * 1e6:.1f} us per request")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--auth", action="store_true", help="check API keys; every request sends one")
    args = parser.parse_args()
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(asyncio.run, main(args.requests, args.concurrency, args.auth))
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
    else:
        import uvloop

        uvloop.run(main(args.requests, args.concurrency, args.auth))
