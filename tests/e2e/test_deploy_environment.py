"""A model with its own Python packages, deployed by upload to a running server (issue 10's "done
when"): `modelbay deploy` sends predict.py + requirements.txt naming a package the server does not
have; the server builds the model's environment with uv, runs the model in a worker process of
that environment, and it answers. Needs the package index (PyPI), as installing modelbay does."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import serve_process

pytestmark = pytest.mark.e2e
MODELBAY = str(Path(sys.executable).parent / "modelbay")
PREDICT = """
from unidecode import unidecode  # only in the model's own environment


def load(model_dir):
    return None


def predict(model, inputs):
    return [{"ascii": unidecode(text), "python": __import__("sys").prefix} for text in inputs]
"""


def test_a_model_with_its_own_requirements_is_deployed_and_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert importlib.util.find_spec("unidecode") is None, "the server's environment must lack unidecode"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # a fresh environment cache
    folder = tmp_path / "ascii"
    folder.mkdir()
    (folder / "predict.py").write_text(PREDICT)
    (folder / "requirements.txt").write_text("unidecode==1.4.0\n")
    repository = tmp_path / "models"
    repository.mkdir()
    with serve_process("--model-repository", str(repository)) as served:
        command = [MODELBAY, "deploy", str(folder), "--url", served.url]
        deployed = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert deployed.returncode == 0, deployed.stderr + served.log()
        reply = httpx.post(f"{served.url}/predict/ascii", json={"input": "Crème brûlée à Zürich"}, timeout=30)
        assert reply.status_code == 200, reply.text
        prediction = reply.json()["predictions"]
        assert prediction["ascii"] == "Creme brulee a Zurich"
        environments = tmp_path / "cache" / "modelbay" / "envs"
        assert Path(prediction["python"]).parent == environments  # the model ran in its own environment
        rows = httpx.post(f"{served.url}/v2/repository/index").json()
        assert rows == [{"name": "ascii", "version": "1", "state": "READY", "reason": ""}]
        assert "unidecode" not in sys.modules
