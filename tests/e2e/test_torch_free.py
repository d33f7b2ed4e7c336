"""The torch-free install: `modelbay[onnx]` in a fresh environment without torch serves an ONNX model
and a predict.py folder through the real `modelbay serve`, and Triton's clients get the answers
onnxruntime gives; a PyTorch format there stops `serve` with exit 2, naming the extra to install.

The environment is built by uv from this checkout (tests/envs.py); with uv's cache warm that takes
seconds, cold it downloads the base dependencies and onnxruntime from the package index.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from tests.conftest import DIGITS, free_port, serve_process
from tests.envs import fresh_environment

pytestmark = pytest.mark.e2e

ONNX = DIGITS / "artifacts" / "digits.onnx"
CHUNK = 32  # rows per request: the default max_batch_size

# Custom Python around the same network, numpy and onnxruntime only: raw 0..16 pixels in, the label
# and its softmax probability out.
HANDLER = """
import numpy as np
import onnxruntime
from modelbay import Predictor


class Digits(Predictor):
    def setup(self, model_dir):
        self.session = onnxruntime.InferenceSession(
            str(model_dir / "digits.onnx"), providers=["CPUExecutionProvider"]
        )

    def rows(self, item):
        return len(item)

    def predict(self, batch):
        outputs = []
        for pixels in batch:
            x = (np.asarray(pixels, dtype=np.float32) / 16.0)[:, None]
            (logits,) = self.session.run(None, {"image": x})
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            p = e / e.sum(axis=1, keepdims=True)
            outputs.append({"label": p.argmax(axis=1).astype(np.int64), "probability": p.max(axis=1)})
        return outputs
"""
MANIFEST = """
name: handler
inputs: [{name: pixels, datatype: UINT8, shape: [-1, 8, 8]}]
outputs: [{name: label, datatype: INT64, shape: [-1]}, {name: probability, datatype: FP32, shape: [-1]}]
"""

# Run in the fresh environment: every module `modelbay serve` of an ONNX model or a predict.py goes
# through (the CLI, server, both doors, the core, tasks, codecs, the client), imported one by one;
# none may need torch. Modules of other extras (runtime/tracing.py: opentelemetry) may be missing
# their own packages.
IMPORT_CHECK = """
import importlib, json, pkgutil, modelbay
names = ["modelbay.cli.main", "modelbay.server", "modelbay.loading", "modelbay.loading.onnx",
         "modelbay.loading.handler", "modelbay.runtime.model_worker"]
for package in ("http", "grpc", "runtime", "registry", "tasks", "codecs", "client", "auth"):
    folder = [f"{modelbay.__path__[0]}/{package}"]
    names += [f"modelbay.{package}"]
    names += [info.name for info in pkgutil.walk_packages(folder, f"modelbay.{package}.")]
names += [f"modelbay.{info.name}" for info in pkgutil.iter_modules(modelbay.__path__) if not info.ispkg]
failed, other_extras = {}, {}
for name in names:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:  # a module of another extra (tracing) may need its packages
        torch_package = (exc.name or "").partition(".")[0] in ("torch", "safetensors")
        (failed if torch_package else other_extras)[name] = repr(exc)
    except Exception as exc:
        failed[name] = repr(exc)
try:
    import torch
    torch_error = None
except ImportError as exc:
    torch_error = repr(exc)
print(json.dumps({"imported": len(names), "failed": failed, "torch_error": torch_error}))
"""


@pytest.fixture(scope="module")
def torch_free(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ folder of a fresh environment holding `modelbay[onnx]` from this checkout."""
    return fresh_environment(tmp_path_factory.mktemp("torch-free") / "venv", "onnx", timeout_s=300)


@pytest.fixture(scope="module")
def held_out() -> tuple[np.ndarray, np.ndarray]:
    """The held-out quarter of scikit-learn's digits (examples/digits/train.py's split): 0..16 pixels
    [450, 8, 8] float64 and their labels [450]."""
    digits = load_digits()
    _, images, _, labels = train_test_split(
        digits.images, digits.target, test_size=0.25, random_state=0, stratify=digits.target
    )
    return images, labels


