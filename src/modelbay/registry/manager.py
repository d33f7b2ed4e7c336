"""The model manager: owns every model version's lifecycle while the server runs.

States follow Triton's model repository index: UNAVAILABLE -> LOADING -> READY -> UNLOADING
(and FAILED, with the reason). The dataplane and the transports only look models up in the
registry; this manager puts versions there once they are loaded and warmed, and takes them out
(after their in-flight and queued requests are done) when they are unloaded. Anchors: MLServer's
`registry.py` (a new version is loaded before the old is dropped) and Triton's model control
modes and repository extension.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ModelState(enum.StrEnum):
    """A model version's state, as the OIP model repository extension's index names it."""

    UNAVAILABLE = "UNAVAILABLE"
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    FAILED = "FAILED"


@dataclass(frozen=True, slots=True)
class VersionStatus:
    """One row of the repository index: a model version, its state and why (for FAILED / UNAVAILABLE)."""

    name: str
    version: str
    state: ModelState
    reason: str = ""


class ModelManager:
    """Loads, reloads and unloads model versions at runtime (implementation in progress)."""

    def index(self, ready_only: bool = False) -> list[VersionStatus]:
        """Every known model version with its state, sorted by name then version."""
        raise NotImplementedError

    async def load(self, name: str) -> None:
        """See Dataplane.load_model."""
        raise NotImplementedError

    async def unload(self, name: str) -> None:
        """See Dataplane.unload_model."""
        raise NotImplementedError
