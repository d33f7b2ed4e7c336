"""Overload: far more load than a model can take, with a small queue; the share of 503s and how
fast a 503 comes, beside the answered requests' latency.

    python benchmarks/reliability/overload.py                    # 30 s
    python benchmarks/reliability/overload.py --duration-s 10

The model (made in a temporary folder) sleeps `--service-ms` per batch with max_batch_size 1, so it
answers at most 1000 / service-ms requests a second whatever the CPU; `--clients` closed-loop
clients (keep-alive) send OIP JSON to it through a queue of `--max-queue-size`, while a probe in its
own process sends the same request every 20 ms and times the answers (the flood's own latencies
are mostly its event loop's queueing). A full queue must answer 503 at once (with Retry-After), not
make the caller wait; the server must be as good as new afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import breakdown, closed_loop, counts, percentile_ms, probe, serving, slow_model, table

PATH = "/v2/models/slow/infer"
PROBE_INTERVAL_S = 0.02
BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0.5, -1.0, 2.0, 0.0]}]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration-s", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--service-ms", type=float, default=20.0)
    parser.add_argument("--max-queue-size", type=int, default=4)
    args = parser.parse_args()

    async def send(client: httpx.AsyncClient, index: int) -> httpx.Response:
        return await client.post(PATH, json=BODY)

    with tempfile.TemporaryDirectory() as folder:
        model = slow_model(Path(folder), args.service_ms / 1000)
        flags = [
            "--max-batch-size",
            "1",
            "--max-queue-size",
            str(args.max_queue_size),
            "--log-level",
            "warning",
        ]
        with serving(str(model), *flags) as served:
            with ProcessPoolExecutor(1) as pool:
                probing = pool.submit(probe, served.url, PATH, BODY, args.duration_s, PROBE_INTERVAL_S)
                outcomes = asyncio.run(closed_loop(served.url, send, args.clients, args.duration_s))
                probes = probing.result()
            after = httpx.post(f"{served.url}{PATH}", json=BODY, timeout=30).status_code
    seen = counts(outcomes)
    total = len(outcomes)
    capacity = 1000 / args.service_ms
    print(
        f"overload: {args.clients} clients for {args.duration_s:.0f} s on a model of {capacity:.0f} req/s "
        f"(max_queue_size {args.max_queue_size}); a request after the load: {after}"
    )
    print(
        table(
            [
                "offered req/s",
                "answered 200 req/s",
                "503 share",
                "503 p50 ms",
                "503 p99 ms",
                "200 p50 ms",
                "200 p99 ms",
                "other answers",
            ],
            [
                [
                    total / args.duration_s,
                    seen["200"] / args.duration_s,
                    f"{seen['503'] / total:.1%}",
                    percentile_ms(probes, 50, "503"),
                    percentile_ms(probes, 99, "503"),
                    percentile_ms(probes, 50, "200"),
                    percentile_ms(probes, 99, "200"),
                    breakdown(seen, skip=("200", "503")),
                ]
            ],
        )
    )


if __name__ == "__main__":
    main()
