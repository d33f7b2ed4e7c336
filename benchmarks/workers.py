"""`--workers`: one server process vs two on this machine's 2 cores, same model, one run.

    python benchmarks/workers.py               # ~1 minute

Serves the digits CNN of benchmarks/models.py (request handling, not the model, bounds it: the
case a second process helps) with `--workers 1` and `--workers 2`, unpinned, and drives each with
wrk (64 connections). The machine has only 2 cores, so wrk shares them with the server: the
speed-up is a lower bound. Prints req/s, p50/p99 and the speed-up.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run  # noqa: E402
from models import body, export  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration-s", type=float, default=15.0)
    args = parser.parse_args()
    run.pin = lambda core: []  # type: ignore[assignment]  # both cores for the server, wrk alongside
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        artifact = export("digits", Path(tmp))
        payload = Path(tmp) / "body.json"
        payload.write_bytes(body("digits"))
        for workers in (1, 2):
            port = run.free_port()
            command = run.modelbay_command(
                artifact, port, "--name", "digits", "--max-batch-size", "64", "--workers", str(workers)
            )
            url = f"http://127.0.0.1:{port}/predict/digits"
            with run.running(command, {}, url, payload.read_bytes()):
                run.wrk(url, payload, 3, 64)  # warm-up: every worker loaded and warm
                rows.append((workers, run.wrk(url, payload, args.duration_s, 64)))
    base = rows[0][1]["rps"]
    print("| workers | req/s | p50 ms | p99 ms | errors | speed-up |")
    print("|---|---|---|---|---|---|")
    for workers, r in rows:
        print(
            f"| {workers} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} "
            f"| {r['rps'] / base:.2f}x |"
        )


if __name__ == "__main__":
    main()
