"""Where `modelbay export` puts an export by default, and where a server looks for one.

Torch-free: the server's download route (registry/downloads.py) uses it without the exporter.
"""

from __future__ import annotations

from pathlib import Path

SUFFIXES = {"onnx": ".onnx", "pt2": ".pt2"}


def export_path(weights: Path, target: str) -> Path:
    """`NAME.onnx` / `NAME.pt2` beside the model file `weights` (NAME: its name up to the first
    dot, so digits.torchscript.pt gives digits.onnx); `NAME.export.pt2` when that is `weights`."""
    stem = weights.name.split(".")[0]
    path = weights.with_name(stem + SUFFIXES[target])
    return path if path != weights else weights.with_name(f"{stem}.export{SUFFIXES[target]}")
