"""The served models, by name and model version."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelbay.errors import InvalidInput, ModelNotFound
from modelbay.metrics import ModelMetrics
from modelbay.predictor import Predictor
from modelbay.registry.traffic import Route, named_versions, resolve
from modelbay.runtime.batcher import Batcher
from modelbay.runtime.cache import PredictionCache
from modelbay.runtime.threads import DaemonThreadPool
from modelbay.settings import BatchingConfig, CacheConfig, TrafficConfig, UrlInputConfig


@dataclass(eq=False)
class ServedModel:
    """One model version being served: its predictor, the batcher in front of it, its cache.

    timeout_s: longest a request may take, in seconds (ModelConfig.timeout_s); None: no limit.
    preprocess_threads: size of `hooks`, the model's own pool for its per-request hooks.
    url_inputs: which URLs the simple door may fetch for it (ModelConfig.url_inputs); None: none.
    traffic: the model's traffic policy in this version's settings (ModelConfig.traffic).
    artifact: the model file it was loaded from (LoadedModel.artifact); None for a predict.py
             handler or a module handed over in memory.
    offer_onnx: its ONNX file may be downloaded (ModelConfig.offer_onnx; registry/downloads.py).
    ready:   True between a successful start and stop (OIP "model ready").
    metrics: bound by the Dataplane that serves it.
    """

    name: str
    version: str
    predictor: Predictor
    batching: BatchingConfig
    model_dir: Path | None = None
    cache_config: CacheConfig | None = None
    timeout_s: float | None = 60.0
    preprocess_threads: int = 2
    url_inputs: UrlInputConfig | None = None
    traffic: TrafficConfig | None = None
    artifact: Path | None = None
    offer_onnx: bool = False
    ready: bool = False
    batcher: Batcher = field(init=False)
    cache: PredictionCache | None = field(init=False, default=None)
    metrics: ModelMetrics | None = field(init=False, default=None)
    hooks: DaemonThreadPool | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        default = self._default_output if self.batching.default_output is not None else None
        self.batcher = Batcher(
            self.predictor.predict, self.batching, rows=self.predictor.rows, name=self.name, default=default
        )
        if self.cache_config is not None:
            self.cache = PredictionCache(self.cache_config.max_entries, self.cache_config.ttl_s)

    def start(self) -> None:
        """Start the batcher and the hook threads on the running event loop; the model is then ready."""
        self.batcher.start()
        if self.predictor.preprocess_in_thread:
            self.hooks = DaemonThreadPool(self.preprocess_threads, f"modelbay-{self.name}-hooks")
        self.ready = True

    async def stop(self) -> None:
        """Not ready; stop the batcher (queued requests get ModelNotReady) and the hook threads,
        then close the predictor (`Predictor.close`: its worker process ends)."""
        self.ready = False
        await self.batcher.stop()
        if self.hooks is not None:
            self.hooks.shutdown(wait=True, cancel_futures=True)
            self.hooks = None
        await asyncio.to_thread(self.predictor.close)

    def answering(self) -> bool:
        """OIP model ready: started, not stopping, its predictor healthy (a worker process up), and
        no batch stuck in the model past its `timeout_s` (hung model code answers nothing)."""
        return self.ready and self.predictor.healthy() and not self.stalled()

    def stalled(self) -> bool:
        """True while a batch has been in the model for longer than `timeout_s` (hung model code)."""
        return self.timeout_s is not None and self.batcher.stalled(self.timeout_s)

    def _default_output(self, item: Any) -> Any:
        """The configured default output as `item`'s output (`Predictor.default_output`)."""
        return self.predictor.default_output(self.batching.default_output, self.predictor.rows(item))


def version_key(version: str) -> tuple[int, int | str]:
    """Sort key of a model version: numeric versions by number, above any other (compared as text)."""
    return (1, int(version)) if version.isdigit() else (0, version)


