"""A model repository: one folder holding several models, each with one or more model versions.

repository/
  digits/              a model folder (modelbay.yaml and/or predict.py): one model, its version
  resnet/              a model with versions (Triton's layout)
    modelbay.yaml      optional: settings shared by every version (task, batching, ...)
    1/model.pt2        a version: a single model file...
    2/                 ...or a model folder of its own

`ModelRepository` is such a folder served live: read again on each load and poll (the model
manager, registry/manager.py), so a version copied or uploaded into it is found without a restart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from modelbay.errors import InvalidInput, ModelLoadError, ModelNotFound
from modelbay.loading.detect import HANDLER_NAME
from modelbay.registry.upload import check_name
from modelbay.settings import (
    MANIFEST_NAME,
    ModelConfig,
    merge_model_settings,
    model_config,
    model_entry,
    read_manifest,
)

# A version's files as (path relative to the model folder, size, mtime in ns), sorted, with the
# settings it is loaded with: what changes when the version must be loaded again.
Fingerprint = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class RepositoryVersion:
    """One model version found on disk: its complete settings and its fingerprint."""

    config: ModelConfig
    fingerprint: Fingerprint


class ModelRepository:
    """A model repository folder, read from disk on every call (never cached).

    root:      the repository folder (may be empty: models can be uploaded into it).
    overrides: ModelConfig fields set over every model's own settings (the model flags of
               `modelbay serve`), as `Settings.load` sets them over a `models:` entry.
    """

    def __init__(self, root: Path, overrides: Mapping[str, Any] | None = None) -> None:
        self.root = root
        self.overrides = dict(overrides or {})

    def names(self) -> list[str]:
        """The model names on disk now (folders holding at least one model version), sorted."""
        return [child.name for child in _children(self.root) if _versions(child, strict=False)]

    def model_folder(self, name: str) -> Path:
        """Where model `name` lives (or will, once uploaded): <root>/<name>."""
        return self.root / name

    def has(self, name: str) -> bool:
        """True when `name` is a model on disk now (a name that is not one path component, or
        starts with a dot, never is: nothing outside the repository is read)."""
        try:
            check_name(name)
        except InvalidInput:
            return False
        folder = self.model_folder(name)
        return folder.is_dir() and bool(_versions(folder, strict=False))

    def versions(self, name: str, config: Mapping[str, Any] | None = None) -> dict[str, RepositoryVersion]:
        """Every version of `name` on disk with its complete settings: its folder's modelbay.yaml
        files < `config` (the load's override) < `overrides`.

        Raises ModelNotFound when `name` has no model on disk, ModelLoadError when a version folder
        or a modelbay.yaml is malformed (naming it).
        """
        if not self.has(name):
            raise ModelNotFound(f"no model named {name!r} in the model repository {self.root}")
        found: dict[str, RepositoryVersion] = {}
        for entry in _model_entries(self.model_folder(name), strict=True):
            fields = model_entry(merge_model_settings(entry, config or {}), self.overrides)
            settings = model_config({**fields, "name": fields.get("name") or name})
            stamp = (_files(Path(str(settings.path)), self.model_folder(name)), msgspec.json.encode(settings))
            found[settings.version] = RepositoryVersion(settings, stamp)
        return found

    def fingerprints(self, name: str) -> dict[str, Fingerprint] | None:
        """The versions of `name` on disk by fingerprint, without reading their settings (cheap:
        what the poll compares), or None when `name` has no model on disk."""
        folder = self.model_folder(name)
        if not self.has(name):
            return None
        shared = _files(folder / MANIFEST_NAME, folder)
        return {
            version or "": (shared, _files(target, folder))
            for version, target in _versions(folder, strict=False)
        }


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
    return [entry for child in _children(path) for entry in _model_entries(child, strict)]


def _model_entries(child: Path, strict: bool) -> list[dict[str, Any]]:
    """The `models:` entries of one model folder of a repository (scan_repository)."""
    versions = _versions(child, strict)
    if versions == [(None, child)]:
        return [{"path": str(child)}]
    shared = read_manifest(child) if versions else {}
    entries = []
    for version, target in versions:
        own = read_manifest(target) if target.is_dir() else {}
        layout = {"name": child.name, "version": version, "path": str(target)}
        entries.append(merge_model_settings(merge_model_settings(shared, own), layout))
    return entries


def _files(target: Path, base: Path) -> Fingerprint:
    """(path relative to `base`, size, mtime ns) of `target` (a file) or of every file under it
    (a folder; dot files skipped), sorted; () when it does not exist."""
    if target.is_file():
        paths = [target]
    elif target.is_dir():
        paths = sorted(
            p
            for p in target.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(target).parts)
        )
    else:
        return ()
    stamps = []
    for path in paths:
        try:
            stat = path.stat()
        except OSError:  # removed while we looked: the next look sees the change
            continue
        stamps.append((str(path.relative_to(base)), stat.st_size, stat.st_mtime_ns))
    return tuple(stamps)


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
