"""The model manager: owns every model version's lifecycle while the server runs.

States follow Triton's model repository index: UNAVAILABLE -> LOADING -> READY -> UNLOADING
(and FAILED, with the reason). The dataplane and the transports only look models up in the
registry; this manager puts versions there once they are loaded and warmed, and takes them out
(after their in-flight and queued requests are done) when they are unloaded. Anchors: MLServer's
`registry.py` (a new version is loaded before the old is dropped) and Triton's model control
modes and repository extension.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modelbay.errors import InvalidInput, ModelLoadError, ModelNotFound
from modelbay.registry.registry import ModelRegistry, ServedModel, version_key

if TYPE_CHECKING:
    from modelbay.loading import LoadedModel
    from modelbay.runtime.dataplane import Dataplane

log = logging.getLogger("modelbay.manager")
DRAIN_POLL_S = 0.05


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
    """Loads, reloads and unloads model versions while the server runs (one event loop).

    registry:  what the dataplane serves from; only READY versions are in it.
    dataplane: binds a new version's metrics (`attach`) and counts a version's requests in
               flight (`in_flight_for`), so an old version is stopped only once they are done.
    sources:   where each served version came from, by name and version (Server.sources): what
               `load` builds again.
    build:     builds and sets up one version from its source, blocking (run on a thread, so
               the server keeps answering); raises ModelLoadError.
    drain_timeout_s: longest a replaced or unloaded version may take to finish what it was given;
               what is left then fails with ModelNotReady (503).
    Operations on one model name run one at a time.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        dataplane: Dataplane,
        sources: dict[str, dict[str, LoadedModel]],
        build: Callable[[LoadedModel], ServedModel],
        drain_timeout_s: float,
    ) -> None:
        self._registry = registry
        self._dataplane = dataplane
        self._sources = sources
        self._build = build
        self.drain_timeout_s = drain_timeout_s
        self._status = {
            (m.name, m.version): VersionStatus(m.name, m.version, ModelState.READY) for m in registry
        }
        self._locks: dict[str, asyncio.Lock] = {}

    def index(self, ready_only: bool = False) -> list[VersionStatus]:
        """Every known model version with its state, sorted by name then version."""
        rows = sorted(self._status.values(), key=lambda row: (row.name, version_key(row.version)))
        return [row for row in rows if row.state is ModelState.READY or not ready_only]

    async def load(
        self, name: str, config: dict[str, Any] | None = None, files: dict[str, bytes] | None = None
    ) -> None:
        """Load every version of `name` from its source again (Dataplane.load_model says how)."""
        if config is not None or files:
            raise InvalidInput("loading a model with a config or files is not supported yet")
        sources = self._sources.get(name)
        if not sources:
            known = sorted(self._sources) or "none"
            raise ModelNotFound(f"no model named {name!r} among the server's model sources; known: {known}")
        async with self._lock(name):
            for version in sources:
                self._set(name, version, ModelState.LOADING)
            try:
                built = await asyncio.to_thread(lambda: [self._build(source) for source in sources.values()])
            except Exception as exc:
                reason = exc.message if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {exc}"
                self._failed(name, sources, reason)
                log.error("model %r failed to load: %s", name, reason)
                raise ModelLoadError(f"model {name!r} failed to load: {reason}") from exc
            for model in built:
                model.start()
                self._dataplane.attach(model)
                old = self._registry.replace(model)
                self._set(name, model.version, ModelState.READY)
                if old is not None:
                    await self._retire(old)
            log.info("model %r loaded: versions %s", name, [model.version for model in built])

    async def unload(self, name: str) -> None:
        """Stop serving every version of `name` once its requests are done (Dataplane.unload_model)."""
        async with self._lock(name):
            served = [model for model in self._registry if model.name == name]
            if not served:
                raise ModelNotFound(f"model {name!r} is not loaded")
            for model in served:
                self._set(name, model.version, ModelState.UNLOADING)
                self._registry.remove(model)
            for model in served:
                await self._retire(model)
                self._set(name, model.version, ModelState.UNAVAILABLE, "unloaded")
            log.info("model %r unloaded", name)

    def set_default(self, name: str, version: str | None) -> None:
        """Pin the version answering unversioned calls (Dataplane.set_default_version)."""
        self._registry.set_default(name, version)
        now = self._registry.default_version(name)
        log.info("model %r: unversioned calls now go to version %s", name, now)

    async def _retire(self, model: ServedModel) -> None:
        """Wait (at most drain_timeout_s) for the requests `model` was given, then stop it."""
        deadline = time.monotonic() + self.drain_timeout_s
        while self._dataplane.in_flight_for(model) and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)
        await model.stop()

    def _failed(self, name: str, sources: dict[str, LoadedModel], reason: str) -> None:
        """A load failed: versions still serving stay READY (saying the reload failed), the rest FAILED."""
        for version in sources:
            try:
                self._registry.get(name, version)
            except ModelNotFound:
                self._set(name, version, ModelState.FAILED, reason)
            else:
                self._set(
                    name, version, ModelState.READY, f"reload failed, the previous load serves: {reason}"
                )

    def _set(self, name: str, version: str, state: ModelState, reason: str = "") -> None:
        self._status[(name, version)] = VersionStatus(name, version, state, reason)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())
