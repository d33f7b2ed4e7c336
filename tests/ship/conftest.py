"""Fixtures of the shipping tests: real models in the layouts `modelbay build` takes, and
modelbay's wheel built once from this source tree."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from modelbay.ship.wheel import build_wheel, source_tree
from tests.conftest import DIGITS, ROOT

BUILTIN = ROOT / "src" / "modelbay" / "builtin" / "digits"
# The digits CNN's settings, shared by its versions (the ONNX file says its own tensor names).
DIGITS_SETTINGS = """task: image-classification
labels: ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
top_k: 3
image: {mode: L, resize: 8, crop: 8}
"""
# A handler whose model is fitted in setup on scikit-learn's digits (real data, real weights).
SKLEARN_HANDLER = """
import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression


def load(model_dir):
    digits = load_digits()
    return LogisticRegression(max_iter=2000).fit(digits.data, digits.target)


def predict(model, inputs):
    return [int(model.predict(np.asarray(x, dtype=np.float64).reshape(1, 64))[0]) for x in inputs]
"""


@pytest.fixture(scope="session")
def modelbay_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """modelbay's wheel, built from this checkout (what `modelbay build` ships without --wheel)."""
    tree = source_tree()
    assert tree == ROOT
    return build_wheel(tree, tmp_path_factory.mktemp("wheel"))


@pytest.fixture
def onnx_repository(tmp_path: Path) -> Path:
    """A model repository with one ONNX-only model: the trained digits CNN, version 1, and its
    settings in the model's shared modelbay.yaml."""
    model = tmp_path / "repository" / "digits"
    (model / "1").mkdir(parents=True)
    shutil.copyfile(DIGITS / "artifacts" / "digits.onnx", model / "1" / "model.onnx")
    (model / "modelbay.yaml").write_text(DIGITS_SETTINGS)
    return model.parent


@pytest.fixture
def torch_folder(tmp_path: Path) -> Path:
    """The bundled digits model folder (its torch.export .pt2 and modelbay.yaml)."""
    return Path(shutil.copytree(BUILTIN, tmp_path / "digits"))


@pytest.fixture
def handler_folder(tmp_path: Path) -> Path:
    """A predict.py model folder that imports scikit-learn and names it in its requirements.txt."""
    folder = tmp_path / "sklearn-digits"
    folder.mkdir()
    (folder / "predict.py").write_text(SKLEARN_HANDLER)
    (folder / "requirements.txt").write_text("# the model's own packages\nscikit-learn>=1.4\n")
    return folder
