"""A model's own Python environment (runtime/environments.py): real uv, a real download of `inflection`
(one pure-Python file the server's environment does not have) and real interpreters."""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
import torch
from google.protobuf import __version__ as protobuf_version

import modelbay
from modelbay.errors import ModelLoadError
from modelbay.runtime import environments
from modelbay.runtime.environments import (
    MANIFEST,
    ServerEnvironment,
    default_cache_dir,
    ensure_environment,
    environment_key,
    read_requirements,
)

# A small pure-Python package no extra of modelbay pulls in (six came with Ray's dependencies).
ADDED = "inflection==0.5.1"
IMPORTS = """
import json, sys, inflection, torch, numpy, modelbay
print(json.dumps({"prefix": sys.prefix, "added": inflection.__file__, "torch": torch.__file__,
                  "numpy": numpy.__file__, "modelbay": modelbay.__file__}))
"""


def requirements(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "requirements.txt"
    path.write_text(text)
    return path


def built_envs(cache: Path) -> list[Path]:
    """The environments in a cache folder (not its lock files or builds in progress)."""
    return sorted(p for p in cache.iterdir() if not p.name.startswith("."))


@pytest.fixture
def no_uv(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if uv runs at all (so nothing was resolved or downloaded)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"uv ran: {args}")

    monkeypatch.setattr(environments, "_uv", refuse)


@pytest.fixture(scope="module")
def added_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(cache folder, python) of an environment that adds inflection to the server's."""
    assert importlib.util.find_spec("inflection") is None, "the test needs a package the server lacks"
    cache = tmp_path_factory.mktemp("envs")
    model = tmp_path_factory.mktemp("model")
    return cache, ensure_environment(requirements(model, f"{ADDED}\n"), cache_dir=cache)


def test_environment_imports_its_package_and_the_servers(added_env: tuple[Path, Path]) -> None:
    cache, python = added_env
    run = subprocess.run([str(python), "-c", IMPORTS], capture_output=True, text=True, cwd="/", check=True)
    files = json.loads(run.stdout)
    env = built_envs(cache)[0]
    assert Path(files["prefix"]) == env
    assert Path(files["added"]).is_relative_to(env)
    assert files["torch"] == torch.__file__
    assert files["numpy"] == numpy.__file__
    assert files["modelbay"] == modelbay.__file__


def test_environment_holds_only_what_the_server_lacks(added_env: tuple[Path, Path]) -> None:
    env = built_envs(added_env[0])[0]
    manifest = json.loads((env / MANIFEST).read_text())
    assert manifest["installed"] == {"inflection": "0.5.1"}
    site_packages = next((env / "lib").glob("python*/site-packages"))
    names = {p.name.split("-")[0].split(".")[0].lower() for p in site_packages.iterdir()}
    assert "inflection" in names
    assert not names & {"torch", "numpy", "modelbay"}


def test_second_call_reuses_the_environment_without_uv(
    added_env: tuple[Path, Path], tmp_path: Path, no_uv: None, caplog: pytest.LogCaptureFixture
) -> None:
    cache, python = added_env
    # Another model, the same requirement written differently: the same environment.
    other = requirements(tmp_path / "other-model", "# the same, reworded\n\ninflection == 0.5.1   # pinned\n")
    with caplog.at_level(logging.INFO, logger="modelbay.environments"):
        assert ensure_environment(other, cache_dir=cache) == python
    assert "reused from cache" in caplog.text
    assert len(built_envs(cache)) == 1


@pytest.mark.parametrize(
    ("line", "package", "version"),
    [
        ("torch==2.12.0", "torch", torch.__version__),
        ("torch>=3", "torch", torch.__version__),
        ("numpy<1", "numpy", numpy.__version__),
    ],
)
def test_requirement_on_a_server_package_at_another_version_is_refused(
    tmp_path: Path, no_uv: None, line: str, package: str, version: str
) -> None:
    path = requirements(tmp_path / "model", f"{ADDED}\n{line}\n")
    with pytest.raises(ModelLoadError) as caught:
        ensure_environment(path, cache_dir=tmp_path / "envs")
    assert repr(line) in caught.value.message
    assert f"server's own {package} {version}" in caught.value.message
    assert not (tmp_path / "envs").exists()  # refused before anything was written


def test_conflict_through_a_dependency_is_refused_by_uv(tmp_path: Path) -> None:
    # tensorflow-metadata 1.13.0 needs protobuf<4; the server has protobuf 6 (pyproject.toml).
    cache = tmp_path / "envs"
    path = requirements(tmp_path / "model", "tensorflow-metadata==1.13.0\n")
    with pytest.raises(ModelLoadError) as caught:
        ensure_environment(path, cache_dir=cache)
    message = caught.value.message
    assert "cannot be resolved together with the server's own packages" in message
    assert "tensorflow-metadata==1.13.0 depends on protobuf" in message
    assert f"protobuf=={protobuf_version}" in message
    assert "\n" not in message
    assert list(cache.iterdir()) == [cache / f".{_key(path)}.lock"]  # no environment, no build left


@pytest.mark.parametrize(
    "line",
    [
        "-e .",
        "--editable ./src",
        "--index-url https://example.org/simple",
        "-i https://example.org/simple",
        "--extra-index-url https://example.org/simple",
        "--find-links ./wheels",
        "-r other.txt",
        "-c constraints.txt",
        "six==1.17.0 --hash=sha256:00",
        "./local_package",
        "/opt/packages/six",
        "https://example.org/six-1.17.0-py2.py3-none-any.whl",
        "six @ https://example.org/six-1.17.0-py2.py3-none-any.whl",
        "six @ file:///opt/six",
        "six-1.17.0-py2.py3-none-any.whl",
        "six-1.17.0.tar.gz",
    ],
)
def test_forbidden_line_is_refused(tmp_path: Path, no_uv: None, line: str) -> None:
    path = requirements(tmp_path / "model", f"numpy\n{line}\n")
    with pytest.raises(ModelLoadError, match=r"line 2: .*may hold only requirements by name"):
        ensure_environment(path, cache_dir=tmp_path / "envs")


def test_requirements_file_syntax(tmp_path: Path) -> None:
    text = "# a comment\n\nsix==1.17.0  # inline\nrequests[socks] \\\n    >=2.0 ; python_version >= '3.8'\n"
    wanted = read_requirements(requirements(tmp_path, text))
    assert [str(req) for req in wanted] == ["six==1.17.0", 'requests[socks]>=2.0; python_version >= "3.8"']


def test_missing_requirements_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="cannot read the requirements file"):
        ensure_environment(tmp_path / "requirements.txt", cache_dir=tmp_path / "envs")


