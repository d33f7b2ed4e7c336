"""Every artifact format: detected from content, loaded, and answering like the original module."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from modelbay.errors import InvalidInput, ModelLoadError
from modelbay.loading import load_model
from modelbay.loading.detect import Format, detect
from modelbay.server import Server
from modelbay.settings import Settings
from tests.conftest import TINY_ARCH, asgi_client

EXPECTED_FORMAT = {
    "torchscript": Format.TORCHSCRIPT,
    "exported": Format.EXPORTED,
    "state_dict": Format.CHECKPOINT,
    "safetensors": Format.SAFETENSORS,
    "pickled": Format.CHECKPOINT,
    "checkpoint": Format.CHECKPOINT,
    "onnx": Format.ONNX,
}
PLATFORM = {
    "torchscript": "pytorch_torchscript",
    "exported": "pytorch_exported",
    "state_dict": "pytorch_state_dict",
    "safetensors": "pytorch_state_dict",
    "pickled": "pytorch_pickle",
    "checkpoint": "pytorch_state_dict",
    "onnx": "onnxruntime_onnx",
}
OPTIONS = {
    "state_dict": {"arch": "tiny_arch:Tiny", "arch_kwargs": {"hidden": 8}},
    "safetensors": {"arch": "tiny_arch:Tiny"},
    "checkpoint": {"arch": "tiny_arch:Tiny"},
    "pickled": {"trust_pickle": True},
}


@pytest.mark.parametrize("kind", list(EXPECTED_FORMAT))
def test_detect_tells_format_from_content_not_suffix(
    kind: str, tiny_files: dict[str, Path], tmp_path: Path
) -> None:
    renamed = tmp_path / "model.bin"
    shutil.copy(tiny_files[kind], renamed)
    if kind != "onnx":  # ONNX has no magic number beyond its first protobuf tag; checked on the copy too
        assert detect(renamed) is EXPECTED_FORMAT[kind]
    assert detect(tiny_files[kind]) is EXPECTED_FORMAT[kind]


@pytest.mark.parametrize("kind", list(EXPECTED_FORMAT))
def test_each_format_round_trips(kind: str, tiny_files: dict[str, Path], tiny: torch.nn.Module) -> None:
    loaded = load_model({"path": str(tiny_files[kind]), **OPTIONS.get(kind, {})})
    predictor = loaded.predictor
    predictor.setup(loaded.model_dir)
    assert predictor.platform == PLATFORM[kind]
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    (y,) = predictor.predict([[x]])[0]
    np.testing.assert_allclose(y, tiny(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)
    assert y.shape == (5, 3)


def test_exported_program_gives_true_metadata(tiny_files: dict[str, Path]) -> None:
    loaded = load_model({"path": str(tiny_files["exported"])})
    loaded.predictor.setup(None)
    assert [s.metadata() for s in loaded.predictor.inputs] == [
        {"name": "input", "datatype": "FP32", "shape": [-1, 4]}
    ]
    assert [s.metadata() for s in loaded.predictor.outputs] == [
        {"name": "output", "datatype": "FP32", "shape": [-1, 3]}
    ]
    assert loaded.config.name == "tiny"


def test_onnx_names_come_from_the_graph(tiny_files: dict[str, Path]) -> None:
    loaded = load_model({"path": str(tiny_files["onnx"])})
    loaded.predictor.setup(None)
    assert [s.name for s in loaded.predictor.inputs] == ["x"]
    assert [s.metadata() for s in loaded.predictor.outputs] == [
        {"name": "y", "datatype": "FP32", "shape": [-1, 3]}
    ]


def test_onnx_threads_follow_omp_num_threads(
    tiny_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ray replica with num_cpus=1 gets OMP_NUM_THREADS=1 from Ray: one thread per operator,
    not one per physical core; unset (or not a count), onnxruntime's default (0: its own choice)."""
    from modelbay.loading.onnx import OnnxRunner

    for value, threads in (("1", 1), ("3", 3), ("", 0), ("auto", 0)):
        monkeypatch.setenv("OMP_NUM_THREADS", value)
        runner = OnnxRunner(tiny_files["onnx"])
        assert runner.session.get_session_options().intra_op_num_threads == threads
        x = np.ones((2, 4), np.float32)
        assert runner([x])[0].shape == (2, 3)


