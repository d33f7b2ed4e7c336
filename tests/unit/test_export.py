"""`modelbay export`: real trained models exported to ONNX and .pt2, checked against the original on
real data (scikit-learn's digits) and random inputs; broken exports caught with exit status 2."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml
from onnx import numpy_helper
from sklearn.datasets import load_digits

from modelbay.cli.main import main
from modelbay.errors import ModelLoadError
from modelbay.export import targets
from modelbay.export.check import Tolerance, check_cases, compare
from modelbay.export.manifest import record
from modelbay.export.source import load_source
from modelbay.loading import load_model
from tests.conftest import tiny_module

BUILTIN = Path(__file__).resolve().parents[2] / "src" / "modelbay" / "builtin" / "digits"
ARTIFACTS = Path(__file__).resolve().parents[2] / "examples" / "digits" / "artifacts"

# An MLP on the 64 pixels whose forward takes a "faster" tanh GELU when torch.export traces it: the
# export differs from eager by ~1e-3, the kind of silent drift the check exists to catch.
EXPORT_UNSAFE_ARCH = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        approximate = "tanh" if torch.compiler.is_exporting() else "none"
        return self.fc2(nn.functional.gelu(self.fc1(pixels), approximate=approximate))
"""


def digits_images() -> np.ndarray:
    """scikit-learn's 1,797 digit scans as the digits CNN takes them: [n, 1, 8, 8] FP32 in [0, 1]."""
    return (load_digits().images / 16.0).astype(np.float32)[:, None]


@pytest.fixture
def digits_folder(tmp_path: Path) -> Path:
    """A copy of the bundled digits model folder (trained CNN, .pt2, modelbay.yaml)."""
    return Path(shutil.copytree(BUILTIN, tmp_path / "digits"))


@pytest.fixture(scope="module")
def unsafe_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The export-unsafe MLP trained on the digits (about 99% on its training data), saved as a
    state_dict beside its architecture file; returns the state_dict's path."""
    folder = tmp_path_factory.mktemp("unsafe")
    (folder / "unsafe_arch.py").write_text(EXPORT_UNSAFE_ARCH)
    namespace: dict[str, object] = {}
    exec(compile(EXPORT_UNSAFE_ARCH, "unsafe_arch.py", "exec"), namespace)
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    torch.manual_seed(0)
    net = namespace["Net"]()  # type: ignore[operator]
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(100):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    assert (net(x).argmax(1) == y).float().mean() > 0.95
    torch.save(net.state_dict(), folder / "unsafe.pth")
    return folder / "unsafe.pth"


