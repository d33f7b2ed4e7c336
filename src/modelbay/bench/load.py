"""The load generator of `modelbay bench`: closed-loop HTTP/1.1 clients in several processes.

Each of `concurrency` connections sends one request, waits for its answer, and sends the next
(a closed loop, as wrk and perf_analyzer's concurrency mode do), on keep-alive connections, for
`duration_s` seconds after a warm-up. The connections are spread over `processes` OS processes,
each an asyncio loop (uvloop when installed) writing pre-encoded request bytes and reading
answers by their Content-Length, so the generator costs a few microseconds a request and stays
off the server's path as far as the machine's cores allow. Only the loopback address or the URL
given is contacted; every run ends at its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Target:
    """What each request sends: `method path` to `host:port` with `body` and `headers`."""

    host: str
    port: int
    path: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, url: str, body: bytes, headers: Mapping[str, str] | None = None) -> Target:
        """The target of POSTing `body` to `url` (http://host:port/path)."""
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"modelbay bench sends plain HTTP to a host: got {url!r}")
        path = parsed.path + (f"?{parsed.query}" if parsed.query else "")
        return cls(parsed.hostname, parsed.port or 80, path, body, tuple((headers or {}).items()))

    def request(self) -> bytes:
        lines = [
            f"POST {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            f"Content-Length: {len(self.body)}",
            *(f"{name}: {value}" for name, value in self.headers),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


@dataclass(frozen=True, slots=True)
class Measured:
    """One load point: requests answered 2xx per second, their latency percentiles (ms), errors
    (non-2xx answers and broken connections) in `duration_s` seconds at `concurrency`."""

    concurrency: int
    requests: int
    errors: int
    duration_s: float
    rps: float
    p50_ms: float
    p99_ms: float


def measure(
    target: Target, concurrency: int, duration_s: float, warmup_s: float = 1.0, processes: int = 1
) -> Measured:
    """Drive `target` with `concurrency` closed-loop connections over `processes` processes for
    `warmup_s` (not counted) then `duration_s` seconds. Raises ValueError for concurrency < 1."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    processes = max(1, min(processes, concurrency))
    shares = [concurrency // processes + (1 if i < concurrency % processes else 0) for i in range(processes)]
    start = time.time() + 0.3 + 0.1 * processes  # every process begins at the same moment
    context = multiprocessing.get_context("fork" if hasattr(__import__("os"), "fork") else "spawn")
    with context.Pool(processes) as pool:
        parts = pool.starmap(_process, [(target, share, start, warmup_s, duration_s) for share in shares])
    latencies = np.concatenate([part[0] for part in parts]) if parts else np.empty(0)
    errors = sum(part[1] for part in parts)
    ok = int(latencies.size)
    p50, p99 = (float(v) * 1000 for v in np.percentile(latencies, [50, 99])) if ok else (0.0, 0.0)
    return Measured(concurrency, ok, errors, duration_s, ok / duration_s, p50, p99)


def _process(
    target: Target, connections: int, start: float, warmup_s: float, duration_s: float
) -> tuple[np.ndarray, int]:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    return asyncio.run(_drive(target, connections, start, warmup_s, duration_s))


async def _drive(
    target: Target, connections: int, start: float, warmup_s: float, duration_s: float
) -> tuple[np.ndarray, int]:
    await asyncio.sleep(max(0.0, start - time.time()))
    now = time.monotonic()
    counted_from, until = now + warmup_s, now + warmup_s + duration_s
    results = await asyncio.gather(
        *(_connection(target, target.request(), counted_from, until) for _ in range(connections))
    )
    latencies = [latency for found, _ in results for latency in found]
    return np.asarray(latencies, dtype=np.float64), sum(errors for _, errors in results)


async def _connection(
    target: Target, request: bytes, counted_from: float, until: float
) -> tuple[list[float], int]:
    """One closed-loop client until `until`; (latencies in s of 2xx answers after `counted_from`,
    errors after it). A broken connection is an error and is opened again."""
    latencies: list[float] = []
    errors = 0
    streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    while (sent := time.monotonic()) < until:
        try:
            if streams is None:
                streams = await asyncio.wait_for(
                    asyncio.open_connection(target.host, target.port), until - sent
                )
            reader, writer = streams
            writer.write(request)
            status, keep = await asyncio.wait_for(_answer(reader), max(until - sent, 0.001) + 5)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            if streams is not None:
                streams[1].close()
            streams = None
            errors += sent >= counted_from
            await asyncio.sleep(0.01)
            continue
        if sent >= counted_from:
            if 200 <= status < 300:
                latencies.append(time.monotonic() - sent)
            else:
                errors += 1
        if not keep:
            writer.close()
            streams = None
    if streams is not None:
        streams[1].close()
    return latencies, errors


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one HTTP/1.1 answer; (its status, whether the connection stays open)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, keep = 0, True
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection" and value.strip().lower() == "close":
            keep = False
    await reader.readexactly(length)
    return status, keep
