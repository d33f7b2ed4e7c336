"""Shared fixtures: a small real model saved in every format, in-process and real servers."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO

import httpx
import msgspec
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from modelbay.server import Server
from modelbay.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits"
SAMPLES = DIGITS / "samples"
MOBILENET = ROOT / "examples" / "mobilenet"

# Written beside the weights so `--arch tiny_arch:Tiny` finds it in the model's folder.
TINY_ARCH = """
from torch import nn


class Tiny(nn.Sequential):
    def __init__(self, hidden: int = 8) -> None:
        super().__init__(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 3))
"""


def tiny_module(hidden: int = 8) -> torch.nn.Sequential:
    """A 4 -> hidden -> 3 MLP with seeded weights (same layout as tiny_arch.Tiny)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 3)).eval()


@pytest.fixture(scope="session")
def tiny() -> torch.nn.Sequential:
    return tiny_module()


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory: pytest.TempPathFactory, tiny: torch.nn.Sequential) -> dict[str, Path]:
    """The tiny model saved by each PyTorch route (and ONNX), keyed by format name."""
    import safetensors.torch

    out = tmp_path_factory.mktemp("tiny")
    (out / "tiny_arch.py").write_text(TINY_ARCH)
    example = (torch.randn(2, 4),)
    batch = torch.export.Dim("batch")
    files = {
        "torchscript": out / "tiny.torchscript.pt",
        "exported": out / "tiny.pt2",
        "state_dict": out / "tiny.pth",
        "safetensors": out / "tiny.safetensors",
        "pickled": out / "tiny.pickled.pt",
        "checkpoint": out / "tiny.ckpt",
        "onnx": out / "tiny.onnx",
    }
    # Writing the old formats trips torch's own deprecation warnings (TorchScript is deprecated,
    # the ONNX exporter uses deprecated pytree calls); users still have such files to serve.
    with warnings.catch_warnings(), contextlib.redirect_stdout(None):
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(tiny), files["torchscript"])
        torch.export.save(torch.export.export(tiny, example, dynamic_shapes=({0: batch},)), files["exported"])
        torch.save(tiny.state_dict(), files["state_dict"])
        safetensors.torch.save_file(tiny.state_dict(), files["safetensors"])
        torch.save(tiny, files["pickled"])
        torch.save({"epoch": 3, "state_dict": tiny.state_dict()}, files["checkpoint"])
        torch.onnx.export(
            tiny,
            example,
            files["onnx"],
            input_names=["x"],
            output_names=["y"],
            dynamic_shapes=({0: batch},),
            verbose=False,
        )
    return files


@contextlib.asynccontextmanager
async def asgi_client(
    server: Server, client: tuple[str, int] = ("127.0.0.1", 123)
) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client calling `server`'s ASGI app in-process, with its lifespan running, as the
    client at address `client` (host, port).

    gRPC is off unless the server's settings name a port other than the default.
    """
    if server.settings.grpc_port == Settings().grpc_port:
        server.settings = msgspec.structs.replace(server.settings, grpc_port=0)
    server.load()
    app = server.app()
    async with app.starlette.router.lifespan_context(app.starlette):
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://modelbay.test") as client:
            yield client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclasses.dataclass
class Served:
    """A running `modelbay serve`: its URL, its process and what it printed (stdout and stderr)."""

    url: str
    process: subprocess.Popen[bytes]
    output: IO[bytes]

    def log(self) -> str:
        self.output.seek(0)
        return self.output.read().decode(errors="replace")


@contextlib.contextmanager
def serve_process(
    *args: str, timeout_s: float = 90.0, cwd: Path = ROOT, bin_dir: Path | None = None
) -> Iterator[Served]:
    """Run the real `modelbay serve ARGS` on a free loopback HTTP port (gRPC off unless ARGS set
    --grpc-port); yield it once ready. bin_dir: the environment whose `modelbay` runs (default:
    this interpreter's).

    Readiness is polled on /v2/health/ready (never read from a log line); the process is
    stopped by PID at the end. Raises RuntimeError with its output if it exits or never gets ready.
    """
    port = free_port()
    grpc = [] if "--grpc-port" in args else ["--grpc-port", "0"]
    modelbay = (bin_dir or Path(sys.executable).parent) / "modelbay"
    command = [str(modelbay), "serve", *args, "--port", str(port), *grpc]
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, cwd=cwd)
        served = Served(f"http://127.0.0.1:{port}", process, output)
        try:
            deadline = time.monotonic() + timeout_s
            while not _ready(served.url):
                if process.poll() is not None:
                    raise RuntimeError(f"modelbay serve exited with {process.returncode}:\n{served.log()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"modelbay serve not ready after {timeout_s} s:\n{served.log()}")
                time.sleep(0.1)
            yield served
        finally:
            stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    """End `process` by its PID: SIGTERM, then SIGKILL if it has not exited 15 s later."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def modelbay_serve(*args: str, timeout_s: float = 90.0, cwd: Path = ROOT) -> Iterator[str]:
    """`serve_process`, yielding only the server's URL."""
    with serve_process(*args, timeout_s=timeout_s, cwd=cwd) as served:
        yield served.url


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def sample(text: str, name: str, **labels: str) -> float:
    """The value of the sample `name{labels}` in a Prometheus text exposition (0 if absent); `labels`
    may be a subset of the sample's. Parsed by prometheus-client."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and labels.items() <= found.labels.items():
                return float(found.value)
    return 0.0
