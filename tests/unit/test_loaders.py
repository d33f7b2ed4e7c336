"""loading/loaders.py: a format's loader imported on first use; a missing extra is a ModelLoadError.

Without torch for real: tests/e2e/test_torch_free.py. Here, a loader module whose import needs a
package that is not installed, in this environment (which has every extra).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from modelbay.errors import ModelLoadError
from modelbay.loading import loaders
from modelbay.loading.detect import Format
from modelbay.settings import ModelConfig


@pytest.fixture
def missing_loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A loader module that imports `modelbay_absent_runtime` (installed nowhere); its name."""
    (tmp_path / "modelbay_test_loader.py").write_text("import modelbay_absent_runtime\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "modelbay_test_loader", raising=False)
    loader = loaders.Loader("modelbay_test_loader", "a TorchScript file", "torch")
    monkeypatch.setitem(loaders.LOADERS, Format.TORCHSCRIPT, loader)
    return "modelbay_absent_runtime"


def test_a_missing_package_of_the_extra_names_the_extra(
    missing_loader: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(loaders.EXTRAS, "torch", (missing_loader,))
    with pytest.raises(ModelLoadError) as err:
        loaders.load_runner(Format.TORCHSCRIPT, tmp_path / "m.ts", ModelConfig())
    assert err.value.message == (
        f"{tmp_path / 'm.ts'}: this model is a TorchScript file: install modelbay[torch] "
        f"(pip install 'modelbay[torch]'; {missing_loader} is not installed here)"
    )


def test_any_other_missing_module_is_a_bug_and_propagates(missing_loader: str, tmp_path: Path) -> None:
    with pytest.raises(ModuleNotFoundError, match=missing_loader):
        loaders.load_runner(Format.TORCHSCRIPT, tmp_path / "m.ts", ModelConfig())


def test_a_folder_has_no_loader(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="format folder is not a model file"):
        loaders.load_runner(Format.FOLDER, tmp_path, ModelConfig())


def test_every_format_but_a_folder_has_a_loader_whose_packages_are_an_extra() -> None:
    assert set(loaders.LOADERS) == set(Format) - {Format.FOLDER}
    assert {loader.extra for loader in loaders.LOADERS.values()} <= set(loaders.EXTRAS)
