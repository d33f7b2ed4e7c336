"""The build context run as its image would run it, without a container engine: the Dockerfile's
ENTRYPOINT (a real `modelbay serve`) on the context's model repository, its HEALTHCHECK command
against it; and a package only a model's own environment holds, pinned at its version there."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from modelbay.cli.main import main
from modelbay.runtime.environments import ensure_environment
from modelbay.ship.images import MODELS_DIR
from tests.conftest import SAMPLES, free_port, serve_process

pytestmark = pytest.mark.e2e


def healthcheck(port: int) -> subprocess.CompletedProcess[str]:
    """The image's HEALTHCHECK command, run as the container would (MODELBAY_PORT from its env)."""
    command = [sys.executable, "-m", "modelbay.ship.healthcheck"]
    env = {**os.environ, "MODELBAY_PORT": str(port)}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=30)


def test_the_entrypoint_serves_the_contexts_models_and_the_healthcheck_sees_it_ready(
    onnx_repository: Path, modelbay_wheel: Path, tmp_path: Path
) -> None:
    out = tmp_path / "context"
    assert (
        main(
            [
                "build",
                str(onnx_repository),
                "-t",
                "digits:1",
                "--out",
                str(out),
                "--wheel",
                str(modelbay_wheel),
            ]
        )
        == 0
    )
    text = (out / "Dockerfile").read_text()
    (entry,) = re.findall(r"^ENTRYPOINT (.*)$", text, flags=re.MULTILINE)
    command = json.loads(entry)
    assert command[:2] == ["modelbay", "serve"]
    args = [str(out / "models") if arg == MODELS_DIR else arg for arg in command[2:]]
    with serve_process(*args) as served:
        port = int(served.url.rsplit(":", 1)[1])
        ready = healthcheck(port)
        assert ready.returncode == 0, ready.stderr
        assert ready.stdout.strip() == "/v2/health/ready: 200"
        with (SAMPLES / "7.png").open("rb") as image:
            reply = httpx.post(f"{served.url}/predict/digits", content=image.read(), timeout=30)
        assert reply.status_code == 200, reply.text
        assert reply.json()["predictions"][0]["label"] == "7"
        assert "digits (version 1) from the model repository" in served.log()
        assert "(none mode)" in served.log()  # the models baked in are the models served
    stopped = healthcheck(port)
    assert stopped.returncode == 1 and stopped.stderr.startswith("/v2/health/ready: ")
    assert healthcheck(free_port()).returncode == 1


def test_a_package_only_in_a_models_own_environment_is_pinned_at_its_version_there(
    tmp_path: Path, modelbay_wheel: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """unidecode is not in this environment: serving the model here once built its own environment
    (from the package index, as `modelbay serve` does), and the build pins the version it holds."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = tmp_path / "ascii"
    folder.mkdir()
    (folder / "predict.py").write_text(
        "from unidecode import unidecode\n\n\ndef load(model_dir):\n    return None\n\n\n"
        "def predict(model, inputs):\n    return [unidecode(text) for text in inputs]\n"
    )
    (folder / "requirements.txt").write_text("unidecode>=1.3\n")
    out = tmp_path / "context"
    assert (
        main(["build", str(folder), "-t", "ascii:1", "--out", str(out), "--wheel", str(modelbay_wheel)]) == 2
    )
    ensure_environment(folder / "requirements.txt")
    assert (
        main(["build", str(folder), "-t", "ascii:1", "--out", str(out), "--wheel", str(modelbay_wheel)]) == 0
    )
    environment = next((tmp_path / "cache" / "modelbay" / "envs").glob("*/modelbay-environment.json"))
    installed = json.loads(environment.read_text())["installed"]
    assert f"unidecode=={installed['unidecode']}" in (out / "constraints.txt").read_text().splitlines()
    assert "unidecode>=1.3  # from a model's requirements.txt" in (out / "requirements.txt").read_text()


def test_an_environment_prebuilt_as_in_the_image_is_the_one_serve_uses(
    handler_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Dockerfile's prebuild step, then the entrypoint: the model's own environment is built
    once, by the step, and `modelbay serve` finds it (nothing to resolve or create at start)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the image's cache folder, here
    command = [sys.executable, "-m", "modelbay.ship.prebuild", str(handler_folder / "requirements.txt")]
    built = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    envs = tmp_path / "cache" / "modelbay" / "envs"
    (environment,) = [path for path in envs.iterdir() if not path.name.startswith(".")]  # and its lock
    assert built.stdout.strip() == f"modelbay: the environment of {command[-1]}: {environment}/bin/python"
    with serve_process(str(handler_folder)) as served:
        reply = httpx.post(f"{served.url}/predict/sklearn-digits", json={"input": [0.0] * 64}, timeout=60)
        assert reply.status_code == 200, reply.text
        assert isinstance(reply.json()["predictions"], int)
        assert f"reused from cache ({environment})" in served.log()
    broken = handler_folder / "requirements.txt"
    broken.write_text("--index-url https://example.com/simple\n")
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "uses the option --index-url" in refused.stderr
