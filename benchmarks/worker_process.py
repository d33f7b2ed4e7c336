"""A model in a worker process against the same model in the server, side by side in one run.

    python benchmarks/worker_process.py                        # 3 rounds of 10 s per row (~3 min)
    python benchmarks/worker_process.py --duration-s 3 --rounds 1

The MLP of benchmarks/models.py (1024 -> 4096 -> 4096 -> 1000, a torch.export program) is served
twice, by `modelbay serve mlp.pt2 --max-batch-size 64 --max-queue-delay-ms 5` (run.py's modelbay
settings) as it is ("in-process") and with `--worker-process` (its forward passes run in a model
worker process: one round trip of raw arrays per batch). Both servers run at once, each pinned to
core 0 (`taskset`; the worker process inherits it, so server and worker share that core as the
server's threads do), and wrk drives them from core 1 with 64 connections, alternating A/B: in
each round every door is measured on both servers back to back, their order swapped every round,
so a drift of the machine's speed shows as disagreeing rounds rather than as a cost. Doors:
  json    the simple door, POST /predict/mlp with {"input": [1024 floats]} (run.py's body)
  binary  OIP binary extension both ways, /v2/models/mlp/infer (raw tensors in and out)
The table keeps each server's best round per door (a shared machine only ever makes a run
slower) and lists every round's worker/in-process ratio beside it. The target: the worker
process keeps >= 90% of the in-process requests/s.

Then the transport alone: one message of raw float32 arrays to a forked echo process and back
over the socket pair (modelbay.runtime.model_messages: pickle protocol 5, out-of-band buffers),
per size, the round trip's microseconds.
Only 127.0.0.1 is contacted; every wrk run ends at its deadline; servers are stopped by PID.
Prints Markdown tables; writes benchmarks/results/worker_process.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from models import body, export  # noqa: E402
from run import RESULTS, binary_body, free_port, modelbay_command, running, wrk  # noqa: E402

from modelbay.runtime.model_messages import Channel, Ran, Run  # noqa: E402

SERVERS = ("in-process", "worker process")
DOORS = ("json", "binary")
FLAGS = ("--name", "mlp", "--max-batch-size", "64", "--max-queue-delay-ms", "5")


def measure(args: argparse.Namespace, folder: Path) -> list[dict]:
    """Every round's requests/s, p50 and p99 per (server, door), both servers running throughout."""
    artifact = export("mlp", folder)
    payload = folder / "body.json"
    payload.write_bytes(body("mlp"))
    ports = {server: free_port() for server in SERVERS}
    extra = {"in-process": (), "worker process": ("--worker-process",)}
    rows = []
    with contextlib.ExitStack() as stack:
        for server in SERVERS:
            command = modelbay_command(artifact, ports[server], *FLAGS, *extra[server])
            url = f"http://127.0.0.1:{ports[server]}/predict/mlp"
            stack.enter_context(running(command, {}, url, payload.read_bytes()))
        first = f"http://127.0.0.1:{ports['in-process']}/predict/mlp"
        raw, length = binary_body("mlp", first, folder)
        targets = {
            (server, door): (
                f"http://127.0.0.1:{ports[server]}/predict/mlp"
                if door == "json"
                else f"http://127.0.0.1:{ports[server]}/v2/models/mlp/infer",
                payload if door == "json" else raw,
                None if door == "json" else length,
            )
            for server in SERVERS
            for door in DOORS
        }
        for server in SERVERS:  # warm-up: first batches, allocator, page cache
            for door in DOORS:
                url, data, header = targets[(server, door)]
                wrk(url, data, 2, args.connections, header)
        for round_ in range(args.rounds):
            order = SERVERS if round_ % 2 == 0 else SERVERS[::-1]
            for door in DOORS:
                for server in order:
                    url, data, header = targets[(server, door)]
                    result = wrk(url, data, args.duration_s, args.connections, header)
                    rows.append({"round": round_, "server": server, "door": door, **result})
                    print(
                        f"round {round_} {door:6} {server:14} {result['rps']:8.0f} req/s "
                        f"p99 {result['p99_ms']:.1f} ms errors {result['errors']}",
                        file=sys.stderr,
                    )
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: per door, each server's best round, and each round's worker / in-process ratio."""
    lines = [
        "| door | in-process req/s | worker process req/s | best vs best | each round "
        "| p99 ms (in / worker) |",
        "|---|---|---|---|---|---|",
    ]
    for door in DOORS:
        runs = [r for r in rows if r["door"] == door]
        best = {
            server: max((r for r in runs if r["server"] == server), key=lambda r: r["rps"])
            for server in SERVERS
        }
        rounds = sorted({r["round"] for r in runs})
        ratios = []
        for round_ in rounds:
            by = {r["server"]: r["rps"] for r in runs if r["round"] == round_}
            ratios.append(by["worker process"] / by["in-process"])
        inside, worker = best["in-process"], best["worker process"]
        lines.append(
            f"| {door} | {inside['rps']:.0f} | {worker['rps']:.0f} | {worker['rps'] / inside['rps']:.1%} "
            f"| {', '.join(f'{ratio:.1%}' for ratio in ratios)} (median {statistics.median(ratios):.1%}) "
            f"| {inside['p99_ms']:.1f} / {worker['p99_ms']:.1f} |"
        )
    return "\n".join(lines)


def transport(sizes: list[int], seconds: float = 1.0) -> list[dict]:
    """Round trips of one float32 array of each size (bytes) to a forked echo process and back."""
    left, right = socket.socketpair()
    child = os.fork()
    if child == 0:  # the echo: answer each Run with its own arrays, until the socket closes
        left.close()
        channel = Channel(right)
        with contextlib.suppress(EOFError):
            while True:
                message = channel.receive()
                assert isinstance(message, Run)
                channel.send(Ran(message.arrays))
        os._exit(0)
    right.close()
    channel = Channel(left)
    results = []
    try:
        for size in sizes:
            arrays = [np.ones(size // 4, np.float32)]
            count, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                channel.send(Run(arrays))
                channel.receive()
                count += 1
            results.append({"bytes": size, "round_trip_us": (time.perf_counter() - start) / count * 1e6})
    finally:
        channel.close()
        os.waitpid(child, 0)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure(args, Path(tmp))
    sizes = [4 * 1024, 256 * 1024, 1024 * 1024, 16 * 1024 * 1024]
    echo = transport(sizes)
    print(table(rows))
    print()
    print("| bytes each way | round trip us |")
    print("|---|---|")
    for row in echo:
        print(f"| {row['bytes']:,} | {row['round_trip_us']:.0f} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "worker_process.json").write_text(json.dumps({"rows": rows, "transport": echo}, indent=2))


if __name__ == "__main__":
    main()
