"""modelbay: any trained model to a fast, batched prediction service in one command.

The names below are imported when first used (PEP 562 module `__getattr__`), so `import
modelbay.errors` or `import modelbay.client` loads neither torch nor the server.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from modelbay._version import __version__

if TYPE_CHECKING:
    from modelbay.errors import (
        InferenceFailed,
        InvalidInput,
        ModelbayError,
        ModelLoadError,
        ModelNotFound,
        ModelNotReady,
        Overloaded,
        Unavailable,
    )
    from modelbay.predictor import Predictor
    from modelbay.server import Server, serve
    from modelbay.settings import BatchingConfig, ModelConfig, Settings

# Public name -> the module that defines it.
_HOMES = {
    "BatchingConfig": "modelbay.settings",
    "InferenceFailed": "modelbay.errors",
    "InvalidInput": "modelbay.errors",
    "ModelConfig": "modelbay.settings",
    "ModelLoadError": "modelbay.errors",
    "ModelNotFound": "modelbay.errors",
    "ModelNotReady": "modelbay.errors",
    "ModelbayError": "modelbay.errors",
    "Overloaded": "modelbay.errors",
    "Predictor": "modelbay.predictor",
    "Server": "modelbay.server",
    "Settings": "modelbay.settings",
    "Unavailable": "modelbay.errors",
    "serve": "modelbay.server",
}
__all__ = [
    "BatchingConfig",
    "InferenceFailed",
    "InvalidInput",
    "ModelConfig",
    "ModelLoadError",
    "ModelNotFound",
    "ModelNotReady",
    "ModelbayError",
    "Overloaded",
    "Predictor",
    "Server",
    "Settings",
    "Unavailable",
    "__version__",
    "serve",
]


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use. Raises AttributeError for other names."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'modelbay' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
