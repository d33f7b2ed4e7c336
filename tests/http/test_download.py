"""GET /v2/models/{model}[/versions/{version}]/onnx in-process: a version's ONNX file (its own, or
the export `modelbay export` wrote beside its PyTorch file), 404 saying why otherwise, and the
access check of inference on that model with API keys."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from modelbay.auth.keys import create_key
from modelbay.server import Server
from modelbay.settings import ModelConfig, Settings
from tests.conftest import asgi_client, tiny_module

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]
ONNX = ROOT / "examples" / "digits" / "artifacts" / "digits.onnx"
BUILTIN = ROOT / "src" / "modelbay" / "builtin" / "digits"


def digits_server(tmp_path: Path, **settings: Any) -> Server:
    """ "d-onnx" (an ONNX file), "digits" (the bundled .pt2 folder, no export yet), both offering
    their ONNX file, "secret" (an ONNX file not offered) and "tiny" (in memory)."""
    folder = shutil.copytree(BUILTIN, tmp_path / "digits")
    onnx = shutil.copy(ONNX, tmp_path / "d-onnx.onnx")
    secret = shutil.copy(ONNX, tmp_path / "secret.onnx")
    models = [
        ModelConfig(path=str(onnx), name="d-onnx", offer_onnx=True),
        ModelConfig(path=str(folder), offer_onnx=True),
        ModelConfig(path=str(secret), name="secret"),  # offer_onnx off: the default
    ]
    server = Server(Settings(grpc_port=0, models=models, **settings))
    server.add_model("tiny", tiny_module(), example=torch.zeros(1, 4))
    return server


async def test_a_version_offers_its_onnx_file_or_its_export(tmp_path: Path) -> None:
    async with asgi_client(digits_server(tmp_path)) as http:
        for path in ("/v2/models/d-onnx/onnx", "/v2/models/d-onnx/versions/1/onnx"):
            reply = await http.get(path)
            assert reply.status_code == 200 and reply.content == ONNX.read_bytes()
            assert reply.headers["x-model-version"] == "1"
            assert reply.headers["content-type"] == "application/octet-stream"
        head = await http.head("/v2/models/d-onnx/onnx")
        assert head.status_code == 200 and head.content == b"" and head.headers["x-model-version"] == "1"
        assert (await http.get("/v2/models/d-onnx/versions/9/onnx")).status_code == 404
        missing = await http.get("/v2/models/digits/onnx")  # serves digits.pt2, not exported yet
        assert missing.status_code == 404
        assert "serves digits.pt2, not ONNX" in missing.json()["error"]
        assert "modelbay export" in missing.json()["error"]
        exported = shutil.copy(ONNX, tmp_path / "digits" / "digits.onnx")  # as `modelbay export` names it
        reply = await http.get("/v2/models/digits/onnx")
        assert reply.status_code == 200 and reply.content == ONNX.read_bytes()
        later = Path(exported).stat().st_mtime + 10
        os.utime(tmp_path / "digits" / "digits.pt2", (later, later))  # weights newer: the export is stale
        assert (await http.get("/v2/models/digits/onnx")).status_code == 404
        kept = await http.get("/v2/models/secret/onnx")
        assert kept.status_code == 404 and "does not offer its ONNX file" in kept.json()["error"]
        assert "offer_onnx: true" in kept.json()["error"]


async def test_the_download_needs_a_key_that_may_infer_the_model(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    keys = {
        "onnx": create_key(path, "onnx", ["infer"], ["d-onnx"])[0],
        "other": create_key(path, "other", ["infer"], ["digits"])[0],
        "ops": create_key(path, "ops", ["admin"])[0],
    }
    async with asgi_client(digits_server(tmp_path, auth=str(path))) as http:
        url = "/v2/models/d-onnx/versions/1/onnx"
        assert (await http.get(url)).status_code == 401
        assert (await http.get(url, headers={"x-api-key": keys["other"]})).status_code == 403
        for name in ("onnx", "ops"):
            reply = await http.get(url, headers={"authorization": f"Bearer {keys[name]}"})
            assert reply.status_code == 200 and reply.content == ONNX.read_bytes()
