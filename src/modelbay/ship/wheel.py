"""modelbay itself as a wheel for the image, built from the source tree this modelbay runs from.

The tree (pyproject.toml, README, licence files, src/) is copied to a temporary folder, so the
checkout gets no build/ or egg-info, and the build backend that pyproject.toml names builds the
wheel there (PEP 517 `build_wheel`, without build isolation: the backend must be installed here,
as setuptools is in a development install). SOURCE_DATE_EPOCH fixes every timestamp in the zip
(reproducible-builds.org), so the same tree gives the same bytes.

A modelbay installed from a wheel has no source tree: pass that wheel (`modelbay build --wheel`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

from modelbay.errors import ShipError

# 1980-01-01T00:00:00Z: the earliest time a zip entry can carry.
SOURCE_DATE_EPOCH = 315532800
_TOP_FILES = ("pyproject.toml", "setup.cfg", "setup.py", "MANIFEST.in", "README.md", "README.rst")
_SKIPPED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".*")


def source_tree() -> Path | None:
    """The source tree of the running modelbay (src layout, pyproject.toml naming modelbay), or
    None when modelbay was installed from a wheel."""
    import modelbay

    root = Path(modelbay.__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        return None
    try:
        name = tomllib.loads(pyproject.read_text())["project"]["name"]
    except (OSError, tomllib.TOMLDecodeError, KeyError):
        return None
    return root if name == "modelbay" else None


def build_wheel(tree: Path, out_dir: Path) -> Path:
    """Build the wheel of the source tree `tree` into `out_dir`; returns its path.

    Raises ShipError when pyproject.toml names no build backend that imports here, or the build
    fails (with the backend's last lines of output).
    """
    pyproject = tomllib.loads((tree / "pyproject.toml").read_text())
    backend = pyproject.get("build-system", {}).get("build-backend", "setuptools.build_meta")
    with tempfile.TemporaryDirectory(prefix="modelbay-wheel-") as work:
        copy = Path(work) / "src-tree"
        copy.mkdir()
        for item in sorted(tree.iterdir()):
            if item.name in _TOP_FILES or item.name.upper().startswith(("LICENSE", "LICENCE", "NOTICE")):
                shutil.copy2(item, copy / item.name)
        shutil.copytree(tree / "src", copy / "src", ignore=_SKIPPED)
        dist = Path(work) / "dist"
        dist.mkdir()
        hook = (
            f"import sys, importlib; backend = importlib.import_module({backend!r}); "
            "print(backend.build_wheel(sys.argv[1]))"
        )
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH)}
        result = subprocess.run(
            [sys.executable, "-c", hook, str(dist)], cwd=copy, env=env, capture_output=True, text=True
        )
        if result.returncode != 0:
            tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
            raise ShipError(
                f"cannot build modelbay's wheel from {tree} with {backend} (install it here, or pass "
                f"a modelbay wheel with --wheel): {tail}"
            )
        built = dist / result.stdout.strip().splitlines()[-1]
        out_dir.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copyfile(built, out_dir / built.name))


def wheel_metadata(wheel: Path) -> tuple[str, str, list[str], list[str]]:
    """(name, version, Requires-Dist lines, Provides-Extra names) of a wheel's METADATA.

    Raises ShipError when `wheel` is not a readable wheel.
    """
    try:
        with zipfile.ZipFile(wheel) as archive:
            entry = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
            metadata = Parser().parsestr(archive.read(entry).decode())
    except (OSError, zipfile.BadZipFile, StopIteration, UnicodeDecodeError) as exc:
        raise ShipError(f"{wheel}: not a readable wheel ({exc or 'no METADATA'})") from None
    return (
        str(metadata["Name"]),
        str(metadata["Version"]),
        list(metadata.get_all("Requires-Dist") or []),
        list(metadata.get_all("Provides-Extra") or []),
    )