def test_digits_exports_to_onnx_and_passes_on_real_data(
    digits_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    np.savez(tmp_path / "digits.npz", image=digits_images())
    manifest = digits_folder / "modelbay.yaml"
    manifest.write_text(manifest.read_text().replace("weights: digits.pt2\n", ""))  # found, not named
    status = main(["export", str(digits_folder), "--to", "onnx", "--examples", str(tmp_path / "digits.npz")])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "examples (1797 rows), batch 1, batch 2, batch 7" in out
    row = out.splitlines()[2].split()  # output, max abs, max rel, worst at, "N of M" beyond tolerance
    assert row[0] == "logits" and float(row[1]) < 1e-4 and row[-3:] == ["0", "of", str((1797 + 10) * 10)]
    onnx_file = digits_folder / "digits.onnx"
    assert f"wrote {onnx_file}" in err
    # the folder now holds two model files: its manifest, which named none, now names the original
    assert f"{manifest} now names digits.pt2 as the model's weights" in err
    assert yaml.safe_load(manifest.read_text())["weights"] == "digits.pt2"
    assert manifest.read_text().startswith("# The default model of `modelbay serve`")
    # the export, as modelbay serves it, answers as the original on every real scan, any batch size
    original = load_model({"path": str(digits_folder)}).predictor
    exported = load_model({"path": str(onnx_file)}).predictor
    assert exported.platform == "onnxruntime_onnx"
    assert [spec.metadata() for spec in exported.inputs] == [
        {"name": "image", "datatype": "FP32", "shape": [-1, 1, 8, 8]}
    ]
    images = digits_images()
    want = original.runner([images])[0]  # type: ignore[attr-defined]
    got = exported.runner([images])[0]  # type: ignore[attr-defined]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)
    assert (got.argmax(1) == load_digits().target).mean() > 0.98
    assert not list(digits_folder.glob(".modelbay-export-*"))


def test_a_torchscript_file_exports_to_pt2_with_a_dynamic_batch(tmp_path: Path) -> None:
    scripted = Path(shutil.copy(ARTIFACTS / "digits.torchscript.pt", tmp_path))
    with pytest.raises(ModelLoadError, match="pass --example-shape"):
        load_source({"path": str(scripted)})  # a scripted module does not say its shapes
    status = main(["export", str(scripted), "--to", "pt2", "--example-shape", "1,1,8,8"])
    assert status == 0
    exported = load_model({"path": str(tmp_path / "digits.pt2")}).predictor
    assert exported.platform == "pytorch_exported" and exported.inputs[0].shape == (-1, 1, 8, 8)
    written = (tmp_path / "digits.pt2").read_bytes()
    again = ["export", str(scripted), "--to", "pt2", "--example-shape", "1,1,8,8"]
    assert main(again) == 2  # the default file exists: it may be another model's, not replaced
    assert (tmp_path / "digits.pt2").read_bytes() == written
    assert main([*again, "--force"]) == 0
    original = load_model({"path": str(scripted)}).predictor
    for rows in (1, 13):
        images = digits_images()[:rows]
        want = original.runner([images])[0]  # type: ignore[attr-defined]
        np.testing.assert_allclose(exported.runner([images])[0], want, atol=1e-5, rtol=1e-5)  # type: ignore[attr-defined]


def test_a_broken_export_is_refused_with_exit_2_naming_the_tolerance(
    unsafe_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for target in ("onnx", "pt2"):
        out = tmp_path / f"unsafe.{target}"
        args = ["export", str(unsafe_model), "--arch", "unsafe_arch:Net", "--example-shape", "1,64"]
        status = main([*args, "--to", target, "--out", str(out)])
        stdout, err = capsys.readouterr()
        assert status == 2, err
        assert "modelbay: export rejected: output 'output' differs from the original by up to" in err
        assert "beyond the tolerance atol=0.0001 + rtol=0.001 x |original|" in err
        assert f"nothing was written to {out}" in err
        assert "output  " in stdout  # the table of errors was printed first
        assert not out.exists() and not list(tmp_path.glob(".modelbay-export-*"))
        # the same drift is within a tolerance the user loosens on purpose
        assert main([*args, "--to", target, "--out", str(out), "--atol", "0.02"]) == 0
        assert out.exists()
        capsys.readouterr()


def test_corrupted_onnx_weights_are_caught(digits_folder: Path, tmp_path: Path) -> None:
    assert main(["export", str(digits_folder), "--to", "onnx", "--out", str(tmp_path / "good.onnx")]) == 0
    model = onnx.load(str(tmp_path / "good.onnx"))
    biggest = max(model.graph.initializer, key=lambda tensor: int(np.prod(tensor.dims)))
    weights = numpy_helper.to_array(biggest).copy()
    weights.flat[::97] += 0.05  # a few weights off, as a bad conversion or a flipped bit would leave them
    biggest.CopyFrom(numpy_helper.from_array(weights, biggest.name))
    onnx.save(model, str(tmp_path / "bad.onnx"))
    source = load_source({"path": str(digits_folder)})
    cases = check_cases(source.inputs, (1, 2, 7), source.examples)
    good = compare(
        source.runner, targets.read("onnx", tmp_path / "good.onnx"), ["logits"], cases, Tolerance()
    )
    bad = compare(source.runner, targets.read("onnx", tmp_path / "bad.onnx"), ["logits"], cases, Tolerance())
    assert good.passed and good.outputs[0].max_abs < 1e-4
    assert not bad.passed and bad.outputs[0].beyond > 0
    assert "output 'logits' differs from the original by up to" in bad.failure()


def test_models_without_a_torch_module_or_shapes_are_refused(
    tmp_path: Path, unsafe_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    onnx_file = shutil.copy(ARTIFACTS / "digits.onnx", tmp_path)
    assert main(["export", str(onnx_file), "--to", "pt2"]) == 2
    assert (
        "the model runs on onnxruntime_onnx, not a PyTorch module: nothing to export"
        in capsys.readouterr().err
    )
    assert main(["export", str(unsafe_model), "--to", "onnx"]) == 2
    assert "pass --arch module:Class" in capsys.readouterr().err
    assert main(["export", str(unsafe_model), "--to", "onnx", "--arch", "unsafe_arch:Net"]) == 2
    assert "input 'pixels' has no complete shape" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["export", str(unsafe_model), "--to", "onnx", "--example-shape", "1,x"])
    assert exited.value.code == 2


def test_bad_flags_and_unwritable_outputs_are_one_line_and_exit_2(
    digits_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = str(digits_folder / "digits.pt2")
    for flags in (["--atol", "-1"], ["--rtol", "nan"], ["--atol", "inf"], ["--pick-seconds", "0"]):
        with pytest.raises(SystemExit) as exited:
            main(["export", model, "--to", "onnx", *flags])
        assert exited.value.code == 2
        assert "expected" in capsys.readouterr().err
    assert main(["export", model, "--to", "onnx", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"modelbay: export: --out {tmp_path} is a folder; name the file to write")
    np.savez(tmp_path / "words.npz", image=np.full((2, 1, 8, 8), "a"))
    assert main(["export", model, "--to", "onnx", "--examples", str(tmp_path / "words.npz")]) == 2
    assert "arrays of ['<U1'] cannot be the inputs ['FP32']" in capsys.readouterr().err
    (tmp_path / "plain-file").write_text("")
    assert main(["export", model, "--to", "onnx", "--out", str(tmp_path / "plain-file" / "d.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("modelbay: export: ") and "plain-file" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_missing_export_packages_are_named_before_the_model_loads(
    digits_folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # modelbay[torch] alone: no onnxruntime, onnx or onnxscript (None in sys.modules: import fails)
    for module in ("onnxruntime", "onnxscript", "onnx"):
        monkeypatch.setitem(sys.modules, module, None)
    for module in ("modelbay.export.targets", "modelbay.loading.onnx"):  # imported afresh: none may need them
        package, _, name = module.rpartition(".")
        monkeypatch.delitem(sys.modules, module, raising=False)
        monkeypatch.delattr(sys.modules[package], name, raising=False)
    assert main(["export", str(digits_folder), "--to", "onnx"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "modelbay: export: --to onnx needs onnx, onnxscript, onnxruntime, not installed here: "
        "pip install 'onnx' 'onnxscript' 'modelbay[onnx]'\n"
    )
    assert main(["export", str(digits_folder), "--to", "pt2", "--out", str(digits_folder / "d.pt2")]) == 0
    assert load_model({"path": str(digits_folder / "d.pt2")}).predictor.platform == "pytorch_exported"


def test_pick_times_the_backends_and_records_the_fastest_keeping_the_manifest_comments(
    digits_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = digits_folder / "modelbay.yaml"
    args = ["export", str(digits_folder), "--to", "onnx", "--pick", "--pick-seconds", "0.05"]
    assert main([*args, "--backends", "eager,export"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("rows/s") :].splitlines()
    assert table[1].split() == ["backend", "batch", "1", "batch", "2", "batch", "7", "geo", "mean"]
    rows = {line.split()[0]: line.split() for line in table[2:]}
    assert set(rows) == {"onnxruntime", "torch"}
    chosen = next(name for name, row in rows.items() if row[-1] == "chosen")
    assert all(float(figure.replace(",", "")) > 0 for figure in rows[chosen][-6:-2])  # 3 sizes, geo mean
    text = manifest.read_text()
    assert text.startswith("# The default model of `modelbay serve`")  # the user's comments stay
    assert "\n# rows/s (higher is better), median of rounds, same run:\n" in text
    settings = yaml.safe_load(text)
    assert settings["weights"] == {"onnxruntime": "digits.onnx", "torch": "digits.pt2"}[chosen]
    assert (
        settings["labels"][:2] == ["0", "1"] and settings["top_k"] == 3 and settings["torch_compile"] is False
    )


def test_a_second_pick_replaces_the_first_and_the_folder_serves_the_winner(
    digits_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = digits_folder / "modelbay.yaml"
    args = ["--to", "onnx", "--pick", "--pick-seconds", "0.05", "--backends", "export"]
    assert main(["export", str(digits_folder), *args]) == 0
    assert yaml.safe_load(manifest.read_text())["weights"] == "digits.onnx"
    other = digits_folder / "x.onnx"
    assert main(["export", str(digits_folder / "digits.pt2"), *args, "--out", str(other)]) == 0
    text = manifest.read_text()
    assert text.count("# >>> modelbay export") == 1 and yaml.safe_load(text)["weights"] == "x.onnx"
    loaded = load_model({"path": str(digits_folder)})
    assert loaded.predictor.platform == "onnxruntime_onnx" and loaded.config.name == "digits"
    capsys.readouterr()
    assert main(["export", str(digits_folder), *args]) == 2  # the folder serves ONNX now
    assert "the model runs on onnxruntime_onnx, not a PyTorch module" in capsys.readouterr().err


def test_pick_beside_a_model_file_writes_a_manifest_that_serves_it(
    unsafe_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = Path(shutil.copytree(unsafe_model.parent, tmp_path / "m"))
    args = ["export", str(folder / "unsafe.pth"), "--arch", "unsafe_arch:Net", "--example-shape", "1,64"]
    pick = ["--pick", "--backends", "eager", "--pick-seconds", "0.05"]
    assert main([*args, "--to", "pt2", "--atol", "0.02", *pick]) == 0
    settings = yaml.safe_load((folder / "modelbay.yaml").read_text())
    assert settings["weights"] == "unsafe.pth" and settings["format"] == "checkpoint"
    assert settings["arch"] == "unsafe_arch:Net" and settings["name"] == "unsafe"
    assert settings["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}]
    loaded = load_model({"path": str(folder)})
    assert loaded.config.name == "unsafe" and loaded.predictor.platform == "pytorch_state_dict"


def test_torch_compile_setting_compiles_the_module_and_answers_as_eager(tmp_path: Path) -> None:
    program = torch.export.export(
        tiny_module(), (torch.zeros(2, 4),), dynamic_shapes=({0: torch.export.Dim("b")},)
    )
    torch.export.save(program, tmp_path / "tiny.pt2")  # a small MLP: TorchInductor compiles it in seconds
    eager = load_model({"path": str(tmp_path / "tiny.pt2")}).predictor
    compiled = load_model({"path": str(tmp_path / "tiny.pt2"), "torch_compile": True}).predictor
    assert type(compiled.runner.module).__name__ == "OptimizedModule"  # type: ignore[attr-defined]
    compiled.setup(None)  # compiles, on the zero probe
    rows = np.random.default_rng(0).standard_normal((9, 4)).astype(np.float32)
    want = eager.runner([rows])[0]  # type: ignore[attr-defined]
    np.testing.assert_allclose(compiled.runner([rows])[0], want, atol=1e-5, rtol=1e-5)  # type: ignore[attr-defined]
    with pytest.raises(ModelLoadError, match="torch_compile applies to PyTorch models"):
        load_model({"path": str(ARTIFACTS / "digits.onnx"), "torch_compile": True})


def test_manifest_edit_replaces_only_the_fields_it_sets(tmp_path: Path) -> None:
    (tmp_path / "modelbay.yaml").write_text(
        "# my model\nname: m  # served as m\nformat:\n  checkpoint\ninputs:\n- {name: x, shape: [-1, 4]}\n"
        "weights: a.pt2\n"
    )
    record(tmp_path, {"weights": "a.onnx", "format": "onnx"}, ["measured: 3 rows/s"])
    record(tmp_path, {"weights": "b.onnx", "format": "onnx"}, ["measured: 4 rows/s"])
    text = (tmp_path / "modelbay.yaml").read_text()
    assert text.startswith("# my model\nname: m  # served as m\ninputs:\n- {name: x, shape: [-1, 4]}\n")
    assert "3 rows/s" not in text and "# measured: 4 rows/s\nweights: b.onnx\nformat: onnx\n" in text
    with pytest.raises(ModelLoadError, match="top_k"):
        record(tmp_path, {"top_k": "many"})
    assert (tmp_path / "modelbay.yaml").read_text() == text  # a bad edit never lands
