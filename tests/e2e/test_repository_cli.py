"""`modelbay models / load / unload / deploy / default` and the Python Client against a real
`modelbay serve`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from modelbay.cli.repository import folder_files, next_version
from modelbay.client import Client
from modelbay.errors import ModelNotFound
from tests.conftest import modelbay_serve

pytestmark = pytest.mark.e2e
MODELBAY = str(Path(sys.executable).parent / "modelbay")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MODELBAY, *args], capture_output=True, text=True, timeout=120)


def test_models_unload_load_from_the_command_line(tiny_files: dict[str, Path]) -> None:
    with modelbay_serve(str(tiny_files["exported"])) as url:
        listed = cli("models", "--url", url)
        assert listed.returncode == 0
        assert listed.stdout.split("\n")[:2] == ["NAME  VERSION  STATE  REASON", "tiny  1        READY"]
        assert cli("unload", "tiny", "--url", url).stdout.strip() == "model 'tiny' unloaded"
        rows = json.loads(cli("models", "--url", url, "--json").stdout)
        assert rows == [{"name": "tiny", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"}]
        assert json.loads(cli("models", "--url", url, "--json", "--ready").stdout) == []
        refused = cli("unload", "tiny", "--url", url)
        assert refused.returncode == 1 and "model 'tiny' is not loaded" in refused.stderr
        assert cli("load", "tiny", "--url", url).stdout.strip() == "model 'tiny' loaded"
        with Client(url) as client:
            assert [row["state"] for row in client.repository_index()] == ["READY"]
            row = np.array([[0.5, -1.0, 2.0, 0.25]], np.float32)
            assert client.infer("tiny", row)["output"].shape == (1, 3)
            with pytest.raises(ModelNotFound, match="no model named 'nope'"):
                client.load_model("nope")


def model_version(url: str, path: str) -> str:
    """The version that answered an OIP inference of the tiny ONNX model at `path`."""
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0.5, -1.0, 2.0, 0.25]}]}
    reply = httpx.post(url + path, json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    return str(reply.json()["model_version"])


def test_deploy_versions_and_choose_the_default(tiny_files: dict[str, Path], tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    repository.mkdir()
    folder = tmp_path / "tiny"
    (folder / "extra").mkdir(parents=True)
    (folder / "model.onnx").write_bytes(tiny_files["onnx"].read_bytes())
    (folder / "modelbay.yaml").write_text("weights: model.onnx\nbatching: {max_batch_size: 4}\n")
    (folder / "extra" / "notes.txt").write_text("deployed by the e2e test\n")
    with modelbay_serve("--model-repository", str(repository)) as url:
        first = cli("deploy", str(folder), "--url", url)
        assert first.returncode == 0, first.stderr
        lines = first.stdout.splitlines()
        assert lines[0].startswith("sending model 'tiny' version 1: 3 files, ")
        assert [line.split()[0] for line in lines[1:4]] == [
            "1/extra/notes.txt",
            "1/model.onnx",
            "1/modelbay.yaml",
        ]
        assert lines[4] == "model 'tiny' version 1 deployed and serving"
        assert (repository / "tiny" / "1" / "extra" / "notes.txt").is_file()
        assert model_version(url, "/v2/models/tiny/infer") == "1"

        second = cli("deploy", str(folder), "--url", url)
        assert second.returncode == 0, second.stderr
        assert second.stdout.splitlines()[-1] == "model 'tiny' version 2 deployed and serving"
        assert model_version(url, "/v2/models/tiny/infer") == "2"
        rows = json.loads(cli("models", "--url", url, "--json").stdout)
        assert [(r["name"], r["version"], r["state"]) for r in rows] == [
            ("tiny", "1", "READY"),
            ("tiny", "2", "READY"),
        ]

        pinned = cli("default", "tiny", "1", "--url", url)
        assert pinned.stdout.strip() == "model 'tiny': calls that name no version go to version 1"
        assert model_version(url, "/v2/models/tiny/infer") == "1"
        assert model_version(url, "/v2/models/tiny/versions/2/infer") == "2"
        highest = cli("default", "tiny", "--url", url)
        assert highest.stdout.strip() == "model 'tiny': calls that name no version go to version 2"
        assert model_version(url, "/v2/models/tiny/infer") == "2"

        again = cli("deploy", str(folder), "--url", url, "--version", "2", "--name", "tiny")
        assert again.returncode == 1
        assert "version 2 of 'tiny' exists; versions are immutable: deploy a new version" in again.stderr
        missing = cli("default", "tiny", "7", "--url", url)
        assert missing.returncode == 1 and "tiny" in missing.stderr

        (folder / "link.onnx").symlink_to(folder / "model.onnx")
        refused = cli("deploy", str(folder), "--url", url, "--name", "other")
        assert refused.returncode == 1 and "link.onnx is a symlink" in refused.stderr
        assert sorted(p.name for p in repository.iterdir()) == ["tiny"]
        assert sorted(p.name for p in (repository / "tiny").iterdir()) == ["1", "2"]


def test_deploy_sends_regular_files_only(tmp_path: Path) -> None:
    (tmp_path / "m" / "sub").mkdir(parents=True)
    (tmp_path / "m" / "model.onnx").write_bytes(b"x")
    (tmp_path / "m" / "sub" / "a.txt").write_bytes(b"a")
    assert folder_files(tmp_path / "m") == {"model.onnx": b"x", "sub/a.txt": b"a"}
    for bad, message in [
        ("sub/.env", "dot files and folders are not sent"),
        (".git/config", "dot files and folders are not sent"),
        ("sub/link", "is a symlink"),
        ("linked", "is a symlink"),
    ]:
        folder = tmp_path / bad.replace("/", "_")
        (folder / "sub").mkdir(parents=True)
        (folder / "model.onnx").write_bytes(b"x")
        target = folder / bad
        if "link" in bad:
            target.symlink_to(tmp_path / "m" / "sub", target_is_directory=True)
        else:
            target.parent.mkdir(exist_ok=True)
            target.write_text("")
        with pytest.raises(ValueError, match=message):
            folder_files(folder)
    with pytest.raises(ValueError, match="is not a folder"):
        folder_files(tmp_path / "m" / "model.onnx")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds no file to send"):
        folder_files(tmp_path / "empty")


def test_the_next_version() -> None:
    rows = [
        {"name": "m", "version": "2"},
        {"name": "m", "version": "10"},
        {"name": "other", "version": "30"},
        {"name": "m", "version": "beta"},
    ]
    assert next_version(rows, "m") == "11"
    assert next_version(rows, "new") == "1"
