"""What the reliability scripts share: a real `modelbay serve` subprocess, a slow model folder,
a closed-loop HTTP load (httpx, async), percentiles and a Markdown table.

Every load here targets 127.0.0.1 only and stops by itself after its duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "examples" / "digits" / "samples"

SLOW_HANDLER = """
import time


class Slow:
    \"\"\"Each batch takes {service_s} s (sleeping, so it uses no CPU): a model of known capacity.\"\"\"

    def predict(self, batch):
        time.sleep({service_s})
        return batch
"""
SLOW_MANIFEST = "inputs: [{name: x, datatype: FP32, shape: [-1, 4]}]\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Served:
    """A running `modelbay serve`: its process (the parent, with --workers), URL and gRPC port."""

    process: subprocess.Popen[bytes]
    url: str
    grpc_port: int
    log: Path


@contextlib.contextmanager
def serving(*args: str, env: dict[str, str] | None = None, timeout_s: float = 180.0) -> Iterator[Served]:
    """`modelbay serve ARGS` on free loopback ports (HTTP and gRPC), yielded once /v2/health/ready
    says 200; stopped by PID at the end (SIGTERM, then SIGKILL after 30 s) unless already gone.

    Raises RuntimeError with the server's log if it exits or is not ready within `timeout_s`.
    """
    port, grpc_port = free_port(), free_port()
    command = [str(BIN / "modelbay"), "serve", *args, "--port", str(port), "--grpc-port", str(grpc_port)]
    with tempfile.TemporaryDirectory(prefix="modelbay-reliability-") as folder:
        log = Path(folder) / "server.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
            )
        served = Served(process, f"http://127.0.0.1:{port}", grpc_port, log)
        try:
            deadline = time.monotonic() + timeout_s
            while not _ready(served.url):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"modelbay serve did not come up:\n{log.read_text()[-4000:]}")
                time.sleep(0.2)
            yield served
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def slow_model(folder: Path, service_s: float) -> Path:
    """A model folder whose predict(batch) sleeps `service_s` per batch; input x: FP32 [-1, 4]."""
    model = folder / "slow"
    model.mkdir()
    (model / "predict.py").write_text(SLOW_HANDLER.format(service_s=service_s))
    (model / "modelbay.yaml").write_text(SLOW_MANIFEST)
    return model


def rss_mib(pid: int) -> float:
    """Resident memory of process `pid` (VmRSS), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


@dataclass(frozen=True)
class Outcome:
    """One request: what came back ("200", "503", or the exception's class name), when it was
    sent (seconds since the load began) and how long it took, in seconds."""

    label: str
    sent_s: float
    latency_s: float


Send = Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]]


async def closed_loop(url: str, send: Send, concurrency: int, duration_s: float) -> list[Outcome]:
    """`concurrency` clients, each sending its next request as soon as the last is answered, for
    `duration_s`. send(client, i) makes request number i. Keep-alive connections, one per client."""
    outcomes: list[Outcome] = []
    start = time.monotonic()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def worker(index: int) -> None:
            count = index
            while (sent := time.monotonic()) - start < duration_s:
                outcomes.append(await one(client, send, count, start, sent))
                count += concurrency

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return outcomes


async def one(client: httpx.AsyncClient, send: Send, index: int, start: float, sent: float) -> Outcome:
    """Request `index`, its answer or failure timed from `sent`."""
    try:
        label = str((await send(client, index)).status_code)
    except httpx.HTTPError as exc:
        label = type(exc).__name__
    done = time.monotonic()
    return Outcome(label, sent - start, done - sent)


def probe(url: str, path: str, body: object, duration_s: float, interval_s: float) -> list[Outcome]:
    """One client that POSTs `body` as JSON to `path` every `interval_s` for `duration_s`, on one
    keep-alive connection: run it in its own process beside a load, its latencies are the
    server's answer times (a client of many connections in one event loop adds its own queueing)."""
    outcomes = []
    start = time.monotonic()
    with httpx.Client(base_url=url, timeout=30) as client:
        while (sent := time.monotonic()) - start < duration_s:
            try:
                label = str(client.post(path, json=body).status_code)
            except httpx.HTTPError as exc:
                label = type(exc).__name__
            outcomes.append(Outcome(label, sent - start, time.monotonic() - sent))
            time.sleep(interval_s)
    return outcomes


def counts(outcomes: Sequence[Outcome]) -> Counter[str]:
    return Counter(outcome.label for outcome in outcomes)


def percentile_ms(outcomes: Sequence[Outcome], q: float, label: str | None = None) -> float:
    """The q-th percentile (0-100, nearest rank) latency of `outcomes` (only `label` ones), in ms."""
    values = sorted(o.latency_s for o in outcomes if label is None or o.label == label)
    if not values:
        return float("nan")
    rank = min(len(values) - 1, max(0, round(q / 100 * len(values) + 0.5) - 1))
    return values[rank] * 1000


def breakdown(counter: Counter[str], skip: Sequence[str] = ("200",)) -> str:
    """Counts as "503: 12, ReadError: 1" for every label not in `skip`; "none" when there are none."""
    parts = [f"{label}: {n}" for label, n in counter.most_common() if label not in skip]
    return ", ".join(parts) or "none"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table; floats with one decimal."""
    cells = [[f"{v:.1f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def png(digit: int) -> bytes:
    """The digits example's sample image of `digit` (PNG bytes)."""
    return (SAMPLES / f"{digit}.png").read_bytes()
