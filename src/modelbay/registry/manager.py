"""The model manager: owns every model version's lifecycle while the server runs.

States follow Triton's model repository index: UNAVAILABLE -> LOADING -> READY -> UNLOADING
(and FAILED, with the reason). The dataplane and the transports only look models up in the
registry; this manager puts versions there once they are loaded and warmed, and takes them out
(after their in-flight and queued requests are done) when they are unloaded. Models come from the
model repository (read again on each load, and on each poll in poll mode) or from where the server
found them at start (a path, or code). Anchors: MLServer's `registry.py` (a new version is loaded
before the old is dropped) and Triton's model control modes (none, poll, explicit) and repository
extension.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import gc
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modelbay.errors import InvalidInput, ModelbayError, ModelLoadError, ModelNotFound, Unavailable
from modelbay.loading import LoadedModel, load_model
from modelbay.registry.load_log import LoadLog
from modelbay.registry.registry import ModelRegistry, ServedModel, version_key
from modelbay.registry.repository import Fingerprint, ModelRepository
from modelbay.registry.traffic import policy_json
from modelbay.registry.upload import write_versions
from modelbay.settings import ModelConfig, TrafficConfig

if TYPE_CHECKING:
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


@dataclass(frozen=True, slots=True)
class ServerModels:
    """What the server loaded at start, handed to the manager (Server.load fills it).

    sources:    models found at start outside the repository (a path, or code), by name and
                version: what `load` builds again for them (a LoadedModel; on a Ray cluster the
                ModelConfig its replicas load, modelbay.ray.front).
    stamps:     repository versions loaded at start, by (name, version): their fingerprints
                (ModelRepository.versions), so a later load reloads only what changed.
    repository: the model repository served live, or None.
    polled:     the repository's files per model name (ModelRepository.fingerprints) as seen just
                before the start's loading: what the first poll compares with, so a change made
                during the start is acted on.
    """

    sources: dict[str, dict[str, LoadedModel | ModelConfig]]
    stamps: dict[tuple[str, str], Fingerprint]
    repository: ModelRepository | None = None
    polled: dict[str, Any] | None = None


class ModelManager:
    """Loads, reloads and unloads model versions while the server runs (one event loop).

    registry:  what the dataplane serves from; only READY versions are in it.
    dataplane: binds a new version's metrics (`attach`) and counts a version's requests in
               flight (`in_flight_for`), so an old version is stopped only once they are done.
    models:    what the server loaded at start and where from (ServerModels).
    drain_timeout_s: longest a replaced or unloaded version may take to finish what it was given;
               what is left then fails with ModelNotReady (503).
    mode:      Triton's model control mode: "explicit", "poll" (`poll` rescans the repository) or
               "none" (load, unload and set-default are refused).
    refused:   why this server's API may not change models (e.g. several worker processes would
               diverge), or None. Polling still runs where it is refused.
    max_upload_bytes: largest sum of a load's uploaded files.
    load_log:  each version's log lines of its last load here (registry/load_log.py).
    Operations on one model name run one at a time.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        dataplane: Dataplane,
        models: ServerModels,
        drain_timeout_s: float,
        mode: str = "explicit",
        refused: str | None = None,
        max_upload_bytes: int = 256 * 1024 * 1024,
        load_log: LoadLog | None = None,
    ) -> None:
        self._registry = registry
        self._dataplane = dataplane
        self._sources = models.sources
        self._stamps = dict(models.stamps)
        self.repository = models.repository
        self.drain_timeout_s = drain_timeout_s
        self.mode = mode
        self.refused = refused
        self.max_upload_bytes = max_upload_bytes
        self._status = {
            (m.name, m.version): VersionStatus(m.name, m.version, ModelState.READY) for m in registry
        }
        self.load_log = load_log or LoadLog()  # the server's, with the loads of its start
        self._configs: dict[str, dict[str, Any]] = {}  # a load's `config` override, kept per name
        self._locks: dict[str, asyncio.Lock] = {}
        self._retired = False  # a version was stopped since the last `_collect`
        self._seen: dict[str, Any] = {}  # poll: each name's files at the last poll
        self._acted: dict[str, Any] = {}  # poll: each name's files when it was last loaded
        self._acted.update(models.polled or {})
        self._seen.update(models.polled or {})

    def index(self, ready_only: bool = False) -> list[VersionStatus]:
        """Every known model version with its state, sorted by name then version: the versions
        loaded or tried, and those on disk in the repository not loaded (UNAVAILABLE)."""
        rows = dict(self._status)
        if self.repository is not None:
            for name in self.repository.names():
                for version in self.repository.fingerprints(name) or {}:
                    if version and (name, version) not in rows:
                        row = VersionStatus(name, version, ModelState.UNAVAILABLE, "not loaded")
                        rows[(name, version)] = row
        ordered = sorted(rows.values(), key=lambda row: (row.name, version_key(row.version)))
        return [row for row in ordered if row.state is ModelState.READY or not ready_only]

    async def load(
        self, name: str, config: Mapping[str, Any] | None = None, files: Mapping[str, bytes] | None = None
    ) -> None:
        """Load model `name` (Dataplane.load_model says how). Raises ModelNotFound, InvalidInput,
        Unavailable (the API is refused here) or ModelLoadError (some version failed to load)."""
        self._check_allowed("load")
        if config is not None and not isinstance(config, Mapping):
            kind = type(config).__name__
            raise InvalidInput(f'"config" must be a JSON object of model settings, got {kind}')
        async with self._lock(name):
            if files:
                await self._write(name, config, files)
                config = None  # written into the new versions' modelbay.yaml
            elif config is not None:
                self._configs[name] = dict(config)
            try:
                await self._sync(name)
            finally:
                self._collect()

    async def unload(self, name: str) -> None:
        """Stop serving every version of `name` once its requests are done (Dataplane.unload_model)."""
        self._check_allowed("unload")
        if self.mode == "poll" and self.repository is not None and self.repository.has(name):
            raise InvalidInput(
                f"model {name!r} is in the polled model repository: remove its folder to unload it"
            )
        async with self._lock(name):
            served = [model for model in self._registry if model.name == name]
            if not served:
                raise ModelNotFound(f"model {name!r} is not loaded")
            await self._unload(served)
            self._collect()
            log.info("model %r unloaded", name)

    def set_default(self, name: str, version: str | None) -> None:
        """Pin the version answering unversioned calls (Dataplane.set_default_version)."""
        self._check_allowed("set the default version of")
        self._registry.set_default(name, version)
        now = self._registry.default_version(name)
        log.info("model %r: unversioned calls now go to version %s", name, now)

    def set_traffic(self, name: str, policy: TrafficConfig | None) -> None:
        """Set the traffic policy of `name` (Dataplane.set_traffic)."""
        self._check_allowed("set the traffic policy of")
        self._registry.set_traffic(name, policy)
        log.info("model %r: traffic policy now %s", name, policy_json(policy))

    async def poll(self, interval_s: float) -> None:
        """Poll mode, run as a task until cancelled: every `interval_s` seconds, load each model of
        the repository whose files changed (new, changed or removed versions) and unload each whose
        folder is gone. A change is acted on once it has stayed the same for one interval, so a
        version still being copied is not loaded half-written."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.poll_once()
            except Exception:  # one bad poll (a folder vanishing mid-scan) must not end polling
                log.exception("poll of the model repository failed; polling goes on")

    async def poll_once(self) -> None:
        """One poll of the repository (`poll`)."""
        if self.repository is None:
            return
        repository = self.repository
        names = await asyncio.to_thread(repository.names)
        for name in sorted(set(names) | set(self._acted)):
            files = await asyncio.to_thread(repository.fingerprints, name)
            stable = files == self._seen.get(name)
            self._seen[name] = files
            if not stable or files == self._acted.get(name):
                continue
            self._acted[name] = files
            try:
                async with self._lock(name):
                    if files is None:
                        served = [model for model in self._registry if model.name == name]
                        await self._unload(served)
                        log.info("model %r unloaded: its folder left the repository", name)
                    else:
                        await self._sync(name)
            except ModelbayError as exc:
                log.error("poll: model %r: %s", name, exc.message)
            finally:
                self._collect()

    async def _sync(self, name: str) -> None:
        """Bring `name`'s served versions in line with its source (the lock is held)."""
        if self.repository is not None and self.repository.has(name):
            await self._sync_repository(name, self.repository)
        elif name in self._sources:
            built = await self._build_all(name, {v: s for v, s in self._sources[name].items()})
            self._raise_failures(name, built)
        else:
            known = sorted({*self._sources, *(self.repository.names() if self.repository else [])})
            raise ModelNotFound(
                f"no model named {name!r} among the server's model sources (its model repository, "
                f"paths and code); known: {known or 'none'}"
            )

    async def _sync_repository(self, name: str, repository: ModelRepository) -> None:
        """Load the versions of `name` that are new or changed on disk, then unload those gone."""
        try:
            on_disk = await asyncio.to_thread(repository.versions, name, self._configs.get(name))
        except ModelLoadError as exc:
            for version in [v for (n, v) in self._status if n == name]:
                self._fail_or_keep(name, version, exc.message)
            raise ModelLoadError(f"model {name!r} cannot be read from the repository: {exc.message}") from exc
        served = {model.version: model for model in self._registry if model.name == name}
        wanted = {
            version: found
            for version, found in on_disk.items()
            if version not in served or self._stamps.get((name, version)) != found.fingerprint
        }
        built = await self._build_all(name, {version: found.config for version, found in wanted.items()})
        for version, outcome in built.items():
            if not isinstance(outcome, str):
                self._stamps[(name, version)] = wanted[version].fingerprint
        gone = [model for version, model in served.items() if version not in on_disk]
        await self._unload(gone)
        for model in gone:
            self._stamps.pop((name, model.version), None)
        self._raise_failures(name, built)

    async def _build_all(self, name: str, sources: dict[str, Any]) -> dict[str, ServedModel | str]:
        """Build, set up and serve each version of `sources` (a ModelConfig or a LoadedModel) in
        turn, replacing the one of its number after it drained; returns each version's model, or
        the reason it failed (its row FAILED, or READY saying the previous load still serves)."""
        outcomes: dict[str, ServedModel | str] = {}
        for version, source in sorted(sources.items(), key=lambda item: version_key(item[0])):
            self._set(name, version, ModelState.LOADING)
            with self.load_log.capture(name, version):
                outcomes[version] = outcome = await self._build_one(name, version, source)
            if isinstance(outcome, ServedModel):
                old = self._registry.replace(outcome)
                self._set(name, version, ModelState.READY)
                if old is not None:
                    await self._retire(old)
        return outcomes

    async def _build_one(self, name: str, version: str, source: Any) -> ServedModel | str:
        """One version of `_build_all` built, set up and started; or the reason it failed (its row set)."""
        log.info("loading model %r version %s", name, version)
        started = time.monotonic()
        try:
            model = await self._build(source)
        except Exception as exc:
            reason = exc.message if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {exc}"
            log.error("model %r version %s failed to load: %s", name, version, reason)
            self._fail_or_keep(name, version, reason)
            return reason
        model.start()
        self._dataplane.attach(model)
        log.info("model %r version %s ready in %.1f s", name, version, time.monotonic() - started)
        return model

    async def _build(self, source: Any) -> ServedModel:
        """One version built and set up from `source` (build_version, in a thread), not started.
        Raises ModelLoadError, or whatever the model's own code raised."""
        return await asyncio.to_thread(build_version, source)

    async def _write(self, name: str, config: Mapping[str, Any] | None, files: Mapping[str, bytes]) -> None:
        if self.repository is None:
            raise InvalidInput(
                "this server has no model repository to write an uploaded model into; start it with "
                "`modelbay serve --model-repository FOLDER`"
            )
        folder = self.repository.model_folder(name)
        write = functools.partial(write_versions, max_bytes=self.max_upload_bytes)
        written = await asyncio.to_thread(write, folder, files, config)
        log.info("model %r: wrote uploaded versions %s into %s", name, written, folder)

    async def _unload(self, served: list[ServedModel]) -> None:
        for model in served:
            self._set(model.name, model.version, ModelState.UNLOADING)
            self._registry.remove(model)
        for model in served:
            await self._retire(model)
            if model.metrics is not None and self._registry.find(model.name, model.version) is None:
                model.metrics.forget()
            self._set(model.name, model.version, ModelState.UNAVAILABLE, "unloaded")

    async def _retire(self, model: ServedModel) -> None:
        """Wait (at most drain_timeout_s) for the requests `model` was given, then stop it."""
        deadline = time.monotonic() + self.drain_timeout_s
        while self._dataplane.in_flight_for(model) and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)
        await model.stop()
        self._retired = True

    def _collect(self) -> None:
        """Free the versions stopped since the last call. A stopped version's objects hold reference
        cycles (its batcher's task, bound methods), so only the cyclic GC frees its weights: collect
        now, once the operation's own references are gone, rather than at some later full collection
        (without it benchmarks/swap.py's server grew ~45 MiB per swap). A few ms, once per swap."""
        if self._retired:
            self._retired = False
            gc.collect()

    def _fail_or_keep(self, name: str, version: str, reason: str) -> None:
        """A version failed to load: READY saying so when a previous load still serves, else FAILED."""
        if self._registry.find(name, version) is None:
            self._set(name, version, ModelState.FAILED, reason)
        else:
            self._set(name, version, ModelState.READY, f"reload failed, the previous load serves: {reason}")

    def _raise_failures(self, name: str, outcomes: dict[str, ServedModel | str]) -> None:
        failed = {version: reason for version, reason in outcomes.items() if isinstance(reason, str)}
        if failed:
            said = "; ".join(f"version {version}: {reason}" for version, reason in failed.items())
            raise ModelLoadError(f"model {name!r} failed to load: {said}")
        if outcomes:
            log.info("model %r loaded: versions %s", name, sorted(outcomes, key=version_key))

    def _check_allowed(self, action: str) -> None:
        if self.refused is not None:
            raise Unavailable(self.refused)
        if self.mode == "none":
            raise InvalidInput(
                f"cannot {action} a model: the server's model control mode is none (start it with "
                "--model-control-mode explicit or poll to manage models while it serves)"
            )

    def _set(self, name: str, version: str, state: ModelState, reason: str = "") -> None:
        self._status[(name, version)] = VersionStatus(name, version, state, reason)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())