def test_state_dict_without_arch_says_what_it_holds(tiny_files: dict[str, Path]) -> None:
    with pytest.raises(ModelLoadError) as err:
        load_model({"path": str(tiny_files["state_dict"])})
    assert err.value.message == (
        "tiny.pth holds a state_dict of 4 tensors (0.weight, 0.bias, 2.weight, ...), not a model: "
        "pass --arch module:Class (and --arch-kwargs JSON) or set arch: in modelbay.yaml"
    )


def test_state_dict_that_does_not_fit_the_arch_is_refused(tiny_files: dict[str, Path]) -> None:
    with pytest.raises(ModelLoadError, match="does not fit tiny_arch:Tiny"):
        load_model(
            {"path": str(tiny_files["safetensors"]), "arch": "tiny_arch:Tiny", "arch_kwargs": {"hidden": 16}}
        )


def test_unknown_arch_is_a_clear_error(tiny_files: dict[str, Path]) -> None:
    with pytest.raises(ModelLoadError, match="cannot import no_such_module"):
        load_model({"path": str(tiny_files["state_dict"]), "arch": "no_such_module:Net"})


def test_pickled_module_is_refused_unless_trusted(tiny_files: dict[str, Path]) -> None:
    with pytest.raises(ModelLoadError) as err:
        load_model({"path": str(tiny_files["pickled"])})
    assert "holds a pickled torch.nn.modules.container.Sequential" in err.value.message
    assert "--trust-pickle" in err.value.message


def test_unrecognised_file_is_explained(tmp_path: Path) -> None:
    junk = tmp_path / "notes.pt"
    junk.write_text("these are not weights")
    with pytest.raises(ModelLoadError, match="unrecognised file"):
        detect(junk)
    with pytest.raises(ModelLoadError, match="no such file or folder"):
        load_model({"path": str(tmp_path / "missing.pt2")})


def test_folder_without_manifest_or_handler_is_explained(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"without modelbay\.yaml or predict\.py"):
        load_model({"path": str(tmp_path)})


