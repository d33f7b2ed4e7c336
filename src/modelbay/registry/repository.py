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
from modelbay.settings import MANIFEST_NAME, merge_model_settings, read_manifest


def is_model_folder(path: Path) -> bool:
    """True when `path` is a folder with a modelbay.yaml or a predict.py."""
    return (path / MANIFEST_NAME).is_file() or (path / HANDLER_NAME).is_file()


def is_repository(path: Path) -> bool:
    """True when `path` is a folder that is no model folder itself but holds at least one model."""
    return (
        path.is_dir()
        and not is_model_folder(path)
        and any(_versions(child, strict=False) for child in _children(path))
    )


def scan_repository(path: Path, strict: bool = True) -> list[dict[str, Any]]:
    """One `models:` entry (name, version, path, settings) per model version in `path`.

    A versioned model's entries carry its shared modelbay.yaml, under a version folder's own
    modelbay.yaml (the more specific file wins); the repository's layout sets name and version.
    Raises ModelLoadError (strict) when a version folder holds no model file or more than one.
    """
    entries: list[dict[str, Any]] = []
    for child in _children(path):
        versions = _versions(child, strict)
        if versions == [(None, child)]:
            entries.append({"path": str(child)})
            continue
        shared = read_manifest(child) if versions else {}
        for version, target in versions:
            own = read_manifest(target) if target.is_dir() else {}
            layout = {"name": child.name, "version": version, "path": str(target)}
            entries.append(merge_model_settings(merge_model_settings(shared, own), layout))
    return entries


def _children(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _versions(child: Path, strict: bool) -> list[tuple[str | None, Path]]:
    """(version, model file or folder) per numbered folder of `child`; [(None, child)] when
    `child` is an unversioned model folder; [] when it holds no model."""
    numbered = sorted(p for p in child.iterdir() if p.is_dir() and p.name.isdigit())
    if not numbered:
        return [(None, child)] if is_model_folder(child) else []
    found = [(v.name, v if is_model_folder(v) else _single_file(v, strict)) for v in numbered]
    return [(version, target) for version, target in found if target is not None]


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