def build_version(source: Any) -> ServedModel:
    """A served model version, set up, from a ModelConfig (read from disk now) or a LoadedModel
    found at start (its files read again when it came from disk, its predictor set up again when
    it was added in code). Blocking. Raises ModelLoadError."""
    if isinstance(source, LoadedModel):
        loaded = load_model(source.config) if source.config.path is not None else source
    else:
        loaded = load_model(source)
    where = loaded.config.path or "code"
    log.info(
        "model %r version %s: read %s (%s)",
        loaded.name,
        loaded.config.version,
        where,
        loaded.predictor.platform,
    )
    return build_served_model(loaded)


def build_served_model(loaded: LoadedModel) -> ServedModel:
    """Set up a built predictor (`Predictor.setup`: weights, warm-up run) and wrap it for serving.

    Blocking: called before the server listens, or on a thread by the model manager.
    Raises ModelLoadError naming the model when setup fails or the default output does not fit.
    """
    config = loaded.config
    started = time.monotonic()
    try:
        loaded.predictor.setup(loaded.model_dir)
        if config.batching.default_output is not None:
            loaded.predictor.default_output(config.batching.default_output, 1)
    except ModelLoadError as exc:
        raise ModelLoadError(f"model {loaded.name!r}: {exc.message}") from exc
    except Exception as exc:
        raise ModelLoadError(f"model {loaded.name!r}: setup failed: {type(exc).__name__}: {exc}") from exc
    took_s = time.monotonic() - started
    log.info("model %r version %s: set up and warmed up in %.3f s", loaded.name, config.version, took_s)
    return ServedModel(
        loaded.name,
        config.version,
        loaded.predictor,
        config.batching,
        loaded.model_dir,
        config.cache,
        timeout_s=config.timeout_s,
        preprocess_threads=config.preprocess_threads,
        url_inputs=config.url_inputs,
        traffic=config.traffic,
        artifact=loaded.artifact,
        offer_onnx=config.offer_onnx,
    )