def test_model_folder_manifest_is_overridden_by_caller(tiny_files: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "mlp"
    folder.mkdir()
    shutil.copy(tiny_files["safetensors"], folder / "weights.safetensors")
    shutil.copy(tiny_files["state_dict"].parent / "tiny_arch.py", folder / "tiny_arch.py")
    (folder / "modelbay.yaml").write_text(
        "arch: tiny_arch:Tiny\nversion: 3\ninputs: [{name: features, datatype: FP32, shape: [-1, 4]}]\n"
        "batching: {max_batch_size: 8, max_queue_delay_ms: 2}\n"
    )
    loaded = load_model({"path": str(folder), "batching": {"max_batch_size": 4}})
    assert (loaded.config.name, loaded.config.version) == ("mlp", "3")
    assert (loaded.config.batching.max_batch_size, loaded.config.batching.max_queue_delay_ms) == (4, 2.0)
    assert [s.name for s in loaded.predictor.inputs] == ["features"]


def test_manifest_with_a_wrong_field_names_it(tmp_path: Path) -> None:
    (tmp_path / "modelbay.yaml").write_text("batching: {max_batch_size: many}\n")
    (tmp_path / "predict.py").write_text(
        "def load(d):\n    return None\n\ndef predict(m, xs):\n    return xs\n"
    )
    with pytest.raises(ModelLoadError, match=r"max_batch_size"):
        load_model({"path": str(tmp_path)})


def test_digits_artifacts_all_classify_held_out_digits() -> None:
    """Every committed digits artifact is the same trained network: >= 97% on the held-out split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from tests.conftest import DIGITS

    digits = load_digits()
    _, images, _, labels = train_test_split(
        digits.images, digits.target, test_size=0.25, random_state=0, stratify=digits.target
    )
    x = (images / 16.0).astype(np.float32)[:, None]
    artifacts = DIGITS / "artifacts"
    options = {
        "digits.state_dict.pt": {"arch": "model:DigitsNet"},
        "digits.safetensors": {"arch": "model:DigitsNet"},
        "digits.pickled.pt": None,  # pickles model.DigitsNet: covered by the trust test above
    }
    for artifact in sorted(artifacts.iterdir()):
        extra = options.get(artifact.name, {})
        if extra is None:
            continue
        entry = {"path": str(artifact), **extra}
        if "arch" in entry:
            entry["arch"] = str(DIGITS / "model.py") + ":DigitsNet"
        loaded = load_model(entry)
        loaded.predictor.setup(None)
        (logits,) = loaded.predictor.predict([[x]])[0]
        accuracy = float((logits.argmax(1) == labels).mean())
        assert accuracy >= 0.97, (artifact.name, accuracy)


@pytest.mark.parametrize("prefix", ["model.", "module.", "net.backbone."])
def test_checkpoints_of_training_wrappers_load_without_their_prefix(
    prefix: str, tiny: torch.nn.Module, tiny_files: dict[str, Path], tmp_path: Path
) -> None:
    """Lightning saves `model.`-prefixed keys under "state_dict"; DataParallel saves `module.` ones."""
    checkpoint = tmp_path / "last.ckpt"
    state = {prefix + key: value for key, value in tiny.state_dict().items()}
    torch.save(
        {"epoch": 7, "global_step": 70, "pytorch-lightning_version": "2.4.0", "state_dict": state}, checkpoint
    )
    shutil.copy(tiny_files["state_dict"].parent / "tiny_arch.py", tmp_path / "tiny_arch.py")
    loaded = load_model({"path": str(checkpoint), "arch": "tiny_arch:Tiny"})
    loaded.predictor.setup(None)
    x = np.ones((2, 4), np.float32)
    (y,) = loaded.predictor.predict([[x]])[0]
    np.testing.assert_allclose(y, tiny(torch.from_numpy(x)).detach().numpy(), rtol=1e-6)


def test_a_prefix_that_does_not_make_every_key_fit_is_not_stripped(
    tiny: torch.nn.Module, tmp_path: Path
) -> None:
    state = {"model." + key: value for key, value in tiny.state_dict().items()}
    state["model.extra.weight"] = torch.zeros(1)
    torch.save({"state_dict": state}, tmp_path / "odd.ckpt")
    (tmp_path / "tiny_arch.py").write_text(TINY_ARCH)
    with pytest.raises(ModelLoadError, match="does not fit tiny_arch:Tiny: missing keys"):
        load_model({"path": str(tmp_path / "odd.ckpt"), "arch": "tiny_arch:Tiny"})


DECLARED = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1, 3]}],
}


@pytest.mark.parametrize("kind", ["torchscript", "state_dict", "safetensors", "checkpoint", "pickled"])
def test_declared_specs_reach_the_predictor(
    kind: str, tiny_files: dict[str, Path], tiny: torch.nn.Module
) -> None:
    """Issue 9 item 7: formats that do not say their inputs take them from inputs: / --input."""
    loaded = load_model({"path": str(tiny_files[kind]), **OPTIONS.get(kind, {}), **DECLARED})
    predictor = loaded.predictor
    predictor.setup(loaded.model_dir)
    assert [s.metadata() for s in predictor.inputs] == DECLARED["inputs"]
    assert [s.metadata() for s in predictor.outputs] == DECLARED["outputs"]
    (x,) = predictor.preprocess([0.5, -1.0, 2.0, 0.0])
    (y,) = predictor.predict([[x]])[0]
    np.testing.assert_allclose(y, tiny(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(
        InvalidInput, match=r"input 'x': expected shape \[-1, 4\] \(-1 is any size\), got \[1, 2\]"
    ):
        predictor.preprocess([1.0, 2.0])


class TwoInputs(torch.nn.Module):
    def forward(self, tokens: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return tokens.float().sum(1, keepdim=True) * scale


def traced(tmp_path: Path) -> Path:
    path = tmp_path / "traced.pt"
    example = (torch.zeros(2, 3, dtype=torch.int64), torch.ones(2, 1))
    with warnings.catch_warnings():  # TorchScript is deprecated; users still have such files
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(TwoInputs(), example), path)
    return path


def test_traced_torchscript_gives_its_example_dtypes_and_shapes(tmp_path: Path) -> None:
    """Issue 9 item 7: a traced module keeps its example inputs; they become the input specs."""
    loaded = load_model({"path": str(traced(tmp_path))})
    predictor = loaded.predictor
    predictor.setup(None)
    assert [s.metadata() for s in predictor.inputs] == [
        {"name": "tokens", "datatype": "INT64", "shape": [-1, 3]},
        {"name": "scale", "datatype": "FP32", "shape": [-1, 1]},
    ]
    assert [s.metadata() for s in predictor.outputs] == [
        {"name": "output", "datatype": "FP32", "shape": [-1, 1]}
    ]
    tokens = np.arange(15, dtype=np.int64).reshape(5, 3)
    (y,) = predictor.predict([[tokens, np.full((5, 1), 2.0, np.float32)]])[0]
    np.testing.assert_allclose(y, tokens.sum(1, keepdims=True) * 2.0)
    with pytest.raises(InvalidInput, match="expected datatype INT64, got FP32"):
        predictor.decode_tensors(
            {"tokens": np.zeros((1, 3), np.float32), "scale": np.ones((1, 1), np.float32)}
        )


def test_declared_inputs_win_over_traced_ones_and_scripted_modules_say_nothing(
    tmp_path: Path, tiny_files: dict[str, Path]
) -> None:
    declared = [{"name": "ids", "datatype": "INT64", "shape": [-1, -1]}, {"name": "w", "datatype": "FP32"}]
    loaded = load_model({"path": str(traced(tmp_path)), "inputs": declared})
    assert [s.name for s in loaded.predictor.inputs] == ["ids", "w"]
    assert loaded.predictor.inputs[0].shape == (-1, -1) and loaded.predictor.inputs[1].shape is None
    scripted = load_model({"path": str(tiny_files["torchscript"])})
    assert [(s.name, s.datatype, s.shape) for s in scripted.predictor.inputs] == [("input", "FP32", None)]


class TwoHeads(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.linear(x)
        return {"logits": logits, "probs": logits.softmax(-1)}


@pytest.mark.anyio
async def test_exported_dict_outputs_are_served_under_their_keys(tmp_path: Path) -> None:
    """Issue 9 item 13: a .pt2 returning {"logits", "probs"} answered output0 / output1."""
    model, path = TwoHeads().eval(), tmp_path / "heads.pt2"
    batch = torch.export.Dim("batch")
    torch.export.save(torch.export.export(model, (torch.zeros(2, 4),), dynamic_shapes=({0: batch},)), path)
    settings = Settings.load(overrides={"models": [{"path": str(path)}]})
    async with asgi_client(Server(settings)) as client:
        metadata = (await client.get("/v2/models/heads")).json()
        assert [o["name"] for o in metadata["outputs"]] == ["logits", "probs"]
        assert metadata["outputs"][1] == {"name": "probs", "datatype": "FP32", "shape": [-1, 3]}
        tensor = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0.5, -1.0, 2.0, 0.0]}
        reply = await client.post("/v2/models/heads/infer", json={"inputs": [tensor]})
    assert reply.status_code == 200, reply.text
    outputs = {o["name"]: o["data"] for o in reply.json()["outputs"]}
    want = model(torch.tensor([[0.5, -1.0, 2.0, 0.0]]))
    np.testing.assert_allclose(outputs["logits"], want["logits"].detach().numpy().ravel(), rtol=1e-5)
    np.testing.assert_allclose(outputs["probs"], want["probs"].detach().numpy().ravel(), rtol=1e-5)
