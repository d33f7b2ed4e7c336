"""The real `modelbay serve` on a loopback port, driven by a real HTTP client."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from modelbay.server import Server
from modelbay.settings import Settings
from tests.conftest import SAMPLES, free_port, modelbay_serve

MODELBAY = str(Path(sys.executable).parent / "modelbay")
ROW = [0.5, -1.0, 2.0, 0.0]


def expected(tiny: torch.nn.Module, rows: list[list[float]]) -> np.ndarray:
    return tiny(torch.tensor(rows)).detach().numpy()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `modelbay serve ARGS` expecting it to refuse to start."""
    return subprocess.run(
        [MODELBAY, "serve", *args, "--port", str(free_port()), "--grpc-port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_no_argument_serves_the_digits_classifier() -> None:
    with modelbay_serve() as url:
        for digit in range(10):
            reply = httpx.post(f"{url}/predict/digits", content=(SAMPLES / f"{digit}.png").read_bytes())
            assert reply.status_code == 200
            assert reply.json()["predictions"][0]["label"] == str(digit)


def test_several_models_in_one_command(
    tiny_files: dict[str, Path], tiny: torch.nn.Module, tmp_path: Path
) -> None:
    shutil.copy(tiny_files["exported"], tmp_path / "mlp.pt2")
    shutil.copy(tiny_files["onnx"], tmp_path / "mlp-onnx.onnx")
    with modelbay_serve(str(tmp_path / "mlp.pt2"), str(tmp_path / "mlp-onnx.onnx")) as url:
        for name, input_name in (("mlp", "input"), ("mlp-onnx", "x")):
            request = {
                "inputs": [
                    {"name": input_name, "shape": [2, 4], "datatype": "FP32", "data": [ROW, ROW[::-1]]}
                ]
            }
            reply = httpx.post(f"{url}/v2/models/{name}/infer", json=request)
            assert reply.status_code == 200, reply.text
            (output,) = reply.json()["outputs"]
            assert output["shape"] == [2, 3]
            np.testing.assert_allclose(
                np.reshape(output["data"], (2, 3)), expected(tiny, [ROW, ROW[::-1]]), rtol=1e-5
            )


def test_a_model_repository_with_versions(tiny_files: dict[str, Path], tmp_path: Path) -> None:
    repository = tmp_path / "models"
    for version, kind in (("1", "exported"), ("2", "onnx")):
        (repository / "mlp" / version).mkdir(parents=True)
        shutil.copy(tiny_files[kind], repository / "mlp" / version / tiny_files[kind].name)
    (repository / "mlp" / "modelbay.yaml").write_text("batching: {max_batch_size: 4}\n")
    digits_folder = repository / "digits"
    shutil.copytree(
        Path(__file__).resolve().parents[2] / "src" / "modelbay" / "builtin" / "digits", digits_folder
    )
    with modelbay_serve(str(repository)) as url:
        metadata = httpx.get(f"{url}/v2/models/mlp").json()
        assert (
            metadata["versions"] == ["1", "2"] and metadata["platform"] == "onnxruntime_onnx"
        )  # highest version
        assert httpx.get(f"{url}/v2/models/mlp/versions/1").json()["platform"] == "pytorch_exported"
        request = {"inputs": [{"name": "input", "shape": [5, 4], "datatype": "FP32", "data": [ROW] * 5}]}
        reply = httpx.post(f"{url}/v2/models/mlp/versions/1/infer", json=request)
        assert reply.status_code == 400 and "takes 1 to 4 (max_batch_size)" in reply.json()["error"]
        reply = httpx.post(f"{url}/predict/digits", content=(SAMPLES / "2.png").read_bytes())
        assert reply.json()["predictions"][0]["label"] == "2"


def test_state_dict_with_arch_flags(tiny_files: dict[str, Path], tiny: torch.nn.Module) -> None:
    args = (
        str(tiny_files["state_dict"]),
        "--arch",
        "tiny_arch:Tiny",
        "--arch-kwargs",
        '{"hidden": 8}',
        "--name",
        "mlp",
        "--max-batch-size",
        "8",
        "--max-queue-delay-ms",
        "2",
    )
    with modelbay_serve(*args) as url:
        reply = httpx.post(f"{url}/predict/mlp", json={"inputs": [ROW, ROW]})
        assert reply.status_code == 200
        np.testing.assert_allclose(reply.json()["predictions"], expected(tiny, [ROW, ROW]), rtol=1e-5)


@pytest.mark.parametrize(
    ("kind", "extra", "message"),
    [
        (
            "state_dict",
            (),
            "tiny.pth holds a state_dict of 4 tensors (0.weight, 0.bias, 2.weight, ...), not a model",
        ),
        ("pickled", (), "holds a pickled torch.nn.modules.container.Sequential, not plain weights"),
        (
            "safetensors",
            ("--arch", "tiny_arch:Tiny", "--arch-kwargs", '{"hidden": 3}'),
            "does not fit tiny_arch:Tiny",
        ),
        ("exported", ("--format", "zip"), "unknown format 'zip'"),
    ],
)
def test_a_model_that_cannot_load_stops_before_listening(
    tiny_files: dict[str, Path], kind: str, extra: tuple[str, ...], message: str
) -> None:
    result = run_cli(str(tiny_files[kind]), *extra)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Uvicorn running" not in result.stderr


def test_same_name_twice_is_refused(tiny_files: dict[str, Path]) -> None:
    result = run_cli(str(tiny_files["exported"]), str(tiny_files["onnx"]))
    assert result.returncode == 2 and "model 'tiny' version '1' is already served" in result.stderr


def test_trusted_pickle_is_served(tiny_files: dict[str, Path], tiny: torch.nn.Module) -> None:
    with modelbay_serve(str(tiny_files["pickled"]), "--trust-pickle") as url:
        reply = httpx.post(f"{url}/predict/tiny", json={"input": ROW})
        np.testing.assert_allclose(reply.json()["predictions"], expected(tiny, [ROW])[0], rtol=1e-5)


def test_python_api_serve_blocks_until_interrupted(tmp_path: Path) -> None:
    port = free_port()
    script = tmp_path / "app.py"
    script.write_text(
        textwrap.dedent(f"""
        import torch
        import modelbay

        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        modelbay.serve(model, name="digits", example=torch.zeros(1, 1, 8, 8), port={port}, grpc_port=0)
    """)
    )
    process = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/v2/health/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        metadata = httpx.get(f"{url}/v2/models/digits").json()
        assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
        assert metadata["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}]
        reply = httpx.post(f"{url}/predict/digits", json={"input": np.zeros((1, 8, 8)).tolist()})
        assert reply.status_code == 200 and len(reply.json()["predictions"]) == 10
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr


def test_server_start_and_stop_on_a_free_port(tiny: torch.nn.Module) -> None:
    server = Server(Settings(port=0, grpc_port=0))
    server.add_model("mlp", tiny, example=torch.zeros(1, 4))
    server.start()
    url = server.url
    try:
        reply = httpx.post(f"{url}/predict/mlp", json={"input": ROW})
        np.testing.assert_allclose(reply.json()["predictions"], expected(tiny, [ROW])[0], rtol=1e-5)
    finally:
        server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/v2/health/live")
    with pytest.raises(RuntimeError, match="server is not listening"):
        _ = server.port
