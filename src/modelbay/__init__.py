"""modelbay: any trained model to a fast, batched prediction service in one command."""

from __future__ import annotations

__version__ = "0.1.0"

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
    "serve",
]
