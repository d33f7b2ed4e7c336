"""The MobileNetV2 example: torchvision's ImageNet weights as a state_dict plus architecture, real photos."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import MOBILENET, modelbay_serve

# Acceptable top-1 labels per photo (ImageNet has several cat and cup classes).
TOP1 = {"cat": {"Egyptian cat", "tabby", "tiger cat"}, "coffee": {"espresso", "cup"}, "china": {"palace"}}


@pytest.fixture(scope="module")
def mobilenet() -> Path:
    subprocess.run([sys.executable, str(MOBILENET / "prepare.py")], check=True, capture_output=True)
    return MOBILENET


def test_real_photos_get_the_right_label(mobilenet: Path) -> None:
    with modelbay_serve(str(mobilenet / "model")) as url:
        for photo, labels in TOP1.items():
            reply = httpx.post(
                f"{url}/predict/mobilenet", content=(mobilenet / "photos" / f"{photo}.jpg").read_bytes()
            )
            predictions = reply.json()["predictions"]
            assert len(predictions) == 5
            assert predictions[0]["label"] in labels, (photo, predictions)
        # The rocket on its launch pad is a hard photo for MobileNetV2: "space shuttle" is in its top 5,
        # behind "drilling platform" (also what the network says outside modelbay).
        rocket = httpx.post(
            f"{url}/predict/mobilenet", content=(mobilenet / "photos" / "rocket.jpg").read_bytes()
        )
        assert "space shuttle" in [p["label"] for p in rocket.json()["predictions"]]
        metadata = httpx.get(f"{url}/v2/models/mobilenet").json()
        assert metadata["platform"] == "pytorch_state_dict"
        assert metadata["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 1000]}]
