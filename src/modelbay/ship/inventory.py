"""What a model file, model folder or model repository holds, as `modelbay build` and `modelbay
manifests` need it: the files to copy, the artifact formats (hence the modelbay extras), the
packages its Python files import, its requirements.txt files and its size.

Whatever is given becomes a model repository in the image (registry/repository.py's layout), the
one folder `modelbay serve` is started on:

    model.onnx               -> <name>/1/model.onnx           (name: the file's stem)
    a model folder           -> <name>/...                    (modelbay.yaml and/or predict.py)
    a model with versions    -> <name>/1/..., <name>/2/...    (numbered folders, Triton's layout)
    a model repository       -> each of its models, as above
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from modelbay.errors import ModelLoadError
from modelbay.loading.detect import HANDLER_NAME, Format, detect
from modelbay.registry.repository import is_model_folder, is_repository
from modelbay.settings import MANIFEST_NAME, merge_model_settings, read_manifest

REQUIREMENTS_NAME = "requirements.txt"  # a model folder's own packages (runtime/environments.py)
# The modelbay extra each artifact format needs (pyproject.toml: `modelbay[onnx]`, `modelbay[torch]`).
FORMAT_EXTRAS = {
    Format.ONNX: "onnx",
    Format.TORCHSCRIPT: "torch",
    Format.EXPORTED: "torch",
    Format.CHECKPOINT: "torch",
    Format.SAFETENSORS: "torch",
}
# The modelbay extra a model's own Python code needs when it imports these modules.
IMPORT_EXTRAS = {"torch": "torch", "onnxruntime": "onnx"}
_SKIPPED_DIRS = {"__pycache__"}


@dataclass(frozen=True)
class ShippedModel:
    """One model of the image's repository.

    name:         its folder in the image's repository (the model's name unless its modelbay.yaml
                  names it otherwise).
    files:        (path relative to the image's repository, source file), sorted by path; dot
                  files and __pycache__ are left out, as the repository scanner skips them.
    formats:      the artifact formats of its versions (Format.FOLDER for a predict.py handler).
    imports:      top-level modules its .py files import that are neither the standard library,
                  modelbay, nor files of the model itself.
    requirements: paths (relative to the image's repository) of its requirements.txt files.
    size_bytes:   the files' total size, in bytes.
    """

    name: str
    files: tuple[tuple[str, Path], ...]
    formats: frozenset[Format]
    imports: frozenset[str]
    requirements: tuple[str, ...]
    size_bytes: int

    @property
    def extras(self) -> frozenset[str]:
        """The modelbay extras this model needs ("onnx", "torch"), from its formats and imports."""
        found = {FORMAT_EXTRAS[f] for f in self.formats if f in FORMAT_EXTRAS}
        return frozenset(found | {IMPORT_EXTRAS[m] for m in self.imports if m in IMPORT_EXTRAS})


@dataclass(frozen=True)
class Inventory:
    """Every model to ship, sorted by name (names are unique)."""

    models: tuple[ShippedModel, ...]

    @property
    def names(self) -> list[str]:
        return [model.name for model in self.models]

    @property
    def extras(self) -> frozenset[str]:
        return frozenset().union(*(model.extras for model in self.models))

    @property
    def imports(self) -> frozenset[str]:
        return frozenset().union(*(model.imports for model in self.models))

    @property
    def requirements(self) -> list[str]:
        return sorted(path for model in self.models for path in model.requirements)

    @property
    def size_bytes(self) -> int:
        return sum(model.size_bytes for model in self.models)

    @property
    def needs_torch(self) -> bool:
        return "torch" in self.extras


def take_inventory(path: Path) -> Inventory:
    """The models at `path`: a model file, a model folder, a model with numbered version folders,
    or a model repository (module docstring).

    Raises ModelLoadError when `path` holds none of these, a file is no model artifact, a version
    folder holds no model or several files, a modelbay.yaml or a .py file cannot be read, or two
    models would share a name.
    """
    path = Path(path)
    if path.is_file():
        name = path.name.split(".")[0]
        models = [_model(name, [("1", path)], shared={})]
    elif path.is_dir() and (_numbered(path) or is_model_folder(path)):
        models = [_folder_model(path)]
    elif path.is_dir() and is_repository(path):
        children = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
        models = [_folder_model(child) for child in children if _numbered(child) or is_model_folder(child)]
    else:
        raise ModelLoadError(
            f"{path}: not a model file, a model folder ({MANIFEST_NAME} or {HANDLER_NAME}), a model with "
            "numbered version folders, or a model repository of those"
        )
    names = [model.name for model in models]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ModelLoadError(f"{path}: two models would be named {', '.join(twice)} in the image")
    return Inventory(tuple(sorted(models, key=lambda model: model.name)))


def _folder_model(folder: Path) -> ShippedModel:
    """A model folder: unversioned (its files are the model) or with numbered version folders."""
    numbered = _numbered(folder)
    if not numbered:
        return _model(folder.name, [("", folder)], shared={})
    versions = []
    for version in numbered:
        if is_model_folder(version):
            versions.append((version.name, version))
            continue
        found = [p for p in version.iterdir() if p.is_file() and not p.name.startswith(".")]
        if len(found) != 1:
            raise ModelLoadError(
                f"{version}: a version folder needs one model file or a {MANIFEST_NAME}; "
                f"found {sorted(p.name for p in found)}"
            )
        versions.append((version.name, found[0]))
    model = _model(folder.name, versions, shared=read_manifest(folder))
    own = _listed(folder, folder.name, recursive=False)  # the shared modelbay.yaml and the like
    files = tuple(sorted({*model.files, *own}))
    return ShippedModel(model.name, files, model.formats, model.imports, model.requirements, _size(files))


def _model(name: str, versions: list[tuple[str, Path]], shared: dict[str, object]) -> ShippedModel:
    """A model from its versions: (version folder name, or "" for an unversioned folder; its
    model file or folder). `shared`: the model's shared modelbay.yaml (versioned models)."""
    files: list[tuple[str, Path]] = []
    formats: set[Format] = set()
    imports: set[str] = set()
    requirements: list[str] = []
    for version, target in versions:
        prefix = "/".join(part for part in (name, version) if part)
        if target.is_file():
            files.append((f"{prefix}/{target.name}", target))
            formats.add(detect(target))
            continue
        files.extend(_listed(target, prefix, recursive=True))
        formats |= _folder_formats(target, merge_model_settings(shared, read_manifest(target)))
        imports |= _imports(target)
        if (target / REQUIREMENTS_NAME).is_file():
            requirements.append(f"{prefix}/{REQUIREMENTS_NAME}")
    listed = tuple(sorted(files))
    return ShippedModel(
        name, listed, frozenset(formats), frozenset(imports), tuple(requirements), _size(listed)
    )


def _folder_formats(folder: Path, manifest: dict[str, object]) -> set[Format]:
    """The formats a model folder serves: its handler's (FOLDER), or its weights' file.

    Raises ModelLoadError for an unknown format, weights outside the folder (the image would
    lack them), or no single model file to serve.
    """
    from modelbay.loading import WEIGHT_SUFFIXES  # the loader's own rule for "the one model file"

    if (folder / HANDLER_NAME).is_file():
        return {Format.FOLDER}
    weights = folder / str(manifest.get("weights") or "")
    if not weights.resolve().is_relative_to(folder.resolve()):
        raise ModelLoadError(
            f"{folder / MANIFEST_NAME}: weights: {manifest['weights']} lies outside the model folder, "
            "and the image gets only the folder's files: move the file into the folder and name it there"
        )
    if manifest.get("format"):
        try:
            return {Format(str(manifest["format"]))}
        except ValueError:
            raise ModelLoadError(
                f"{folder / MANIFEST_NAME}: unknown format {manifest['format']!r}; expected one of "
                f"{[f.value for f in Format]}"
            ) from None
    if manifest.get("weights"):
        return {detect(weights)}
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if len(found) != 1:
        raise ModelLoadError(
            f"{folder}: set weights: in {MANIFEST_NAME} to the model file; found "
            f"{[p.name for p in found] or 'none'} among files ending in {', '.join(WEIGHT_SUFFIXES)}"
        )
    return {detect(found[0])}


def _imports(folder: Path) -> set[str]:
    """Top-level modules imported by the .py files under `folder` (absolute imports only), less
    the standard library, modelbay and the folder's own modules. Raises ModelLoadError for a .py
    file that does not parse."""
    found: set[str] = set()
    own = {p.stem for p in folder.rglob("*.py")} | {p.name for p in folder.rglob("*") if p.is_dir()}
    for source in sorted(folder.rglob("*.py")):
        if _SKIPPED_DIRS & set(source.relative_to(folder).parts):
            continue
        try:
            tree = ast.parse(source.read_bytes(), filename=str(source))
        except (OSError, SyntaxError, ValueError) as exc:
            raise ModelLoadError(f"cannot read the Python file {source}: {exc}") from None
        found |= set(_imported(tree))
    return {m for m in found if m not in sys.stdlib_module_names and m != "modelbay" and m not in own}


def _imported(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]


def _listed(folder: Path, prefix: str, *, recursive: bool) -> list[tuple[str, Path]]:
    """(prefix/relative path, file) of the files in `folder` (all levels when `recursive`), less
    dot files and __pycache__; files reached through a symbolic link are copied as files."""
    entries = folder.rglob("*") if recursive else folder.iterdir()
    listed = []
    for path in entries:
        parts = path.relative_to(folder).parts
        if any(part.startswith(".") for part in parts) or _SKIPPED_DIRS & set(parts) or not path.is_file():
            continue
        listed.append((f"{prefix}/{'/'.join(parts)}", path))
    return listed


def _numbered(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def _size(files: Iterable[tuple[str, Path]]) -> int:
    return sum(path.stat().st_size for _, path in files)
