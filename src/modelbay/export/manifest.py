"""Record what `modelbay export` (or `modelbay bench`) chose in a model folder's modelbay.yaml,
keeping the rest of it.

The fields are written at the end of the file in a block between two marker comments naming the
command (`by`), with the
measured figures as comments above them; an earlier block, and top-level lines setting the same
fields elsewhere, are removed first. Everything else, the user's comments included, stays as it
was, which a YAML load-and-dump would not keep. The result is parsed and converted to a
ModelConfig before it replaces the file (atomically), so a bad edit never lands.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from modelbay.errors import ModelLoadError
from modelbay.settings import MANIFEST_NAME, ModelConfig, convert, model_entry, read_yaml

BEGIN = "# >>> {by}"
END = "# <<< {by}"


def record(
    folder: Path, fields: Mapping[str, Any], comments: Sequence[str] = (), by: str = "modelbay export"
) -> Path:
    """Set `fields` (ModelConfig fields) in `folder`'s modelbay.yaml, made if missing; `comments`
    are written above them as `# ` lines, in the block of command `by`. Returns the manifest's path.

    Raises ModelLoadError when the existing file is not a YAML mapping, or when the result would
    not be a valid model configuration (nothing is written then).
    """
    path = folder / MANIFEST_NAME
    old = path.read_text() if path.is_file() else ""
    if old:
        read_yaml(path)  # refuses a manifest that is not a YAML mapping before editing it
    kept = without(old.splitlines(), set(fields), by)
    dumped = yaml.safe_dump(dict(fields), sort_keys=False, default_flow_style=False, width=1000)
    begin, end = BEGIN.format(by=by), END.format(by=by)
    block = [begin, *(f"# {line}".rstrip() for line in comments), *dumped.splitlines(), end]
    text = "\n".join([*kept, *([""] if kept else []), *block]) + "\n"
    try:
        convert(model_entry(yaml.safe_load(text)), ModelConfig, str(path))
    except yaml.YAMLError as exc:
        raise ModelLoadError(
            f"{path}: the edit would not be valid YAML ({exc}); the file was not changed"
        ) from exc
    handle, staging = tempfile.mkstemp(prefix=f".{MANIFEST_NAME}.", dir=folder)
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return path


def without(lines: Sequence[str], keys: set[str], by: str = "modelbay export") -> list[str]:
    """`lines` of a YAML mapping without an earlier block of command `by`, and without the
    top-level entries of `keys` (a `key:` line at column 0 and its indented or `-` continuation
    lines; also inside another command's block)."""
    out: list[str] = []
    in_block = skipping = False
    begin, end = BEGIN.format(by=by), END.format(by=by)
    for line in lines:
        if line.startswith(begin):
            in_block = True
        elif in_block:
            in_block = not line.startswith(end)
        elif skipping and line[:1] in (" ", "\t", "-"):
            continue
        elif line[:1] not in ("", " ", "\t", "#", "-") and line.partition(":")[0].strip() in keys:
            skipping = True
        else:
            skipping = False
            out.append(line)
    while out and not out[-1].strip():
        out.pop()
    return out


def relative(path: Path, folder: Path) -> str:
    """`path` as modelbay.yaml names a file: relative to `folder` (with ../ if it must)."""
    return os.path.relpath(path.resolve(), folder.resolve())


def has_field(folder: Path, key: str) -> bool:
    """True when `folder`'s modelbay.yaml sets `key`. Raises ModelLoadError for an unreadable one."""
    path = folder / MANIFEST_NAME
    return path.is_file() and key in read_yaml(path)