def test_requirements_the_server_meets_install_nothing(tmp_path: Path) -> None:
    python = ensure_environment(requirements(tmp_path / "model", "numpy>=1.26\ntorch\n"), cache_dir=tmp_path)
    manifest = json.loads((python.parent.parent / MANIFEST).read_text())
    assert manifest["installed"] == {}
    code = "import numpy; print(numpy.__file__)"
    run = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == numpy.__file__


def test_a_crashed_build_is_never_reused(tmp_path: Path) -> None:
    path = requirements(tmp_path / "model", "numpy>=1.26\n")
    cache = tmp_path / "envs"
    key = _key(path)
    # What a killed builder leaves: a build in progress, and (by hand) a folder that is not whole.
    (cache / f".{key}.tmp-killed" / "env" / "bin").mkdir(parents=True)
    (cache / key / "bin").mkdir(parents=True)
    python = ensure_environment(path, cache_dir=cache)
    assert python == cache / key / "bin" / "python"
    assert (cache / key / MANIFEST).is_file()
    assert sorted(p.name for p in cache.iterdir()) == [f".{key}.lock", key]


def test_two_processes_build_one_environment(tmp_path: Path) -> None:
    cache = tmp_path / "envs"
    path = requirements(tmp_path / "model", f"{ADDED}\n")
    code = (
        "import logging, sys; from pathlib import Path\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "from modelbay.runtime.environments import ensure_environment\n"
        "print(ensure_environment(Path(sys.argv[1]), cache_dir=Path(sys.argv[2])))\n"
    )
    command = [sys.executable, "-c", code, str(path), str(cache)]
    builders = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "ab"
    ]
    outputs = [builder.communicate(timeout=300) for builder in builders]
    assert [builder.returncode for builder in builders] == [0, 0], outputs
    assert outputs[0][0] == outputs[1][0]
    logs = outputs[0][1] + outputs[1][1]
    assert logs.count(" ready in ") == 1
    assert logs.count("reused from cache") == 1
    assert built_envs(cache) == [Path(outputs[0][0].strip()).parent.parent]
    assert not list(cache.glob(".*.tmp-*"))


def test_default_cache_folder_is_read_at_call_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "modelbay" / "envs"
    python = ensure_environment(requirements(tmp_path / "model", "numpy\n"))
    assert python.is_relative_to(tmp_path / "xdg" / "modelbay" / "envs")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "modelbay" / "envs"


def _key(path: Path) -> str:
    lines = sorted(str(req) for req in read_requirements(path))
    return environment_key(lines, ServerEnvironment.current())
