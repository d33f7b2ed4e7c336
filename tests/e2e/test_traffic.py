"""`modelbay traffic` and Client.set_traffic / traffic against a real `modelbay serve` of a model
repository with two versions; every answer names its version (x-model-version)."""

from __future__ import annotations

import collections
import json
import shutil
from pathlib import Path

import httpx
import pytest

from modelbay.client import Client
from modelbay.errors import InvalidInput, ModelbayError
from tests.conftest import modelbay_serve
from tests.e2e.test_repository_cli import cli

pytestmark = pytest.mark.e2e
BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0.5, -1.0, 2.0, 0.25]}]}


def versions_answering(url: str, count: int, **headers: str) -> collections.Counter[str]:
    seen: collections.Counter[str] = collections.Counter()
    with httpx.Client(base_url=url, timeout=30) as http:
        for _ in range(count):
            reply = http.post("/v2/models/tiny/infer", json=BODY, headers=headers)
            assert reply.status_code == 200, reply.text
            assert reply.headers["x-model-version"] == reply.json()["model_version"]
            seen[reply.headers["x-model-version"]] += 1
    return seen


def test_the_traffic_command_and_the_client(tiny_files: dict[str, Path], tmp_path: Path) -> None:
    for version in ("1", "2"):
        (tmp_path / "tiny" / version).mkdir(parents=True)
        shutil.copy(tiny_files["onnx"], tmp_path / "tiny" / version / "model.onnx")
    with modelbay_serve(str(tmp_path)) as url:
        shown = cli("traffic", "tiny", "--url", url)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.splitlines() == [
            "model 'tiny': no traffic policy",
            "serving now: the default version",
        ]

        args = ["--split", "1=90,2=10", "--sticky-header", "X-User-Id", "--shadow", "2:50", "--url", url]
        set_ = cli("traffic", "tiny", *args)
        assert set_.returncode == 0, set_.stderr
        assert set_.stdout.splitlines() == [
            "model 'tiny': split 1=90, 2=10; sticky by X-User-Id; shadow to version 2 at 50%",
            "serving now: split 1=90, 2=10 (percent); shadow to version 2",
        ]
        assert set(versions_answering(url, 60)) == {"1", "2"}
        assert len(versions_answering(url, 10, **{"x-user-id": "ana"})) == 1

        refused = cli("traffic", "tiny", "--split", "1=50,7=50", "--url", url)
        assert refused.returncode == 1 and "version(s) ['7'] of model 'tiny'" in refused.stderr
        bad = cli("traffic", "tiny", "--split", "1=ninety", "--url", url)
        assert bad.returncode == 2 and "expected VERSION=WEIGHT" in bad.stderr
        both = cli("traffic", "tiny", "--clear", "--shadow", "2", "--url", url)
        assert both.returncode == 1 and "--clear removes the policy; give it alone" in both.stderr

        with Client(url) as client:
            state = client.set_traffic("tiny", {"split": {"2": 1}})
            assert state["serving"] == {"split": {"2": 100.0}, "shadow": None}
            assert client.traffic("tiny")["traffic"] == {"split": {"2": 1.0}, "sticky": None, "shadow": None}
            assert versions_answering(url, 10) == {"2": 10}
            with pytest.raises(InvalidInput, match=r"shadow\.percent must be in"):
                client.set_traffic("tiny", {"shadow": {"version": "1", "percent": 200}})
        with Client(url.replace("http://", "grpc://")) as grpc_client, pytest.raises(ModelbayError):
            grpc_client.traffic("tiny")

        cleared = cli("traffic", "tiny", "--clear", "--json", "--url", url)
        assert json.loads(cleared.stdout) == {
            "name": "tiny",
            "traffic": None,
            "serving": {"split": None, "shadow": None},
        }
        assert versions_answering(url, 5) == {"2": 5}  # the highest, the default
