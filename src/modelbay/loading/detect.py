"""Tell an artifact's format from its content (zip entries, magic bytes), not only its suffix."""

from __future__ import annotations

import enum
import json
import struct
import zipfile
from pathlib import Path

from modelbay.errors import ModelLoadError
from modelbay.settings import MANIFEST_NAME

HANDLER_NAME = "predict.py"


class Format(enum.StrEnum):
    """Artifact formats modelbay loads; the value is what `format:` / `--format` accept."""

    TORCHSCRIPT = "torchscript"  # torch.jit.save: zip with code/ and constants.pkl
    EXPORTED = "exported"  # torch.export.save (.pt2): zip with models/*.json and archive_format
    CHECKPOINT = "checkpoint"  # torch.save: a state_dict, a training checkpoint or a pickled module
    SAFETENSORS = "safetensors"  # safetensors: u64 header length, then a JSON header
    ONNX = "onnx"  # ONNX ModelProto (protobuf)
    FOLDER = "folder"  # a model folder: modelbay.yaml and/or predict.py


def detect(path: Path) -> Format:
    """The format of the file or folder at `path`.

    Raises ModelLoadError when the path does not exist or holds nothing modelbay recognises,
    saying what was found.
    """
    if path.is_dir():
        if (path / MANIFEST_NAME).is_file() or (path / HANDLER_NAME).is_file():
            return Format.FOLDER
        raise ModelLoadError(
            f"{path} is a folder without {MANIFEST_NAME} or {HANDLER_NAME}; "
            "a model folder needs one of them (or pass the model file itself)"
        )
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file or folder")
    with path.open("rb") as file:
        head = file.read(16)
    if zipfile.is_zipfile(path):
        return _zip_format(path)
    if _is_safetensors(path, head):
        return Format.SAFETENSORS
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return Format.CHECKPOINT  # torch.save's legacy (non-zip) pickle format
    if path.suffix == ".onnx" or head[:1] == b"\x08":  # ONNX ModelProto opens with ir_version (field 1)
        return Format.ONNX
    raise ModelLoadError(
        f"{path}: unrecognised file (starts with {head[:8]!r}); expected TorchScript, a torch.export .pt2, "
        "a torch.save checkpoint or state_dict, .safetensors, ONNX, or a model folder"
    )


def _zip_format(path: Path) -> Format:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    inner = {name.split("/", 1)[1] for name in names if "/" in name}
    if "archive_format" in inner or any(
        name.startswith("models/") and name.endswith(".json") for name in inner
    ):
        return Format.EXPORTED
    if "constants.pkl" in inner or any(name.startswith("code/") for name in inner):
        return Format.TORCHSCRIPT
    if "data.pkl" in inner:
        return Format.CHECKPOINT
    raise ModelLoadError(
        f"{path} is a zip archive but not one PyTorch writes (entries: {', '.join(names[:5])}...)"
    )


def _is_safetensors(path: Path, head: bytes) -> bool:
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (header_size,) = struct.unpack("<Q", head[:8])
    if header_size > path.stat().st_size - 8:
        return False
    with path.open("rb") as file:
        file.seek(8)
        try:
            return isinstance(json.loads(file.read(header_size)), dict)
        except ValueError:
            return False
