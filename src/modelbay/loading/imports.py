"""Import user code a model needs: an architecture class, a folder's predict.py."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from modelbay.errors import ModelLoadError


def import_file(path: Path) -> ModuleType:
    """Execute the Python file at `path` as a module named after its absolute path.

    Two model folders may each carry a `predict.py`; the name keeps them apart in sys.modules.
    Raises ModelLoadError with the file's own exception when it fails to import.
    """
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    name = f"modelbay_user_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ModelLoadError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    return module


def import_object(spec: str, base_dir: Path) -> Any:
    """Import `package.module:Name`, or `path/file.py:Name`, or `module:Name` found as a file.

    Files are looked up in `base_dir` (the model's folder, so a model can carry its architecture
    beside its weights), then relative to the working directory. Raises ModelLoadError when the
    module or the name cannot be found.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not attr:
        raise ModelLoadError(f"{spec!r} must look like package.module:Class")
    relative = module_name if module_name.endswith(".py") else module_name.replace(".", "/") + ".py"
    file = next((p for p in (base_dir / relative, Path(relative)) if p.is_file()), None)
    if file is not None:
        module = import_file(file)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ModelLoadError(f"cannot import {module_name} (from {spec!r}): {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ModelLoadError(f"{module_name} has no {attr!r} (from {spec!r})") from None
