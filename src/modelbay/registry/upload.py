"""A model sent with a load request, written into the model repository as new version folders.

The OIP model repository extension lets a load carry the model itself: files by path relative to
the model folder (`file:3/model.onnx`) and a `config` (modelbay.yaml fields). `write_versions`
puts them under <repository>/<name>/ by these rules, because an upload is an attack surface:

- Every path is <version>/<relative path>: a version of digits without a leading zero (Triton
  ignores the others), then 1 to MAX_DEPTH - 1 components; no absolute path, `..`, `.`, empty
  component, backslash, control character, component starting with `.` (the repository scan
  skips dot files, and the staging folder is one), over NAME_MAX bytes or over MAX_PATH_CHARS.
- Versions are immutable: a version folder that exists (any spelling of its number) is refused.
- Each version must load as the repository scan reads it: a modelbay.yaml or predict.py at its
  top, or exactly one file there. Its modelbay.yaml (uploaded, `config`, or `config` merged over
  the uploaded one) must be a mapping of valid ModelConfig fields. A refused upload writes nothing.
- Nothing below the repository is reached through a symlink: every step opens a directory file
  descriptor with O_NOFOLLOW and creates files with O_EXCL | O_NOFOLLOW. (The repository folder
  itself is the operator's choice and may be reached through one.)
- Atomic: everything is staged in <repository>/.modelbay-upload-<random>/ and fsynced, then each
  version folder is renamed into place (rename(2): it appears whole or not at all). Any failure
  removes the staging folder, the versions already renamed, and a model folder created for them.

An upload may hold code (predict.py, `arch`, `trust_pickle`): the doors let only loopback clients
load (runtime/management.py).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from modelbay.errors import InvalidInput, ModelLoadError
from modelbay.loading.detect import HANDLER_NAME
from modelbay.settings import MANIFEST_NAME, ModelConfig, convert, merge_model_settings

MAX_FILES = 1000
MAX_DEPTH = 16  # components of a path, its version included
MAX_PATH_CHARS = 1024
NAME_MAX = 255  # bytes of one component (Linux's NAME_MAX)
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
STAGING_PREFIX = ".modelbay-upload-"
_VERSION = re.compile(r"[1-9][0-9]{0,17}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# The fields the repository's layout sets (<name>/<version>/); a manifest's own are overridden.
_LAYOUT = ("name", "version", "path")

# One version's files: path components below the version folder -> content.
VersionFiles = dict[tuple[str, ...], bytes]


def check_name(name: str, what: str = "model name") -> None:
    """Raise InvalidInput unless `name` is one safe path component (a model name, a folder or
    file name of an upload): not empty, `.` or `..`, no `/`, backslash or control character,
    not starting with `.`, at most NAME_MAX bytes of UTF-8."""
    if not name or name.startswith(".") or "/" in name or "\\" in name or _CONTROL.search(name):
        raise InvalidInput(
            f"{what} {name!r} is not allowed: it must be non-empty, not start with '.', and hold no "
            "'/', backslash or control character"
        )
    try:
        size = len(name.encode())
    except UnicodeEncodeError:
        raise InvalidInput(f"{what} {name!r} is not valid UTF-8 text") from None
    if size > NAME_MAX:
        raise InvalidInput(f"{what} {name[:40]!r}... is {size} bytes long; at most {NAME_MAX} are allowed")


def split_path(path: str) -> tuple[str, tuple[str, ...]]:
    """(version, components below the version folder) of an upload path such as "3/weights/a.bin".

    Raises InvalidInput for anything but <version>/<relative path> by the rules of the module
    docstring, saying which rule.
    """
    if len(path) > MAX_PATH_CHARS:
        raise InvalidInput(f"upload path {path[:60]!r}... is over {MAX_PATH_CHARS} characters")
    if path.startswith("/") or "\\" in path:
        raise InvalidInput(f"upload path {path!r} must be relative, with '/' between its folders")
    version, *parts = path.split("/")
    if not _VERSION.fullmatch(version) or not parts:
        raise InvalidInput(
            f"upload path {path!r} must be <version>/<file>, the version a number without a leading "
            "zero, e.g. '1/model.onnx'"
        )
    if len(parts) >= MAX_DEPTH:
        raise InvalidInput(f"upload path {path!r} is deeper than {MAX_DEPTH} folders")
    for part in parts:
        check_name(part, f"upload path {path!r}: component")
    return version, tuple(parts)


def write_versions(
    model_folder: Path,
    files: Mapping[str, bytes],
    config: Mapping[str, Any] | None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_files: int = MAX_FILES,
) -> list[str]:
    """Write uploaded files into `model_folder` (<repository>/<name>/) as new version folders.

    model_folder: <repository>/<name>, `name` passed by the caller through `check_name` first:
            pathlib folds `<repository>/.` and `<repository>/` into the repository itself and
            `a/b` into a deeper folder, which this function can no longer tell apart.
    files:  content by path relative to the model folder, e.g. {"3/model.onnx": b"..."}.
    config: modelbay.yaml fields written as each new version's modelbay.yaml (over an uploaded
            one, field by field as manifests merge: config wins); None writes none of its own.
    max_bytes, max_files: most bytes (all files together) and files an upload may hold.
    Returns the versions written, sorted by number. Raises InvalidInput when the upload breaks a
    rule of the module docstring (nothing is written then), ModelLoadError when the disk fails
    (what was written is removed).
    """
    versions = plan_versions(files, config, max_bytes, max_files)
    if ".." in model_folder.parts:
        raise InvalidInput(f"model folder {str(model_folder)!r} must not hold '..'")
    check_name(model_folder.name)
    try:
        repository = os.open(model_folder.parent, _DIR_FLAGS & ~os.O_NOFOLLOW)
    except OSError as exc:
        raise ModelLoadError(f"cannot open the model repository {model_folder.parent}: {exc}") from exc
    try:
        return _write(repository, model_folder.name, versions)
    finally:
        os.close(repository)


def plan_versions(
    files: Mapping[str, bytes], config: Mapping[str, Any] | None, max_bytes: int, max_files: int
) -> dict[str, VersionFiles]:
    """Every file of the upload by version, each version's modelbay.yaml rendered, all rules of
    the module docstring checked but the ones on disk. Raises InvalidInput."""
    if not files:
        raise InvalidInput("an upload needs at least one file (<version>/<path>)")
    if len(files) > max_files:
        raise InvalidInput(f"the upload holds {len(files)} files; at most {max_files} are accepted")
    for path, data in files.items():
        if not isinstance(path, str) or not isinstance(data, bytes | bytearray):
            raise InvalidInput(f"upload file {path!r}: expected a str path and bytes")
    size = sum(len(data) for data in files.values())
    if size > max_bytes:
        raise InvalidInput(f"the upload holds {size} bytes; at most {max_bytes} are accepted")
    if config is not None and not isinstance(config, Mapping):
        raise InvalidInput(f"config must be a mapping of modelbay.yaml fields, got {type(config).__name__}")
    versions: dict[str, VersionFiles] = {}
    for path, data in files.items():
        version, parts = split_path(path)
        versions.setdefault(version, {})[parts] = bytes(data)
    for version, entries in versions.items():
        _check_tree(version, entries)
        if config is not None or (MANIFEST_NAME,) in entries:
            entries[(MANIFEST_NAME,)] = _manifest(version, entries.get((MANIFEST_NAME,)), config)
        top = sorted(parts[0] for parts in entries if len(parts) == 1)
        if MANIFEST_NAME not in top and HANDLER_NAME not in top and len(top) != 1:
            raise InvalidInput(
                f"version {version} needs one model file at its top, or a {MANIFEST_NAME} (send config) "
                f"or {HANDLER_NAME} beside its files; it has {top or 'none'}"
            )
    return dict(sorted(versions.items(), key=lambda item: int(item[0])))


def _check_tree(version: str, entries: VersionFiles) -> None:
    """Raise InvalidInput when one path of `version` is a file and a folder of another."""
    folders = {parts[:depth] for parts in entries for depth in range(1, len(parts))}
    clash = sorted(folders & set(entries))
    if clash:
        raise InvalidInput(f"upload path {'/'.join((version, *clash[0]))!r} is both a file and a folder")


def _manifest(version: str, uploaded: bytes | None, config: Mapping[str, Any] | None) -> bytes:
    """The modelbay.yaml of `version`: `config` merged over the uploaded one; checked against
    ModelConfig (the layout's name, version and path aside). Raises InvalidInput."""
    where = f"version {version}: {MANIFEST_NAME}"
    fields: dict[str, Any] = {}
    if uploaded is not None:
        try:
            loaded = yaml.safe_load(uploaded.decode()) or {}
        except (UnicodeDecodeError, yaml.YAMLError) as exc:
            raise InvalidInput(f"{where} is not readable YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise InvalidInput(f"{where} must hold a YAML mapping, found {type(loaded).__name__}")
        fields = loaded
    if config is not None:
        if not all(isinstance(key, str) for key in config):
            raise InvalidInput("config must be a mapping of modelbay.yaml fields (text keys)")
        fields = merge_model_settings(fields, config)
    try:
        convert({k: v for k, v in fields.items() if k not in _LAYOUT}, ModelConfig, where)
    except ModelLoadError as exc:
        raise InvalidInput(exc.message) from None
    if config is None and uploaded is not None:
        return uploaded
    try:
        return yaml.safe_dump(fields, sort_keys=False, allow_unicode=True).encode()
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{where}: config holds a value YAML cannot write: {exc}") from None


def _write(repository: int, name: str, versions: dict[str, VersionFiles]) -> list[str]:
    """Stage `versions` in the repository, then rename them into <repository>/<name>/."""
    created = _make_folder(repository, name)
    staging = ""
    renamed: list[str] = []
    model = -1
    try:
        model = _open_folder(repository, name, f"model folder {name!r}")
        _check_free(model, name, versions)
        staging = STAGING_PREFIX + secrets.token_hex(8)
        os.mkdir(staging, 0o700, dir_fd=repository)
        staged = _open_folder(repository, staging, "staging folder")
        try:
            _stage(staged, versions)
            _check_free(model, name, versions)
            for version in versions:
                _rename(staged, model, name, version)
                renamed.append(version)
        finally:
            os.close(staged)
        os.fsync(model)
        if created:
            os.fsync(repository)
        return renamed
    except BaseException as exc:
        _undo(repository, model, name, renamed, created)
        if isinstance(exc, OSError):
            raise ModelLoadError(f"cannot write the upload of model {name!r}: {exc}") from exc
        raise
    finally:
        if model >= 0:
            os.close(model)
        if staging:
            shutil.rmtree(staging, ignore_errors=True, dir_fd=repository)


def _make_folder(repository: int, name: str) -> bool:
    """Create the model folder when it does not exist; True when it was created here."""
    try:
        os.mkdir(name, 0o755, dir_fd=repository)
    except FileExistsError:
        return False
    except OSError as exc:
        raise ModelLoadError(f"cannot create the model folder {name!r}: {exc}") from exc
    return True


def _open_folder(parent: int, name: str, what: str) -> int:
    """A file descriptor of folder `name` in `parent`, never through a symlink. Raises InvalidInput."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise InvalidInput(
                f"{what} is a symlink or not a folder; uploads never follow symlinks"
            ) from None
        raise


def _check_free(model: int, name: str, versions: dict[str, VersionFiles]) -> None:
    """Raise InvalidInput when a version to write exists in the model folder (`model`), or the
    model folder is an unversioned model folder (its model files at its top)."""
    entries = os.listdir(model)
    numbered = {int(entry): entry for entry in entries if entry.isascii() and entry.isdigit()}
    for version in versions:
        found = numbered.get(int(version))
        if found is not None:
            spelled = "" if found == version else f" (as {found!r})"
            raise InvalidInput(
                f"version {version} of {name!r} exists{spelled}; versions are immutable: deploy a new version"
            )
    if not numbered and (MANIFEST_NAME in entries or HANDLER_NAME in entries):
        raise InvalidInput(
            f"model {name!r} is an unversioned model folder (its {MANIFEST_NAME} or {HANDLER_NAME} at "
            "its top); versions cannot be added to it"
        )


def _stage(staged: int, versions: dict[str, VersionFiles]) -> None:
    """Write every version folder into the staging folder `staged`, each file and folder fsynced."""
    for version, entries in versions.items():
        os.mkdir(version, 0o755, dir_fd=staged)
        for parts, data in entries.items():
            _write_file(staged, (version, *parts), data)
    for _, _, _, folder in os.fwalk(dir_fd=staged, follow_symlinks=False):
        os.fsync(folder)


def _write_file(root: int, parts: tuple[str, ...], data: bytes) -> None:
    """Create the file at `parts` under folder `root` (its folders too), write `data`, fsync it."""
    opened: list[int] = []
    folder = root
    try:
        for part in parts[:-1]:
            with contextlib.suppress(FileExistsError):  # made for an earlier file of this folder
                os.mkdir(part, 0o755, dir_fd=folder)
            folder = os.open(part, _DIR_FLAGS, dir_fd=folder)
            opened.append(folder)
        descriptor = os.open(parts[-1], _FILE_FLAGS, 0o644, dir_fd=folder)
        with open(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(descriptor)
    finally:
        for descriptor in opened:
            os.close(descriptor)


def _rename(staged: int, model: int, name: str, version: str) -> None:
    """Move the staged version folder into the model folder: whole, or not at all."""
    try:
        os.rename(version, version, src_dir_fd=staged, dst_dir_fd=model)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):  # the version was written meanwhile
            raise InvalidInput(
                f"version {version} of {name!r} exists; versions are immutable: deploy a new version"
            ) from None
        raise


def _undo(repository: int, model: int, name: str, renamed: list[str], created: bool) -> None:
    """Remove the versions renamed into place and the model folder created for them, if any."""
    for version in renamed:
        shutil.rmtree(version, ignore_errors=True, dir_fd=model)
    if created:
        with contextlib.suppress(OSError):  # something else was written into it meanwhile: leave it
            os.rmdir(name, dir_fd=repository)
