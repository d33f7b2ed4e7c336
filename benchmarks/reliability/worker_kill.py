"""A worker killed under load: with `--workers 2`, one worker process gets SIGKILL a third of the
way into a steady load; how many requests are lost, and how long until its replacement answers.

    python benchmarks/reliability/worker_kill.py                  # 30 s of load
    python benchmarks/reliability/worker_kill.py --duration-s 15

Serves the bundled digits model; `--concurrency` closed-loop clients on keep-alive connections
POST a PNG to /predict/digits. uvicorn's supervisor restarts the dead worker. "Replacement
answers" is when the new process's own request counter first shows an answered request: its
metrics file in PROMETHEUS_MULTIPROC_DIR (one per process, prometheus-client's multiprocess mode)
is read, so the time is the replacement's, not the surviving worker's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx
from prometheus_client.multiprocess import MultiProcessCollector

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import breakdown, closed_loop, counts, png, serving, table


def workers(parent: int) -> set[int]:
    """The worker processes of `parent` (multiprocessing spawn children; not its resource tracker)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if ppid == parent and b"spawn_main" in command:
            found.add(int(entry.name))
    return found


def answered(metrics: Path, pid: int) -> float:
    """Requests process `pid` has answered, from its own counter file (0 before it has one)."""
    path = metrics / f"counter_{pid}.db"
    if not path.exists():
        return 0.0
    return sum(
        sample.value
        for metric in MultiProcessCollector.merge([str(path)], accumulate=False)
        for sample in metric.samples
        if sample.name == "modelbay_requests_total"
    )


async def kill_one(url: str, parent: int, metrics: Path, after_s: float, limit_s: float) -> dict[str, float]:
    """SIGKILL one worker after `after_s`; seconds from then until a new worker exists and until
    it has answered a request (nan if not within `limit_s`). The load's keep-alive connections
    all move to the surviving worker, so meanwhile a request on a new connection every 20 ms gives
    the replacement the chance to answer as soon as it accepts."""
    await asyncio.sleep(after_s)
    before = workers(parent)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    times = {"process": float("nan"), "answers": float("nan")}
    replacement = None
    while time.monotonic() - killed < limit_s:
        if replacement is None:
            new = workers(parent) - before
            if new:
                replacement = new.pop()
                times["process"] = time.monotonic() - killed
        elif await asyncio.to_thread(answered, metrics, replacement) > 0:
            times["answers"] = time.monotonic() - killed
            break
        else:
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                with contextlib.suppress(httpx.HTTPError):
                    await client.post("/predict/digits", content=png(0))
        await asyncio.sleep(0.02)
    return times


async def run(url: str, parent: int, metrics: Path, concurrency: int, duration_s: float) -> tuple:
    images = [png(digit) for digit in range(10)]

    async def send(client: httpx.AsyncClient, index: int) -> httpx.Response:
        return await client.post("/predict/digits", content=images[index % 10])

    killing = asyncio.create_task(kill_one(url, parent, metrics, duration_s / 3, duration_s * 2 / 3))
    outcomes = await closed_loop(url, send, concurrency, duration_s)
    return outcomes, await killing


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration-s", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        metrics = Path(folder)
        env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics)}
        with serving("--workers", "2", "--log-level", "warning", env=env) as served:
            parent = served.process.pid
            deadline = time.monotonic() + 120
            while len(workers(parent)) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            outcomes, times = asyncio.run(run(served.url, parent, metrics, args.concurrency, args.duration_s))
            after = len(workers(parent))
    seen = counts(outcomes)
    lost = len(outcomes) - seen["200"]
    print(
        f"worker kill: --workers 2, {args.concurrency} clients for {args.duration_s:.0f} s, one worker "
        f"SIGKILLed at {args.duration_s / 3:.0f} s; workers at the end: {after}"
    )
    print(
        table(
            ["requests", "answered 200", "lost", "lost by kind", "new worker up s", "it answers s"],
            [[len(outcomes), seen["200"], lost, breakdown(seen), times["process"], times["answers"]]],
        )
    )


if __name__ == "__main__":
    main()
