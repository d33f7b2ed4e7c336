"""A model repository: one folder holding several models, each with one or more model versions.

repository/
  digits/              a model folder (modelbay.yaml and/or predict.py): one model, its version
  resnet/              a model with versions (Triton's layout)
    modelbay.yaml      optional: settings shared by every version (task, batching, ...)
    1/model.pt2        a version: a single model file...
    2/                 ...or a model folder of its own
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelbay.errors import ModelLoadError
from modelbay.loading.detect import HANDLER_NAME
from modelbay.settings import MANIFEST_NAME, deep_merge, read_yaml


def is_model_folder(path: Path) -> bool:
    """True when `path` is a folder with a modelbay.yaml or a predict.py."""
    return (path / MANIFEST_NAME).is_file() or (path / HANDLER_NAME).is_file()


def is_repository(path: Path) -> bool:
    """True when `path` is a folder that is no model folder itself but holds at least one model."""
    return path.is_dir() and not is_model_folder(path) and bool(scan_repository(path, strict=False))


def scan_repository(path: Path, strict: bool = True) -> list[dict[str, Any]]:
    """One `models:` entry (name, version, path, shared settings) per model version in `path`.

    Raises ModelLoadError (strict) when a version folder holds no model file or more than one.
    """
    entries: list[dict[str, Any]] = []
    for child in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        versions = sorted(p for p in child.iterdir() if p.is_dir() and p.name.isdigit())
        if not versions:
            if is_model_folder(child):
                entries.append({"path": str(child)})
            continue
        shared = read_yaml(child / MANIFEST_NAME) if (child / MANIFEST_NAME).is_file() else {}
        for version in versions:
            target = version if is_model_folder(version) else _single_file(version, strict)
            if target is not None:
                entries.append(
                    deep_merge(shared, {"name": child.name, "version": version.name, "path": str(target)})
                )
    return entries


def _single_file(folder: Path, strict: bool) -> Path | None:
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    if len(files) == 1:
        return files[0]
    if strict:
        raise ModelLoadError(
            f"{folder}: a version folder needs one model file or a {MANIFEST_NAME}; "
            f"found {[p.name for p in files]}"
        )
    return None
