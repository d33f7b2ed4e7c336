"""`modelbay bench`'s sweep: batching settings x concurrencies, each point measured, the best
setting that meets the SLO chosen.

A setting is Triton's dynamic-batching pair (`max_batch_size`, `max_queue_delay_ms`), with
`--workers` server processes, or adaptive batching against an SLO (`slo_ms`, runtime/adaptive.py).
A model path is served by a `modelbay serve` this module starts per setting (on a free loopback
port, stopped by its PID); a running server (`--url`) is given each batching setting with a model
repository load carrying it as `config` (the OIP repository extension's parameter; an admin key or
a loopback client), and keeps its own workers.

The best setting is the one with the highest requests/s at any concurrency among the points whose
p99 is within `slo_ms` and that had no errors (without `slo_ms`: the highest requests/s).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

from modelbay.bench.load import Measured, Target, measure
from modelbay.errors import ModelLoadError
from modelbay.types import DATATYPES


@dataclass(frozen=True, slots=True)
class Setting:
    """One batching setting; `slo_ms` set: adaptive batching under that SLO, up to `max_batch_size`."""

    max_batch_size: int
    max_queue_delay_ms: float
    workers: int = 1
    slo_ms: float | None = None

    @property
    def label(self) -> str:
        batching = (
            f"adaptive (slo {self.slo_ms:g} ms, max {self.max_batch_size})"
            if self.slo_ms is not None
            else f"max_batch_size {self.max_batch_size}, delay {self.max_queue_delay_ms:g} ms"
        )
        return batching + (f", {self.workers} workers" if self.workers > 1 else "")

    def batching(self) -> dict[str, Any]:
        """The ModelConfig `batching` fields of this setting (what --write records)."""
        fields: dict[str, Any] = {
            "max_batch_size": self.max_batch_size,
            "max_queue_delay_ms": self.max_queue_delay_ms,
        }
        if self.slo_ms is not None:
            fields["slo_ms"] = self.slo_ms
        return fields


@dataclass(frozen=True, slots=True)
class Point:
    """A setting measured at one concurrency."""

    setting: Setting
    measured: Measured


def grid(
    batch_sizes: Sequence[int], delays_ms: Sequence[float], workers: Sequence[int], slo_ms: float | None
) -> list[Setting]:
    """Every fixed (batch size, delay, workers), then adaptive ones under `slo_ms` (largest batch
    size as their limit, no delay) for each worker count."""
    settings = [Setting(b, d, w) for w, b, d in itertools.product(workers, batch_sizes, delays_ms)]
    if slo_ms is not None:
        settings += [Setting(max(batch_sizes), 0.0, w, slo_ms) for w in workers]
    return settings


def best(points: Sequence[Point], slo_ms: float | None) -> Point | None:
    """The point of highest requests/s whose p99 meets `slo_ms` with no errors; None if none does."""
    meeting = [
        p for p in points if p.measured.errors == 0 and (slo_ms is None or p.measured.p99_ms <= slo_ms)
    ]
    return max(meeting, key=lambda p: p.measured.rps, default=None)


def run(
    settings: Sequence[Setting],
    concurrencies: Sequence[int],
    serving: Callable[[Setting], contextlib.AbstractContextManager[Target]],
    duration_s: float,
    processes: int,
    progress: Callable[[Point], None] = lambda point: None,
) -> list[Point]:
    """Measure every setting at every concurrency (closed loop); `serving(setting)` makes the
    model answer with that setting and yields its request target."""
    points = []
    for setting in settings:
        with serving(setting) as target:
            for concurrency in concurrencies:
                point = Point(setting, measure(target, concurrency, duration_s, 1.0, processes))
                points.append(point)
                progress(point)
    return points


def example_body(url: str, model: str, headers: dict[str, str]) -> bytes:
    """An OIP JSON request of one row for `model`, from its metadata: random values of each
    input's datatype and shape (-1 dimensions: 1), BYTES as short strings. Raises ModelLoadError
    when the metadata cannot be read."""
    try:
        reply = httpx.get(f"{url}/v2/models/{model}", headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        raise ModelLoadError(f"cannot reach {url}: {exc}") from exc
    if reply.status_code != 200:
        raise ModelLoadError(f"{url}/v2/models/{model} answered {reply.status_code}: {reply.text[:200]}")
    rng = np.random.default_rng(0)
    inputs = []
    for spec in reply.json()["inputs"]:
        shape = [1 if size < 0 else size for size in spec["shape"]]
        if spec["datatype"] == "BYTES":
            data: list[Any] = ["modelbay bench"] * int(np.prod(shape))
        else:
            dtype = DATATYPES[spec["datatype"]]
            values = rng.random(shape) if dtype.kind == "f" else rng.integers(0, 2, shape)
            data = values.astype(dtype).ravel().tolist()
        inputs.append({"name": spec["name"], "shape": shape, "datatype": spec["datatype"], "data": data})
    import json

    return json.dumps({"inputs": inputs}).encode()


@contextlib.contextmanager
def started(path: str, name: str, setting: Setting, extra: Sequence[str] = ()) -> Iterator[str]:
    """`modelbay serve` of the model at `path` with `setting` (a --config file whose models entry
    sets its batching over its folder's modelbay.yaml; --workers) on a free loopback port; yields
    its URL once ready, stops it by its process id. Raises ModelLoadError when it exits first or is
    not ready within 120 s."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="modelbay-bench-") as folder:
        config = Path(folder) / "bench.yaml"
        entry = {"path": str(Path(path).resolve()), "name": name, "batching": setting.batching()}
        config.write_text(yaml.safe_dump({"models": [entry]}))
        command = [sys.executable, "-m", "modelbay.cli.main", "serve", "--config", str(config)]
        command += ["--port", str(port), "--grpc-port", "0", "--workers", str(setting.workers)]
        command += ["--log-level", "warning", "--no-access-log", *extra]
        with _serving(command, f"http://127.0.0.1:{port}", path) as url:
            yield url


@contextlib.contextmanager
def _serving(command: list[str], url: str, path: str) -> Iterator[str]:
    with tempfile.TemporaryFile() as output:  # a file, not a pipe: a pipe left unread would fill up
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while not _ready(url):
                if process.poll() is not None:
                    output.seek(0)
                    said = output.read().decode(errors="replace").strip().splitlines()
                    raise ModelLoadError(f"modelbay serve {path} stopped: {said[-1] if said else ''}")
                if time.monotonic() > deadline:
                    raise ModelLoadError(f"modelbay serve {path} was not ready within 120 s")
                time.sleep(0.2)
            yield url
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def reconfigure(url: str, model: str, setting: Setting, headers: dict[str, str]) -> None:
    """Give the running server's `model` this batching setting: a model repository load with it
    as `config`. Raises ModelLoadError when the server refuses (no admin key, not loopback, mode none)."""
    import json

    config = json.dumps({"batching": setting.batching()})
    reply = httpx.post(
        f"{url}/v2/repository/models/{model}/load",
        json={"parameters": {"config": config}},
        headers=headers,
        timeout=300,
    )
    if reply.status_code != 200:
        raise ModelLoadError(
            f"the server refused to load {model!r} with {setting.label} ({reply.status_code}: "
            f"{reply.text[:200]}); sweeping a running server's batching needs its model repository API"
        )


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