@pytest.fixture(scope="module")
def served(torch_free: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """That environment's `modelbay serve digits.onnx handler/`: (HTTP host:port, gRPC host:port)."""
    folder = tmp_path_factory.mktemp("handler")
    (folder / "predict.py").write_text(HANDLER)
    (folder / "modelbay.yaml").write_text(MANIFEST)
    shutil.copy(ONNX, folder / "digits.onnx")
    grpc_port = free_port()
    args = (str(ONNX), str(folder), "--grpc-port", str(grpc_port))
    with serve_process(*args, bin_dir=torch_free) as server:
        yield server.url.removeprefix("http://"), f"127.0.0.1:{grpc_port}"


def test_the_environment_has_no_torch_and_the_serve_path_imports_without_it(torch_free: Path) -> None:
    done = subprocess.run(
        [str(torch_free / "python"), "-c", IMPORT_CHECK], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["torch_error"] == "ModuleNotFoundError(\"No module named 'torch'\")"
    assert report["failed"] == {}
    assert report["imported"] > 60


def test_an_onnx_model_answers_tritonclient_as_onnxruntime_does(
    served: tuple[str, str], held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = held_out
    x = (images / 16.0).astype(np.float32)[:, None]
    session = onnxruntime.InferenceSession(str(ONNX), providers=["CPUExecutionProvider"])
    (want,) = session.run(None, {"image": x})
    http_url, grpc_url = served
    http = httpclient.InferenceServerClient(http_url)
    grpc = grpcclient.InferenceServerClient(grpc_url)
    assert http.get_model_metadata("digits")["platform"] == "onnxruntime_onnx"
    for client, module in ((http, httpclient), (grpc, grpcclient)):
        got = []
        for start in range(0, len(x), CHUNK):
            rows = x[start : start + CHUNK]
            tensor = module.InferInput("image", list(rows.shape), "FP32")
            tensor.set_data_from_numpy(rows)
            got.append(client.infer("digits", [tensor]).as_numpy("logits"))
        logits = np.concatenate(got)
        np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)
        assert (logits.argmax(1) == labels).mean() >= 0.97


def test_a_predict_py_folder_serves_without_torch(
    served: tuple[str, str], held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    images, _ = held_out
    pixels = images[:CHUNK].astype(np.uint8)
    session = onnxruntime.InferenceSession(str(ONNX), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"image": (pixels / 16.0).astype(np.float32)[:, None]})
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    tensor = httpclient.InferInput("pixels", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    result = httpclient.InferenceServerClient(served[0]).infer("handler", [tensor])
    np.testing.assert_array_equal(result.as_numpy("label"), probabilities.argmax(1))
    np.testing.assert_allclose(result.as_numpy("probability"), probabilities.max(1), rtol=1e-5)


@pytest.mark.parametrize(
    ("model", "what"),
    [
        ([], "a torch.export program"),  # the bundled default, digits.pt2
        ([str(DIGITS / "artifacts" / "digits.torchscript.pt")], "a TorchScript file"),
        ([str(DIGITS / "artifacts" / "digits.safetensors"), "--arch", "m:Net"], "a safetensors file"),
    ],
    ids=["default-model", "torchscript", "safetensors"],
)
def test_a_torch_format_without_torch_exits_2_naming_the_extra(
    torch_free: Path, model: list[str], what: str
) -> None:
    done = subprocess.run(
        [str(torch_free / "modelbay"), "serve", *model, "--port", str(free_port()), "--grpc-port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert f"this model is {what}: install modelbay[torch]" in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_export_without_torch_exits_2_naming_the_extra(torch_free: Path) -> None:
    done = subprocess.run(
        [str(torch_free / "modelbay"), "export", str(ONNX), "--to", "pt2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        "modelbay: export: --to pt2 needs torch, not installed here: pip install 'modelbay[torch]'\n"
    )
