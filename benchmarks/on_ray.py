"""modelbay on Ray (1 and 2 replicas) vs modelbay alone vs a plain Ray Serve deployment, one run.

    python benchmarks/on_ray.py                 # ~6 minutes; needs modelbay[ray]

The digits ONNX model (examples/digits/artifacts/digits.onnx), one scan per OIP JSON request, driven
by modelbay's own closed-loop load generator (modelbay.bench.load.measure: 32 keep-alive
connections) against, in turn:
  - `modelbay serve digits.onnx` (one process);
  - `modelbay serve digits.onnx --ray ADDRESS --replicas N --num-cpus 1`, N = 1 and 2, and N = 1
    again on Serve's own request path (SERVE_DEFAULTS: without what modelbay.ray.options.SERVE_ENV
    sets);
  - a plain Ray Serve deployment of the same model written the way Ray's docs show it
    (`@serve.deployment` + `@serve.batch`, `await request.json()`, onnxruntime), N = 1 and 2,
    with the same batch limit (32) and no batch wait (modelbay's defaults): on Serve's defaults,
    then on a Ray node started with RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (Ray's high-throughput mode;
    its HAProxy ingress, RAY_SERVE_ENABLE_HA_PROXY, needs an haproxy binary this machine lacks).
The Ray runs share a local Ray node (2 logical CPUs, no dashboard) started by this script in a
temporary Ray folder on 127.0.0.1. modelbay's front answers HTTP itself on the head node and calls
the replicas through Serve handles over gRPC (one Serve hop; Serve's proxies off; requests grouped
into calls, at most two in flight per replica: modelbay.ray.remote); the plain deployment is
reached through Serve's HTTP proxy, its only door. The machine has 2 cores: the load generator,
the proxy or front and the replicas all share them, so this measures what each layer costs per
request rather than what more nodes would add. Prints one markdown table, with each serving
process's CPU per request over the measured window (from /proc: the server alone; the front, the
replicas and Serve's proxy on Ray).
(Named on_ray.py: a ray.py here would shadow the ray package for scripts run from this folder.)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run  # noqa: E402

from modelbay.bench.load import Target, measure  # noqa: E402

ONNX = HERE.parent / "examples" / "digits" / "artifacts" / "digits.onnx"
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # keep Ray on 127.0.0.1 (tests/e2e/test_ray.py)
CONCURRENCY = 32


def body() -> bytes:
    """One digits scan as an OIP JSON inference request ([1, 1, 8, 8] FP32)."""
    from sklearn.datasets import load_digits

    image = (load_digits().images[0] / 16.0).astype(np.float32).reshape(1, 1, 8, 8)
    tensor = {"name": "image", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": image.ravel().tolist()}
    return json.dumps({"inputs": [tensor]}).encode()


def plain_app(replicas: int) -> Any:
    """The plain Ray Serve deployment of the model, as Ray's batching guide writes one."""
    import onnxruntime
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    @serve.deployment(num_replicas=replicas, max_ongoing_requests=64, ray_actor_options={"num_cpus": 1})
    class PlainDigits:
        def __init__(self, path: str) -> None:
            self.session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])

        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
        async def predict(self, images: list[np.ndarray]) -> list[list[list[float]]]:
            logits = self.session.run(None, {"image": np.concatenate(images)})[0]
            return [[row] for row in logits.tolist()]

        async def __call__(self, request: Request) -> JSONResponse:
            tensor = (await request.json())["inputs"][0]
            image = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
            logits = await self.predict(image)
            # A Response, not a dict: Serve would send a dict chunked, and the load generator reads
            # answers by their Content-Length, as modelbay sends them.
            output = {"name": "logits", "datatype": "FP32", "shape": [1, 10], "data": logits}
            return JSONResponse({"outputs": [output]})

    return PlainDigits.bind(str(ONNX))


def serve_plain(address: str, port: int, replicas: int) -> None:
    """Deploy `plain_app` on the cluster at `address` (Serve's proxy on `port`) until SIGTERM."""
    import ray
    from ray import serve

    ray.init(address=address, logging_level="ERROR")
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    serve.run(plain_app(replicas), name="plain", route_prefix="/")
    stopping = [False]
    signal.signal(signal.SIGTERM, lambda *_: stopping.__setitem__(0, True))
    while not stopping[0]:
        time.sleep(0.5)
    serve.delete("plain")
    ray.shutdown()


