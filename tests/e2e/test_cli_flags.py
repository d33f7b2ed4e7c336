"""`modelbay serve` and `modelbay predict` flags, run as the real commands (issue 9 items 7, 13)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from modelbay.cli.main import default_url
from modelbay.errors import ModelLoadError
from tests.conftest import ROOT, SAMPLES, free_port, modelbay_serve

MODELBAY = str(Path(sys.executable).parent / "modelbay")
ROW = [0.5, -1.0, 2.0, 0.0]


def modelbay(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `modelbay ARGS` to its end; the environment is this one's plus `env`."""
    return subprocess.run(
        [MODELBAY, *args], capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
    )


@pytest.mark.parametrize("door", ["--grpc-port", "--port"])
def test_a_busy_port_is_one_line_and_exit_2_before_anything_listens(
    door: str, tiny_files: dict[str, Path]
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        ports = {"--port": str(free_port()), "--grpc-port": str(free_port()), door: str(busy)}
        result = modelbay(
            "serve", str(tiny_files["exported"]), *(arg for item in ports.items() for arg in item)
        )
    assert result.returncode == 2, result.stderr
    kind = "gRPC" if door == "--grpc-port" else "HTTP"
    assert result.stderr.startswith(f"modelbay: cannot serve: port {busy} on 127.0.0.1 is in use ({kind}; ")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "serving" not in result.stderr


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("x", "'x': expected NAME:DATATYPE:SHAPE, e.g. x:FP32:-1,4"),
        ("x:FP33:-1,4", "'x:FP33:-1,4': unknown datatype 'FP33'; expected one of BOOL, UINT8"),
        ("x:FP32:-1,four", "'x:FP32:-1,four': SHAPE must be sizes separated by commas"),
        ("x:FP32:-2", "'x:FP32:-2': SHAPE must be sizes separated by commas, each >= 0 or -1 (any size)"),
    ],
)
def test_a_bad_tensor_spec_is_a_usage_error(spec: str, message: str, tiny_files: dict[str, Path]) -> None:
    result = modelbay("serve", str(tiny_files["torchscript"]), "--input", spec, "--port", str(free_port()))
    assert result.returncode == 2
    assert f"argument --input: {message}" in result.stderr and "Traceback" not in result.stderr


def test_declared_inputs_and_outputs_are_served_and_checked(
    tiny_files: dict[str, Path], tiny: torch.nn.Module
) -> None:
    """A scripted TorchScript module says nothing of its inputs: --input / --output declare them."""
    args = ("--input", "x:FP32:-1,4", "--output", "scores:FP32:-1,3", "--timeout-s", "30")
    with modelbay_serve(str(tiny_files["torchscript"]), *args, "--preprocess-threads", "1") as url:
        metadata = httpx.get(f"{url}/v2/models/tiny").json()
        assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
        assert metadata["outputs"] == [{"name": "scores", "datatype": "FP32", "shape": [-1, 3]}]
        tensor = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": ROW}
        reply = httpx.post(f"{url}/v2/models/tiny/infer", json={"inputs": [tensor]})
        assert reply.status_code == 200, reply.text
        (output,) = reply.json()["outputs"]
        assert output["name"] == "scores"
        want = tiny(torch.tensor([ROW])).detach().numpy()
        np.testing.assert_allclose(np.reshape(output["data"], (1, 3)), want, rtol=1e-5)
        wrong = {"name": "x", "shape": [1, 5], "datatype": "FP32", "data": [*ROW, 1.0]}
        reply = httpx.post(f"{url}/v2/models/tiny/infer", json={"inputs": [wrong]})
        assert reply.status_code == 400 and "expected shape [-1, 4]" in reply.json()["error"]


def test_trusted_pickle_finds_its_class_beside_the_file_from_another_directory(tmp_path: Path) -> None:
    """Issue 9 item 13: --trust-pickle needed PYTHONPATH=<the model's folder>."""
    (tmp_path / "netdef.py").write_text(
        textwrap.dedent("""
        import torch


        class Doubler(torch.nn.Module):
            def forward(self, x):
                return helper(x)


        def helper(x):  # looked up when the model runs, not when it is unpickled
            return x * 2
        """)
    )
    save = "import torch, netdef; torch.save(netdef.Doubler(), 'doubler.pt')"
    subprocess.run([sys.executable, "-c", save], cwd=tmp_path, check=True)
    assert str(tmp_path) not in os.environ.get("PYTHONPATH", "")
    with modelbay_serve(str(tmp_path / "doubler.pt"), "--trust-pickle", cwd=ROOT) as url:
        reply = httpx.post(f"{url}/predict/doubler", json={"input": ROW})
        assert reply.status_code == 200, reply.text
        assert reply.json()["predictions"] == [2 * v for v in ROW]


def test_predict_finds_the_server_from_modelbay_port() -> None:
    """Issue 9 item 13: `modelbay predict` asked 127.0.0.1:8000 whatever MODELBAY_PORT said."""
    with modelbay_serve() as url:
        port = url.rsplit(":", 1)[1]
        result = modelbay(
            "predict",
            "digits",
            str(SAMPLES / "3.png"),
            env={"MODELBAY_PORT": port, "MODELBAY_HOST": "0.0.0.0"},
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{SAMPLES / '3.png'}: 3 (")


def test_the_default_url_follows_the_serve_variables() -> None:
    assert default_url({}) == "http://127.0.0.1:8000"
    assert default_url({"MODELBAY_PORT": "9000", "MODELBAY_HOST": "10.1.2.3"}) == "http://10.1.2.3:9000"
    assert default_url({"MODELBAY_HOST": "::", "MODELBAY_PORT": "9000"}) == "http://[::1]:9000"
    assert default_url({"MODELBAY_HOST": "0.0.0.0", "MODELBAY_WORKERS": "many"}) == "http://127.0.0.1:8000"
    with pytest.raises(ModelLoadError, match=r"at `\$\.port`"):
        default_url({"MODELBAY_PORT": "eighty"})
    result = modelbay("predict", "digits", str(SAMPLES / "3.png"), env={"MODELBAY_PORT": "eighty"})
    assert result.returncode == 2 and "Expected `int`, got `str` - at `$.port`" in result.stderr
