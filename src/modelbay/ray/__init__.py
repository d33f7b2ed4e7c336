"""modelbay on a Ray cluster: each model version a Ray Serve deployment, a front that speaks
modelbay's protocols (modelbay.ray.app says how they fit together).

    modelbay serve models/ --ray auto --replicas 2
    serve run modelbay.ray:app repository=models/

`app` and `build_app` import Ray when first used (PEP 562 module `__getattr__`), so the CLI can
read its `--ray` flags (modelbay.ray.cli) without Ray installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelbay.ray.app import app, build_app

__all__ = ["app", "build_app"]


def __getattr__(name: str) -> Any:
    """`app` and `build_app` from modelbay.ray.app, on first use. Raises AttributeError for others."""
    if name not in __all__:
        raise AttributeError(f"module 'modelbay.ray' has no attribute {name!r}")
    value = getattr(importlib.import_module("modelbay.ray.app"), name)
    globals()[name] = value
    return value