class ModelRegistry:
    """Models by name; each name holds one or more versions, the highest being the default
    unless `set_default` pinned another, and a traffic policy may share the calls that name no
    version among them (`routes`, registry/traffic.py).

    Versions compare numerically when they are digits ("10" > "9"), else as text.
    """

    def __init__(self) -> None:
        self._models: dict[str, dict[str, ServedModel]] = {}
        self._default: dict[str, ServedModel] = {}  # what unversioned calls get (_refresh_default)
        self._pinned: dict[str, str] = {}  # name -> version set by set_default
        self._traffic: dict[str, TrafficConfig] = {}  # name -> policy (from settings or set_traffic)
        self._configured: dict[str, TrafficConfig | None] = {}  # name -> the settings' policy, last seen
        # name -> the policy resolved against the versions served: read once per unversioned call.
        self.routes: dict[str, Route] = {}

    def add(self, model: ServedModel) -> None:
        """Register `model`. Raises ValueError if that name and version are already served."""
        if model.version in self._models.get(model.name, {}):
            raise ValueError(f"model {model.name!r} version {model.version!r} is already served")
        self.replace(model)

    def replace(self, model: ServedModel) -> ServedModel | None:
        """Serve `model` from now on, in place of the one of its name and version if any (returned).

        One dict assignment: a request looks up either the old version or the new, never neither.
        """
        versions = self._models.setdefault(model.name, {})
        old = versions.get(model.version)
        versions[model.version] = model
        if model.traffic != self._configured.get(model.name):  # the settings' policy changed: it wins
            self._configured[model.name] = model.traffic
            self._set_policy(model.name, model.traffic)
        self._refresh_default(model.name)
        return old

    def remove(self, model: ServedModel) -> None:
        """Stop serving `model` (requests already holding it finish); the default is recomputed."""
        versions = self._models.get(model.name, {})
        if versions.get(model.version) is not model:
            return
        del versions[model.version]
        self._refresh_default(model.name)

    def set_default(self, name: str, version: str | None) -> None:
        """Make `version` of `name` answer unversioned calls (one dict assignment: atomic for
        requests); None: the highest version again. A pinned version that is later removed gives
        way to the highest until it is served again.

        Raises ModelNotFound when `name`, or that version of it, is not served.
        """
        if version is None:
            self.versions(name)  # raises for an unknown name
            self._pinned.pop(name, None)
        else:
            self.get(name, version)
            self._pinned[name] = version
        self._refresh_default(name)

    def set_traffic(self, name: str, policy: TrafficConfig | None) -> None:
        """Make `policy` share the unversioned calls to `name` from now on (None: the default
        version answers them all): one dict assignment of a new Route, so a request follows the
        old policy or the new, never a mix. It holds until changed again, by this call or by a
        load bringing a changed `traffic:` in the model's settings.

        Raises ModelNotFound for a name not served, InvalidInput when the policy names a version
        that is not served.
        """
        served = self.versions(name)
        unknown = sorted(named_versions(policy) - set(served)) if policy is not None else []
        if unknown:
            raise InvalidInput(
                f"the traffic policy names version(s) {unknown} of model {name!r}, which are not "
                f"loaded; loaded versions: {served}"
            )
        self._set_policy(name, policy)
        self._refresh_route(name)

    def traffic(self, name: str) -> TrafficConfig | None:
        """The traffic policy of `name`, None when it has none. Raises ModelNotFound."""
        self.versions(name)
        return self._traffic.get(name)

    def _set_policy(self, name: str, policy: TrafficConfig | None) -> None:
        if policy is None:
            self._traffic.pop(name, None)
        else:
            self._traffic[name] = policy

    def _refresh_route(self, name: str) -> None:
        """Resolve the policy of `name` against its versions now served, and swap it in."""
        policy, versions = self._traffic.get(name), self._models.get(name)
        route = resolve(policy, versions) if policy is not None and versions else None
        if route is None:
            self.routes.pop(name, None)
        else:
            self.routes[name] = route

    def default_version(self, name: str) -> str | None:
        """The version answering unversioned calls to `name`, or None when none is served."""
        default = self._default.get(name)
        return default.version if default is not None else None

    def _refresh_default(self, name: str) -> None:
        """The pinned version of `name` (when served), else its highest, answers unversioned calls;
        a name with no version left is dropped."""
        versions = self._models.get(name)
        if versions:
            pinned = versions.get(self._pinned.get(name, ""))
            self._default[name] = pinned or versions[max(versions, key=version_key)]
        else:
            self._models.pop(name, None)
            self._default.pop(name, None)
        self._refresh_route(name)

    def get(self, name: str, version: str | None = None) -> ServedModel:
        """The model `name` at `version` (default: its highest version).

        Raises ModelNotFound naming the models (or versions) that are served.
        """
        if version is None:
            default = self._default.get(name)
            if default is None:
                raise ModelNotFound(
                    f"no model named {name!r}; served models: {sorted(self._models) or 'none'}"
                )
            return default
        versions = self._models.get(name)
        if versions is None:
            raise ModelNotFound(f"no model named {name!r}; served models: {sorted(self._models) or 'none'}")
        try:
            return versions[version]
        except KeyError:
            raise ModelNotFound(
                f"model {name!r} has no version {version!r}; versions: {self.versions(name)}"
            ) from None

    def find(self, name: str, version: str) -> ServedModel | None:
        """The model `name` at `version`, or None when it is not served."""
        return self._models.get(name, {}).get(version)

    def versions(self, name: str) -> list[str]:
        """Versions of `name`, lowest first. Raises ModelNotFound for an unknown name."""
        if name not in self._models:
            raise ModelNotFound(f"no model named {name!r}; served models: {sorted(self._models) or 'none'}")
        return sorted(self._models[name], key=version_key)

    def __iter__(self) -> Iterator[ServedModel]:
        for versions in self._models.values():
            yield from versions.values()

    def __len__(self) -> int:
        return sum(len(versions) for versions in self._models.values())
