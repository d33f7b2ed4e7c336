"""Fresh virtual environments holding this checkout, built by uv (the torch-free install's test and
benchmarks/torch_free.py)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from uv import find_uv_bin

ROOT = Path(__file__).resolve().parents[1]


def fresh_environment(
    folder: Path, extras: str, *, uv_args: Sequence[str] = (), source: Path = ROOT, timeout_s: float = 600.0
) -> Path:
    """`uv venv folder` (this interpreter's Python), then `uv pip install "SOURCE[extras]"` into it
    with this checkout's constraints.txt; returns its bin/ folder.

    source: the modelbay source tree to install (default: this checkout).
    extras: e.g. "onnx" or "onnx,torch". uv_args: more `uv pip install` options (`--find-links DIR`
    for a local torch wheel). uv's cache (UV_CACHE_DIR, else ~/.cache/uv) keeps every wheel it
    downloaded or built, so a second environment takes seconds; a cold one downloads from the index.
    Raises RuntimeError with uv's output when a step fails or runs past `timeout_s`.
    """
    python = folder / "bin" / "python"
    uv = find_uv_bin()
    install = ["pip", "install", "-q", "--python", str(python), "--constraint", str(ROOT / "constraints.txt")]
    steps = [
        [uv, "venv", "--quiet", "--python", sys.executable, str(folder)],
        [uv, *install, *uv_args, f"{source}[{extras}]"],
    ]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"{' '.join(step)} ran past {timeout_s} s") from exc
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(step)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return python.parent
