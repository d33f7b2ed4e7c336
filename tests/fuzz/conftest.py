"""One real `modelbay serve` for the fuzz suite: the digits classifier, the tiny MLP, a model that
raises, and a model slower than its timeout_s, on free loopback ports (HTTP and gRPC).

The server runs with small limits so that every limit can be reached cheaply: a 1 MiB body,
max_queue_size 8 for the MLP, read_timeout_s 2, timeout_s 1 for the slow model.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import pytest
import torch
import yaml

from modelbay.server import DEFAULT_MODEL
from tests.conftest import free_port, serve_process

ROW = [0.5, -1.0, 2.0, 0.0]
MAX_BODY_BYTES = 1024 * 1024
READ_TIMEOUT_S = 2.0
MAX_QUEUE_SIZE = 8
SLOW_TIMEOUT_S = 1.0
# The failing model's exception text: no response may contain it (a 500 gives an error id instead).
SECRET = "/srv/secret/creds/api_keys.txt"

FAILING_HANDLER = f'''
class Failing:
    """Every batch fails, with a message that must stay in the server's log."""

    def predict(self, batch):
        raise FileNotFoundError("[Errno 2] No such file or directory: {SECRET!r}")
'''
SLOW_HANDLER = """
import time


class Slow:
    \"\"\"Answers each batch after 3 s, past the model's timeout_s.\"\"\"

    def predict(self, batch):
        time.sleep(3)
        return batch
"""
TENSOR_MANIFEST = "inputs: [{name: x, datatype: FP32, shape: [-1, 4]}]\n"


@dataclass
class FuzzServer:
    """A running `modelbay serve`: its URLs, its process, and the tiny MLP's answer for ROW."""

    url: str
    grpc_target: str
    process: subprocess.Popen[bytes]
    expected_row: np.ndarray
    output: IO[bytes]

    def alive(self) -> bool:
        return self.process.poll() is None

    def peak_rss_bytes(self) -> int:
        """The server's peak resident memory so far (VmHWM of /proc/PID/status), in bytes."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM in /proc/PID/status")

    def log(self) -> str:
        """Everything the server printed so far (stdout and stderr)."""
        self.output.seek(0)
        return self.output.read().decode(errors="replace")


def write_models(folder: Path, tiny_pt2: Path) -> Path:
    """The models and the --config YAML of the fuzz server, written under `folder`; the YAML's path."""
    for name, handler in (("failing", FAILING_HANDLER), ("slow", SLOW_HANDLER)):
        (folder / name).mkdir()
        (folder / name / "predict.py").write_text(handler)
        (folder / name / "modelbay.yaml").write_text(TENSOR_MANIFEST)
    config = {
        "max_body_bytes": MAX_BODY_BYTES,
        "read_timeout_s": READ_TIMEOUT_S,
        "graceful_timeout_s": 2.0,
        "models": [
            {"path": str(DEFAULT_MODEL)},
            {"path": str(tiny_pt2), "name": "tiny", "batching": {"max_queue_size": MAX_QUEUE_SIZE}},
            {"path": str(folder / "failing"), "name": "failing"},
            {"path": str(folder / "slow"), "name": "slow", "timeout_s": SLOW_TIMEOUT_S},
        ],
    }
    path = folder / "modelbay-fuzz.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.contextmanager
def serving(config: Path, expected_row: np.ndarray, timeout_s: float = 90.0) -> Iterator[FuzzServer]:
    """`modelbay serve --config CONFIG` on free loopback ports until the block ends (tests.conftest
    serve_process: readiness polled, stopped by PID)."""
    grpc_port = free_port()
    with serve_process("--config", str(config), "--grpc-port", str(grpc_port), timeout_s=timeout_s) as served:
        yield FuzzServer(served.url, f"127.0.0.1:{grpc_port}", served.process, expected_row, served.output)


@pytest.fixture(scope="session")
def fuzz_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_files: dict[str, Path], tiny: torch.nn.Module
) -> Iterator[FuzzServer]:
    """The one server both fuzz modules attack (the corpus, then schemathesis, or either alone)."""
    config = write_models(tmp_path_factory.mktemp("fuzz-models"), tiny_files["exported"])
    expected = tiny(torch.tensor([ROW])).detach().numpy()
    with serving(config, expected) as server:
        yield server
