"""LocalFallback against the real `modelbay serve` of a model repository with two ONNX versions of the
digits model: the server answers while it can; a local copy, fetched from the server, answers
when it is frozen (a missed deadline) or gone (unreachable); the copy follows the default version."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import numpy_helper
from sklearn.datasets import load_digits

from modelbay.client import Client
from modelbay.client.local import LocalFallback
from modelbay.errors import ModelNotFound
from tests.conftest import serve_process

pytestmark = pytest.mark.e2e
ONNX = Path(__file__).resolve().parents[2] / "examples" / "digits" / "artifacts" / "digits.onnx"


def repository(root: Path) -> Path:
    """models/digits/1: the trained digits CNN as ONNX; models/digits/2: the same with the bias of
    class 0 raised by 5 (its answers differ: it says 0 far more often)."""
    (root / "digits" / "1").mkdir(parents=True)
    (root / "digits" / "2").mkdir()
    shutil.copy(ONNX, root / "digits" / "1" / "digits.onnx")
    model = onnx.load(str(ONNX))
    last = [t for t in model.graph.initializer if list(t.dims) == [10]][-1]  # the final layer's bias
    bias = numpy_helper.to_array(last).copy()
    bias[0] += 5.0
    last.CopyFrom(numpy_helper.from_array(bias, last.name))
    onnx.save(model, str(root / "digits" / "2" / "digits.onnx"))
    (root / "digits" / "modelbay.yaml").write_text("offer_onnx: true\n")  # its owner lets it go
    return root


def local_logits(path: Path, images: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"image": images})[0])


def test_server_then_local_copy_and_the_copy_follows_the_default_version(tmp_path: Path) -> None:
    root = repository(tmp_path / "models")
    copy = tmp_path / "device" / "digits.onnx"
    images = (load_digits().images[:16] / 16.0).astype(np.float32)[:, None]
    with serve_process(str(root)) as served, LocalFallback(served.url, "digits", copy, deadline_s=2) as model:
        assert model.local_version == "2"  # fetched at start: the default is the highest version
        assert model.copy_problem is None
        assert copy.read_bytes() == (root / "digits" / "2" / "digits.onnx").read_bytes()
        answer = model.infer(images)
        assert (answer.source, answer.version, answer.reason) == ("server", "2", None)
        np.testing.assert_allclose(answer.outputs["logits"], local_logits(copy, images), atol=1e-5)

        with Client(served.url) as admin:
            admin.set_default_version("digits", "1")
        answer = model.infer(images)  # answered by version 1: the copy is fetched again
        assert (answer.source, answer.version) == ("server", "1")
        assert model.local_version == "1" and (copy.with_name("digits.onnx.version").read_text() == "1\n")
        assert copy.read_bytes() == ONNX.read_bytes()
        server_logits = answer.outputs["logits"]

        model.deadline_s = 0.5
        os.kill(served.process.pid, signal.SIGSTOP)  # a hung server: connections wait, no answer
        try:
            frozen = model.infer(images)
        finally:
            os.kill(served.process.pid, signal.SIGCONT)
        assert (frozen.source, frozen.version) == ("local", "1")
        assert frozen.reason is not None and frozen.reason.startswith("deadline of 0.5 s missed")
        np.testing.assert_allclose(frozen.outputs["logits"], server_logits, atol=1e-5)
    # the server is gone: a new client starts from the copy on disk, which knows its version
    with LocalFallback(served.url, "digits", copy, deadline_s=2.0) as model:
        gone = model.infer(images)
        assert (gone.source, gone.version) == ("local", "1")
        assert gone.reason is not None and gone.reason.startswith("unreachable: ConnectError")
        assert (gone.outputs["logits"].argmax(1) == load_digits().target[:16]).mean() > 0.9


def test_refusals_are_raised_and_without_a_copy_nothing_answers(tmp_path: Path) -> None:
    root = repository(tmp_path / "models")
    images = np.zeros((2, 1, 8, 8), np.float32)
    with (
        serve_process(str(root)) as served,
        LocalFallback(served.url, "nope", tmp_path / "nope.onnx") as model,
    ):
        assert model.local_version is None  # no such model: no copy, and the client says why
        assert model.copy_problem is not None and model.copy_problem.startswith("ModelNotFound: no model")
        with pytest.raises(ModelNotFound):  # a refusal of the request is the server's to make
            model.infer({"image": images})
        with pytest.raises(ModelNotFound):
            model.refresh()
    model = LocalFallback(served.url, "digits", tmp_path / "copy.onnx", deadline_s=1.0)
    assert model.copy_problem is not None and model.copy_problem.startswith("unreachable: ConnectError")
    with model, pytest.raises(httpx.ConnectError):  # no copy, no server: nothing can answer
        model.infer({"image": images})
