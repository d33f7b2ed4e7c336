"""The real `modelbay export` command, then the real `modelbay serve` of what it chose, called by the
real client: the exported ONNX answers as the original PyTorch model on the digits scans."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.datasets import load_digits

from modelbay.client import Client
from modelbay.loading import load_model
from tests.conftest import SAMPLES, serve_process

pytestmark = pytest.mark.e2e
MODELBAY = str(Path(sys.executable).parent / "modelbay")
BUILTIN = Path(__file__).resolve().parents[2] / "src" / "modelbay" / "builtin" / "digits"


def test_export_pick_then_serve_answers_as_the_original(tmp_path: Path) -> None:
    folder = Path(shutil.copytree(BUILTIN, tmp_path / "digits"))
    done = subprocess.run(
        [
            MODELBAY,
            "export",
            str(folder),
            "--to",
            "onnx",
            "--pick",
            "--backends",
            "export",
            "--pick-seconds",
            ".1",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert "logits" in done.stdout and "onnxruntime" in done.stdout and "<- chosen" in done.stdout
    assert "onnxruntime is the fastest that passes; recorded in" in done.stderr
    assert yaml.safe_load((folder / "modelbay.yaml").read_text())["weights"] == "digits.onnx"

    images = (load_digits().images / 16.0).astype(np.float32)[:, None][:64]
    original = load_model({"path": str(BUILTIN)}).predictor.runner([images])[0]  # type: ignore[attr-defined]
    with serve_process(str(folder)) as served, Client(served.url) as client:
        assert client.metadata("digits")["platform"] == "onnxruntime_onnx"
        for digit in range(10):  # the simple door: a PNG in, the labels out
            predictions = client.predict("digits", SAMPLES / f"{digit}.png")
            assert predictions[0]["label"] == str(digit)
        answered = client.infer("digits", images)["logits"]  # OIP, the raw logits of 64 real scans
    np.testing.assert_allclose(answered, original, atol=1e-4, rtol=1e-3)
    assert (answered.argmax(1) == load_digits().target[:64]).mean() > 0.95
