"""modelbay against the usual ways to serve a model, side by side in one run, on one core each.

    python benchmarks/run.py                                # all models and servers, 2 rounds (~20 min)
    python benchmarks/run.py --models linear --duration-s 5 --rounds 1

For each model (benchmarks/models.py) and server, the server is pinned to core 0 (`taskset`) and
`wrk` (Debian's package; compiled, so the client is not the bottleneck) drives it from core 1 with
64 connections, every request `{"input": one example}` as JSON. Servers:
  modelbay   `modelbay serve model.pt2 --max-batch-size B --max-queue-delay-ms 5` (the simple door,
             /predict/{model}), B = min(the model's best in-process batch size, connections): what an
             operator sets for this load (with 64 closed-loop clients, waiting a few ms for a full
             batch beats running half batches back to back). The same server is also driven with
             raw tensors both ways (OIP binary extension, /v2/models/M/infer, binary_data_output)
  fastapi    the hand-written way: FastAPI + pydantic, one forward pass per request (servers/)
  litserve   LitServe with batching (max_batch_size 64, batch_timeout 1 ms)
  bare-asgi  an ASGI app on uvicorn that reads the body and returns fixed JSON: the ceiling of the
             HTTP stack, driven with the JSON body and with modelbay's binary body
and the in-process limit: the model alone on one core, one torch thread, with the allocator
settings `modelbay serve` uses, items/s at its best batch size (and at 64). The one-core ceiling
of a modelbay row is that limit (at the batch size modelbay ran) with the bare responder's time
per request (same body) added: no server on that core can pass it.
Only 127.0.0.1 is contacted; every run ends at its deadline.
Prints a Markdown table; writes benchmarks/results/run.json and run.png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import torch
from prometheus_client.parser import text_string_to_metric_families

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from models import MODELS, body, build, example, export  # noqa: E402

from modelbay.runtime.process import tune_malloc  # noqa: E402

RESULTS = HERE / "results"
BIN = Path(sys.executable).parent
SERVERS = ("modelbay", "fastapi", "litserve", "bare-asgi")
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pin(core: int) -> list[str]:
    return ["taskset", "-c", str(core)] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []


def modelbay_command(path: Path, port: int, *flags: str) -> list[str]:
    """`modelbay serve PATH` on `port`, gRPC off, quiet, with extra `flags`."""
    return [
        str(BIN / "modelbay"),
        "serve",
        str(path),
        "--port",
        str(port),
        "--grpc-port",
        "0",
        "--log-level",
        "warning",
        *flags,
    ]


def server_command(server: str, model: str, artifact: Path, port: int, batch: int) -> tuple[list[str], str]:
    """The command line of `server` for `model`, and the path requests go to."""
    uvicorn = [
        str(BIN / "python"),
        "-m",
        "uvicorn",
        "--app-dir",
        str(HERE / "servers"),
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    if server == "modelbay":
        flags = ("--name", model, "--max-batch-size", str(batch), "--max-queue-delay-ms", "5")
        return modelbay_command(artifact, port, *flags), f"/predict/{model}"
    if server == "fastapi":
        return [*uvicorn, "fastapi_app:app"], "/predict"
    if server == "litserve":
        return [str(BIN / "python"), str(HERE / "servers" / "litserve_app.py")], "/predict"
    return [*uvicorn, "bare_asgi:app"], "/"


@contextlib.contextmanager
def running(
    command: list[str], env: dict[str, str], url: str, payload: bytes, headers: dict[str, str] | None = None
) -> Iterator[None]:
    """Start `command` pinned to core 0 in its own process group; yield once `url` answers 200
    (to a POST of `payload` with `headers`, e.g. an API key's)."""
    process = subprocess.Popen(
        [*pin(0), *command],
        env={**os.environ, **env},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            with contextlib.suppress(httpx.HTTPError):
                reply = httpx.post(
                    url,
                    content=payload,
                    headers={"content-type": "application/json", **(headers or {})},
                    timeout=10,
                )
                if reply.status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{command} did not come up")
            time.sleep(0.3)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def metric(port: int, name: str, **labels: str) -> float:
    """The sum of the samples `name{labels...}` (labels: a subset to match) in the /metrics of the
    server on `port`, parsed by prometheus-client; 0.0 when there are none."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    return (
        sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        )
        + 0.0
    )


def write_script(
    payload_file: Path, header_length: int | None, headers: dict[str, str] | None = None
) -> Path:
    """A wrk Lua script that POSTs `payload_file` (binary extension body when `header_length` is
    set), with `headers` too."""
    script = payload_file.with_suffix(".lua")
    content_type = "application/octet-stream" if header_length is not None else "application/json"
    extra = f'wrk.headers["Inference-Header-Content-Length"] = "{header_length}"\n' if header_length else ""
    extra += "".join(f'wrk.headers["{name}"] = "{value}"\n' for name, value in (headers or {}).items())
    script.write_text(
        'wrk.method = "POST"\n'
        f'local f = io.open("{payload_file}", "rb"); wrk.body = f:read("*a"); f:close()\n'
        f'wrk.headers["Content-Type"] = "{content_type}"\n{extra}'
    )
    return script


def binary_body(
    model: str, url: str, folder: Path, headers: dict[str, str] | None = None
) -> tuple[Path, int]:
    """The example as an OIP binary-extension body for `url`'s model (its metadata asked with
    `headers`); its file and JSON header length."""
    base = url.split("/predict/")[0]
    name = httpx.get(f"{base}/v2/models/{model}", headers=headers).json()["inputs"][0]["name"]
    raw = example(model).numpy().astype("<f4").tobytes()
    shape = list(example(model).shape)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": shape,
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    path = folder / f"{model}.bin"
    path.write_bytes(header + raw)
    return path, len(header)


def wrk(
    url: str,
    payload_file: Path,
    duration_s: float,
    connections: int,
    header_length: int | None = None,
    script: Path | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, float]:
    """Run wrk from core 1 against `url`; requests/s, p50/p99 ms and errors (non-2xx, socket).

    Every request POSTs the bytes of `payload_file` (with the OIP binary header when
    `header_length` is given, and `headers`), unless `script` is a wrk Lua script of its own.
    """
    if script is None:
        script = write_script(payload_file, header_length, headers)
    command = [
        *pin(1),
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration_s:g}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(command, capture_output=True, text=True, timeout=duration_s + 60).stdout

    def latency(label: str) -> float:
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        return float(match.group(1)) * UNITS[match.group(2)] if match else float("nan")

    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "errors": errors,
    }


def in_process_limit(model: str, seconds: float = 2.0, rounds: int = 2) -> dict[str, float]:
    """Items/s of the model alone (this process must be pinned to one core), per batch size.

    Each size is timed `rounds` times for `seconds`, the sizes interleaved, and the best kept: a
    shared machine only ever makes a measurement slower.
    """
    torch.set_num_threads(1)
    tune_malloc()  # the allocator settings `modelbay serve` runs with (modelbay/runtime/process.py)
    module, x = build(model), example(model)
    results: dict[str, float] = {}
    with torch.inference_mode():
        for _ in range(rounds):
            for size in (1, 8, 16, 32, 64, 128):
                batch = x.repeat(size, *[1] * (x.dim() - 1))
                module(batch)
                count, start = 0, time.perf_counter()
                while time.perf_counter() - start < seconds:
                    module(batch)
                    count += size
                rate = count / (time.perf_counter() - start)
                results[str(size)] = max(rate, results.get(str(size), 0.0))
    return results


def table(rows: list[dict]) -> str:
    """Markdown: one row per (model, server), with the ratios the performance targets are stated in."""
    head = [
        "model",
        "server",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "vs FastAPI",
        "vs in-process best",
        "vs batch 64",
        "vs one-core ceiling",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        fastapi = next((r["rps"] for r in mine if r["server"] == "fastapi"), float("nan"))
        limit = next(r for r in mine if r["server"] == "in-process")
        lines.append(
            f"| {model} | in-process, best batch {limit['best_batch']} | {limit['rps']:.0f} items/s "
            f"| | | | | | batch 64: {limit['batch64']:.0f} items/s | |"
        )
        bare = {r["server"]: r["rps"] for r in mine if r["server"].startswith("bare-asgi")}
        for r in mine:
            if r["server"] == "in-process":
                continue
            cells = [
                model,
                r["server"],
                f"{r['rps']:.0f}",
                f"{r['p50_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                str(r["errors"]),
                f"{r['rps'] / fastapi:.2f}x",
                f"{r['rps'] / limit['rps']:.0%}",
                f"{r['rps'] / limit['batch64']:.0%}",
                _ceiling_cell(r, limit, bare),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ceiling(items_per_s: float, bare_per_s: float) -> float:
    """What one core can serve if each request costs the bare ASGI responder's time (same body) plus
    the model's in-process time per item: 1 / (1/items_per_s + 1/bare_per_s), requests/s."""
    return 1 / (1 / items_per_s + 1 / bare_per_s)


def _ceiling_cell(row: dict, limit: dict, bare: dict[str, float]) -> str:
    """`ceiling (share)` for modelbay's rows: the model at the batch size modelbay ran with."""
    if not row["server"].startswith("modelbay"):
        return ""
    body = "bare-asgi (binary)" if row["server"].endswith("(binary)") else "bare-asgi"
    if body not in bare:
        return ""
    top = ceiling(limit["by_batch"][str(limit["served_batch"])], bare[body])
    return f"{top:.0f} ({row['rps'] / top:.0%})"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    order = (
        "modelbay",
        "modelbay (binary)",
        "fastapi",
        "litserve",
        "bare-asgi",
        "bare-asgi (binary)",
        "in-process",
    )
    servers = [s for s in order if any(r["server"] == s for r in rows)]
    figure, axes = plt.subplots(1, len(models), figsize=(4 * len(models), 4.5))
    for axis, model in zip(axes if len(models) > 1 else [axes], models, strict=True):
        values = [
            next((r["rps"] for r in rows if r["model"] == model and r["server"] == s), 0) for s in servers
        ]
        colors = ["#2a7", "#1a5", "#888", "#a77", "#bbb", "#ccc", "#57a"]
        axis.bar(servers, values, color=colors[: len(servers)])
        axis.set_yscale("log")  # the in-process limit of a tiny model is 1000x any server
        axis.set_title(model)
        axis.set_ylabel("requests/s (in-process: items/s), log")
        axis.set_xticks(range(len(servers)), servers, rotation=40, ha="right")
    figure.suptitle("one core each, 64 connections (benchmarks/run.py)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def measure(model: str, artifact: Path, payload: Path, folder: Path, args: argparse.Namespace) -> list[dict]:
    """One round for `model`: its in-process limit, then every server in turn; one row each."""
    limit_out = subprocess.run(
        [*pin(0), sys.executable, __file__, "--in-process", model],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    limits = json.loads(limit_out)
    best = max(limits, key=lambda size: limits[size])
    batch = min(int(best), args.connections)
    rows = [
        {
            "model": model,
            "server": "in-process",
            "rps": limits[best],
            "best_batch": int(best),
            "batch64": limits["64"],
            "served_batch": batch,
            "by_batch": limits,
        }
    ]
    raw: Path | None = None  # the binary-extension body, once modelbay has told its input name
    length = 0
    for server in args.servers:
        port = free_port()
        command, path = server_command(server, model, artifact, port, batch)
        url = f"http://127.0.0.1:{port}{path}"
        with running(command, {"MODEL": model, "PORT": str(port)}, url, payload.read_bytes()):
            wrk(url, payload, 2, args.connections)  # warm-up
            runs = [(server, wrk(url, payload, args.duration_s, args.connections))]
            if server == "modelbay":
                raw, length = binary_body(model, url, folder)
                infer = f"http://127.0.0.1:{port}/v2/models/{model}/infer"
                runs.append(("modelbay (binary)", wrk(infer, raw, args.duration_s, args.connections, length)))
            if server == "bare-asgi" and raw is not None:
                runs.append(("bare-asgi (binary)", wrk(url, raw, args.duration_s, args.connections, length)))
        for name, result in runs:
            rows.append({"model": model, "server": name, **result})
            print(
                f"{model:7} {name:18} {result['rps']:9.0f} req/s  p99 {result['p99_ms']:.2f} ms",
                file=sys.stderr,
            )
    return rows


def best_of(rounds: list[list[dict]]) -> list[dict]:
    """Per server, the row of the round with the most requests/s (a shared machine only ever makes a
    measurement slower); the in-process limit likewise. Each row records how many rounds it beat."""
    best: dict[str, dict] = {}
    for row in (row for rows in rounds for row in rows):
        if row["server"] not in best or row["rps"] > best[row["server"]]["rps"]:
            best[row["server"]] = {**row, "rounds": len(rounds)}
    return list(best.values())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=list(SERVERS))
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--rounds", type=int, default=2, help="measure everything this many times; keep each best"
    )
    parser.add_argument("--in-process", metavar="MODEL", help=argparse.SUPPRESS)
    parser.add_argument(
        "--plot-only", action="store_true", help="redraw results/run.png from results/run.json"
    )
    args = parser.parse_args()
    if args.in_process:
        print(json.dumps(in_process_limit(args.in_process)))
        return
    if args.plot_only:
        plot(json.loads((RESULTS / "run.json").read_text()), RESULTS / "run.png")
        return
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")
    RESULTS.mkdir(exist_ok=True)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            payload = Path(tmp) / f"{model}.json"
            payload.write_bytes(body(model))
            artifact = export(model, Path(tmp))
            rounds = [measure(model, artifact, payload, Path(tmp), args) for _ in range(args.rounds)]
            rows += best_of(rounds)
    print(table(rows))
    (RESULTS / "run.json").write_text(json.dumps(rows, indent=2))
    plot(rows, RESULTS / "run.png")


if __name__ == "__main__":
    main()
