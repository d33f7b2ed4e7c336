"""modelbay: any trained model to a fast, batched prediction service in one command."""

from __future__ import annotations

__version__ = "0.1.0"

from modelbay.errors import (  # noqa: E402
    InferenceFailed,
    InvalidInput,
    ModelbayError,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
)
from modelbay.predictor import Predictor  # noqa: E402
from modelbay.server import Server, serve  # noqa: E402
from modelbay.settings import BatchingConfig, ModelConfig, Settings  # noqa: E402

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
    "serve",
]
