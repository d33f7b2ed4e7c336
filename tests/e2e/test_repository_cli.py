"""`modelbay models / load / unload` and the Python Client against a real `modelbay serve`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

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
