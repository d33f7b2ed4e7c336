"""Fixtures of the dashboard's tests: a model repository of real models, and one broken."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import DIGITS, ROOT

BUILTIN_DIGITS = ROOT / "src" / "modelbay" / "builtin" / "digits"


def make_repository(root: Path) -> Path:
    """A model repository: `digits` (the built-in image classifier, version 1), `digits-onnx` (the
    same network exported to ONNX, served as tensors) and `broken` (an ONNX file that is not one:
    its load fails)."""
    models = root / "models"
    shutil.copytree(BUILTIN_DIGITS, models / "digits" / "1")
    (models / "digits-onnx" / "1").mkdir(parents=True)
    shutil.copy(DIGITS / "artifacts" / "digits.onnx", models / "digits-onnx" / "1" / "model.onnx")
    (models / "broken" / "1").mkdir(parents=True)
    (models / "broken" / "1" / "model.onnx").write_bytes(b"\x08\x07these are not ONNX weights")
    return models


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    return make_repository(tmp_path)