def hold_cluster(address_file: str) -> None:
    """A one-node local Ray (2 CPUs, no dashboard) on 127.0.0.1; its address into `address_file`."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "node_ip_address": "127.0.0.1", "include_dashboard": False},
    )
    stopping = [False]
    signal.signal(signal.SIGTERM, lambda *_: stopping.__setitem__(0, True))
    Path(address_file).write_text(cluster.address)
    while not stopping[0]:
        time.sleep(0.5)
    cluster.shutdown()


@contextlib.contextmanager
def ray_node(folder: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """`hold_cluster` in a child process (its environment and its Ray processes' with `env` too);
    yields the address, stops it by its PID at the end."""
    address_file = folder / "address"
    process = subprocess.Popen(
        [sys.executable, __file__, "cluster", str(address_file)],
        env={**os.environ, **LOOPBACK, "RAY_TMPDIR": str(folder), **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not address_file.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the Ray node did not start")
            time.sleep(0.5)
        yield address_file.read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# Serving processes by role, from their command line (Ray's workers retitle theirs "ray::...").
ROLES = (
    ("front", "ServeReplica:modelbay:modelbay-front"),
    ("replicas", "ServeReplica:modelbay:digits:"),
    ("replicas", "ServeReplica:plain:"),
    ("proxy", "ray::ProxyActor"),
)
WARMUP_S = 3.0
# Serve's own values of the variables modelbay.ray.options.SERVE_ENV sets (the environment of
# `modelbay serve --ray` overrides them): handle calls as Ray actor tasks, user code and router
# on threads of their own.
SERVE_DEFAULTS = {
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "0",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "1",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1",
}


def cpu_seconds() -> dict[tuple[str, str], float]:
    """CPU seconds (user + system, from /proc/PID/stat) each serving process has used so far, by
    (role, PID); roles: "server" (`modelbay serve` without --ray), "front", "replicas", "proxy"
    (Serve's HTTP proxy)."""
    tick = os.sysconf("SC_CLK_TCK")
    used: dict[tuple[str, str], float] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:  # gone meanwhile
            continue
        role = next((role for role, mark in ROLES if mark in cmdline), None)
        if role is None and "modelbay serve" in cmdline and "--ray" not in cmdline:
            role = "server"
        if role is not None:
            used[role, pid] = (int(fields[11]) + int(fields[12])) / tick
    return used


def point(
    name: str, command: list[str], env: dict[str, str], url: str, payload: bytes, seconds: float
) -> dict:
    """One row: requests per second and latency, and each serving role's CPU milliseconds per
    request over the measured window (read from /proc when it begins and ends)."""
    with run.running(command, env, url, payload):
        window: list[dict[str, float]] = []
        begins = 0.4 + WARMUP_S  # modelbay.bench.load.measure starts its clients 0.4 s after the call
        timers = [
            threading.Timer(at, lambda: window.append(cpu_seconds())) for at in (begins, begins + seconds)
        ]
        for timer in timers:
            timer.start()
        measured = measure(
            Target.of(url, payload, {"content-type": "application/json"}), CONCURRENCY, seconds, WARMUP_S
        )
        for timer in timers:
            timer.join()
    first, last = window
    cpu_ms: dict[str, float] = {}  # a process gone by the window's end (a row before's) counts nothing
    for (role, pid), seconds_used in last.items():
        spent = seconds_used - first.get((role, pid), 0.0)
        cpu_ms[role] = cpu_ms.get(role, 0.0) + spent * 1000 / max(1, measured.requests)
    print(f"{name}: {measured.rps:.0f} req/s, p99 {measured.p99_ms:.1f} ms", file=sys.stderr, flush=True)
    return {"server": name, "cpu_ms_per_request": cpu_ms, **dataclasses.asdict(measured)}


def plain_rows(address: str, env: dict[str, str], payload: bytes, seconds: float, mode: str) -> list[dict]:
    """The plain Ray Serve deployment with 1 and 2 replicas on the node at `address`."""
    rows, port = [], run.free_port()
    for replicas in (1, 2):
        command = [sys.executable, __file__, "plain", address, str(port), str(replicas)]
        url = f"http://127.0.0.1:{port}/"
        rows.append(
            point(f"plain Ray Serve, {replicas} replica(s){mode}", command, env, url, payload, seconds)
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration-s", type=float, default=15.0)
    args = parser.parse_args()
    run.pin = lambda core: []  # type: ignore[assignment]  # Ray places its own processes
    payload, rows = body(), []
    port = run.free_port()
    alone = run.modelbay_command(ONNX, port)
    rows.append(
        point(
            "modelbay alone",
            alone,
            {},
            f"http://127.0.0.1:{port}/v2/models/digits/infer",
            payload,
            args.duration_s,
        )
    )
    with tempfile.TemporaryDirectory(prefix="mbbench") as tmp, ray_node(Path(tmp)) as address:
        env = {**LOOPBACK, "RAY_TMPDIR": tmp}
        port = run.free_port()
        for replicas in (1, 2):
            command = run.modelbay_command(
                ONNX, port, "--ray", address, "--replicas", str(replicas), "--num-cpus", "1"
            )
            url = f"http://127.0.0.1:{port}/v2/models/digits/infer"
            rows.append(
                point(f"modelbay on Ray, {replicas} replica(s)", command, env, url, payload, args.duration_s)
            )
        # The same on Serve's own request path: what modelbay.ray.options.SERVE_ENV changes.
        command = run.modelbay_command(ONNX, port, "--ray", address, "--replicas", "1", "--num-cpus", "1")
        name = "modelbay on Ray, 1 replica(s), Serve's default request path"
        rows.append(point(name, command, {**env, **SERVE_DEFAULTS}, url, payload, args.duration_s))
        rows += plain_rows(address, env, payload, args.duration_s, "")
    fast = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
    with tempfile.TemporaryDirectory(prefix="mbbench") as tmp, ray_node(Path(tmp), fast) as address:
        env = {**LOOPBACK, "RAY_TMPDIR": tmp, **fast}
        rows += plain_rows(address, env, payload, args.duration_s, ", RAY_SERVE_THROUGHPUT_OPTIMIZED=1")
    head = (
        f"| server ({CONCURRENCY} connections, {args.duration_s:.0f} s) | req/s | p50 ms | p99 ms | errors |"
    )
    print(head + " CPU ms per request |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        cells = f"{row['rps']:.0f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['errors']}"
        cpu = " + ".join(f"{role} {ms:.2f}" for role, ms in sorted(row["cpu_ms_per_request"].items()))
        print(f"| {row['server']} | {cells} | {cpu} |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "cluster":
        hold_cluster(sys.argv[2])
    elif len(sys.argv) > 1 and sys.argv[1] == "plain":
        serve_plain(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
