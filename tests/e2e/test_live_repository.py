"""`modelbay serve REPOSITORY --model-control-mode poll` as a user runs it: a version copied into
the repository is served without a restart, by every worker process."""

from __future__ import annotations

import contextlib
import os
import pty
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import modelbay_serve, serve_process

pytestmark = pytest.mark.e2e
ROW = [0.5, -1.0, 2.0, 0.25]
BODY = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}


def version_of(url: str) -> str:
    """The model version answering an unversioned call, on a new connection (so any worker may)."""
    reply = httpx.post(f"{url}/v2/models/tiny/infer", json=BODY, timeout=10)
    assert reply.status_code == 200, reply.text
    return str(reply.json()["model_version"])


def wait_for(check: object, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "the repository change was not acted on in time"
        time.sleep(0.1)


def repository(tmp_path: Path, tiny_files: dict[str, Path]) -> Path:
    models = tmp_path / "models"
    (models / "tiny" / "1").mkdir(parents=True)
    shutil.copy(tiny_files["exported"], models / "tiny" / "1" / "model.pt2")
    return models


def test_poll_mode_serves_a_copied_version_and_drops_a_removed_one(
    tmp_path: Path, tiny_files: dict[str, Path]
) -> None:
    models = repository(tmp_path, tiny_files)
    with modelbay_serve(str(models), "--model-control-mode", "poll", "--repository-poll-s", "0.2") as url:
        assert version_of(url) == "1"
        shutil.copytree(models / "tiny" / "1", models / "tiny" / "2")
        wait_for(lambda: version_of(url) == "2")
        shutil.rmtree(models / "tiny" / "1")
        wait_for(lambda: httpx.post(f"{url}/v2/models/tiny/versions/1/infer", json=BODY).status_code == 404)
        rows = httpx.post(f"{url}/v2/repository/index").json()
        assert [(row["version"], row["state"]) for row in rows] == [("1", "UNAVAILABLE"), ("2", "READY")]


def test_every_worker_process_follows_the_polled_repository(
    tmp_path: Path, tiny_files: dict[str, Path]
) -> None:
    models = repository(tmp_path, tiny_files)
    args = (str(models), "--workers", "2", "--model-control-mode", "poll", "--repository-poll-s", "0.2")
    with serve_process(*args) as served:
        refused = httpx.post(f"{served.url}/v2/repository/models/tiny/unload")
        assert refused.status_code == 503 and "--workers > 1" in refused.json()["error"]
        shutil.copytree(models / "tiny" / "1", models / "tiny" / "2")
        # Each worker polls on its own (one may still be starting): wait until 40 answers in a row,
        # on new connections that land on both workers, come from version 2.
        wait_for(lambda: {version_of(served.url) for _ in range(40)} == {"2"}, timeout_s=60)
        outputs = httpx.post(f"{served.url}/v2/models/tiny/infer", json=BODY).json()["outputs"][0]["data"]
        assert np.isfinite(outputs).all()


SLOW = """
import time


class Slow:
    def setup(self, model_dir):
        time.sleep(3)  # a large model's weights, say

    def predict(self, batch):
        return batch
"""


def test_load_on_a_terminal_shows_the_versions_loading(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "slow" / "1").mkdir(parents=True)
    (models / "slow" / "1" / "predict.py").write_text(SLOW)
    with modelbay_serve(str(models)) as url:
        shutil.copytree(models / "slow" / "1", models / "slow" / "2")
        main, terminal = pty.openpty()  # `modelbay load` as a person runs it, on a terminal
        command = [str(Path(sys.executable).parent / "modelbay"), "load", "slow", "--url", url]
        environ = {**os.environ, "TERM": "xterm"}
        process = subprocess.Popen(command, stdout=terminal, stderr=terminal, env=environ)
        os.close(terminal)
        shown = b""
        with contextlib.suppress(OSError):  # EIO once the command has exited
            while chunk := os.read(main, 4096):
                shown += chunk
        os.close(main)
        assert process.wait(timeout=30) == 0
    text = shown.decode(errors="replace")
    assert "model 'slow': version 1 READY, version 2 LOADING" in text, text
    assert "model 'slow' loaded" in text
