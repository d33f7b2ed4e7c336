"""Soak: steady load on `modelbay serve` (the bundled digits model) for a long time; requests,
errors, and the server's resident memory at start, after warm-up and at the end.

    python benchmarks/reliability/soak.py                     # 10 minutes
    python benchmarks/reliability/soak.py --duration-s 30     # a quick check of the script

`--concurrency` closed-loop clients on keep-alive connections alternate the two doors a client of
this model uses: a PNG to the simple door (POST /predict/digits) and the [1, 1, 8, 8] tensor as OIP
JSON (POST /v2/models/digits/infer). Memory that grows after warm-up, at a steady request mix, is
what a leak looks like; the warm-up is the first tenth of the run (at most 60 s). Latency is not
reported: one Python client of many connections measures mostly its own queueing (overload.py
times answers with a separate probe).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import breakdown, closed_loop, counts, png, rss_mib, serving, table

TENSOR = {"inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.5] * 64}]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration-s", type=float, default=600.0)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    images = [png(digit) for digit in range(10)]

    async def send(client: httpx.AsyncClient, index: int) -> httpx.Response:
        if index % 2:
            return await client.post("/v2/models/digits/infer", json=TENSOR)
        return await client.post("/predict/digits", content=images[index // 2 % 10])

    warm_up_s = min(args.duration_s / 10, 60.0)
    with serving("--log-level", "warning") as served:
        pid = served.process.pid
        rss_start = rss_mib(pid)
        warm = asyncio.run(closed_loop(served.url, send, args.concurrency, warm_up_s))
        rss_warm = rss_mib(pid)
        outcomes = asyncio.run(closed_loop(served.url, send, args.concurrency, args.duration_s - warm_up_s))
        rss_end = rss_mib(pid)
        still_up = served.process.poll() is None
    everything = warm + outcomes
    seen = counts(everything)
    errors = len(everything) - seen["200"]
    print(
        f"soak: {args.duration_s:.0f} s, {args.concurrency} clients, digits; server up at the end: {still_up}"
    )
    print(
        table(
            [
                "duration s",
                "requests",
                "req/s",
                "errors",
                "RSS start MiB",
                "RSS after warm-up MiB",
                "RSS end MiB",
                "growth after warm-up MiB",
            ],
            [
                [
                    args.duration_s,
                    len(everything),
                    len(everything) / args.duration_s,
                    f"{errors} ({breakdown(seen)})" if errors else "0",
                    rss_start,
                    rss_warm,
                    rss_end,
                    rss_end - rss_warm,
                ]
            ],
        )
    )


if __name__ == "__main__":
    main()
