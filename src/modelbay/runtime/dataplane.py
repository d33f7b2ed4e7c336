"""The dataplane: every transport's requests end here, as plain Python calls.

It knows no HTTP and no gRPC (MLServer's `handlers/dataplane.py` is the model): doors decode their
wire format into these calls and map the `modelbay.errors` they raise to status codes.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from modelbay._version import __version__
from modelbay.errors import (
    DeadlineExceeded,
    InvalidInput,
    ModelbayError,
    ModelNotReady,
    Unavailable,
)
from modelbay.metrics import Metrics
from modelbay.registry.manager import ModelManager, VersionStatus
from modelbay.registry.registry import ModelRegistry, ServedModel
from modelbay.runtime import steps
from modelbay.runtime.cache import request_key
from modelbay.runtime.context import CURRENT, ClientGone, RequestContext
from modelbay.runtime.fetch import UrlFetcher
from modelbay.runtime.shadow import Shadows
from modelbay.settings import TrafficConfig
from modelbay.types import InferenceRequest, InferenceResponse

if TYPE_CHECKING:
    from modelbay.runtime.tracing import Tracing

SERVER_NAME = "modelbay"
# How often the requests in flight are checked against their deadlines (so a deadline is kept to
# within this many seconds), and how long a request may wait before its door watches its client.
SWEEP_S = 0.05
WATCH_AFTER_S = 0.5
# OIP server metadata `extensions`: the optional parts of the protocol this server has
# (Triton's names: the binary tensor data extension of REST).
EXTENSIONS = ["binary_tensor_data", "model_repository"]


@dataclass(slots=True)
class PredictResult:
    """Answer of the simple door: the model and version that answered, one prediction per example.

    defaults: indices of the predictions that are the model's default output, given because the
              model would have answered them after their SLO (`batching.default_output`).
    """

    model: str
    version: str
    predictions: list[Any]
    defaults: list[int]


class Dataplane:
    """Health, metadata and inference over the models of a registry, with their metrics and caches.

    random: the draw of traffic splits and shadows, a uniform float in [0, 1) (a seeded
            `random.Random(seed).random` makes them repeatable).
    tracing: the server's traces (`--tracing`, runtime/tracing.py): the doors begin each request's
            span with it, every model's batcher gets its batch spans; None: no traces.
    """

    def __init__(
        self, registry: ModelRegistry, metrics: Metrics | None = None, tracing: Tracing | None = None
    ) -> None:
        self.registry = registry
        self.metrics = metrics or Metrics()
        self.tracing = tracing
        self._in_flight: dict[RequestContext, ServedModel] = {}
        self._busy = asyncio.Event()  # set when a request arrives while none is in flight
        self._sweeper: asyncio.Task[None] | None = None
        self.manager: ModelManager | None = None  # set by the server (modelbay.registry.manager)
        self.fetcher = UrlFetcher()  # the simple door's inputs by URL (runtime/fetch.py)
        self.random: Callable[[], float] = random.random
        self.shadows = Shadows()
        for model in registry:
            self.attach(model)

    def attach(self, model: ServedModel) -> None:
        """Bind `model` to this dataplane's metrics (a model loaded at runtime gets them here too)."""
        model.metrics = self.metrics.for_model(model.name, model.version, _depth(model))
        model.batcher.observer = model.metrics
        if self.tracing is not None:
            model.batcher.tracer = self.tracing.for_model(model.name, model.version)

    def in_flight_for(self, model: ServedModel) -> int:
        """Requests being served now by `model` (in its hooks, queued, or in the model)."""
        return sum(1 for served in self._in_flight.values() if served is model)

    async def start(self) -> None:
        """Start every model's batcher and hook threads on the running loop; the models are ready."""
        for model in self.registry:
            model.start()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="modelbay-deadlines")

    async def stop(self) -> None:
        """Mark models not ready, then stop them (queued requests get ModelNotReady)."""
        for model in self.registry:
            model.ready = False
        await self.shadows.stop()
        await asyncio.gather(*(model.stop() for model in self.registry))
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        self.metrics.close()

    async def _sweep(self) -> None:
        """End the requests in flight whose deadline has passed, and hand the door those that
        have waited WATCH_AFTER_S to watch; every SWEEP_S seconds while any is in flight."""
        while True:
            if not self._in_flight:
                self._busy.clear()
                await self._busy.wait()
            await asyncio.sleep(SWEEP_S)
            now = time.monotonic()
            for context, model in list(self._in_flight.items()):
                if context.deadline is not None and now >= context.deadline:
                    _expire(context, model)
                elif context.watch is not None and now - context.started >= WATCH_AFTER_S:
                    watch, context.watch = context.watch, None
                    context.watcher = asyncio.get_running_loop().create_task(_watch_client(context, watch))

    @property
    def in_flight(self) -> int:
        """Inference requests being served now (in hooks, queued or in the model)."""
        return len(self._in_flight)

    def end_in_flight(self, reason: ModelbayError) -> int:
        """End every request in flight with `reason` (the drain deadline passed); returns how many."""
        ended = list(self._in_flight)
        for context in ended:
            context.end(reason)
        return len(ended)

    def repository_index(self, ready_only: bool = False) -> list[VersionStatus]:
        """The OIP model repository index: every model version the server knows, with its state.

        ready_only: only the READY ones. Raises Unavailable when the server has no model manager.
        """
        return self._manager().index(ready_only)

    async def load_model(
        self, name: str, config: dict[str, Any] | None = None, files: dict[str, bytes] | None = None
    ) -> None:
        """Load (or reload) model `name`: its versions from the model repository (read again: new
        and changed versions are loaded, removed ones unloaded) or from where the server found it
        (its path, or code); they serve once loaded and warmed, replacing those of the same numbers
        after they finish what they were given.

        config: modelbay.yaml fields (ModelConfig) applied over the model's own settings (the OIP
                repository extension's `config` parameter); kept for the model's later loads.
        files:  a model sent with the request (`file:<path>` parameters), by path relative to the
                model folder, e.g. {"3/model.onnx": b"..."}: written into the model repository as
                new version folders (never a half-written one), then loaded.
        Raises ModelNotFound when no source has a model of that name, InvalidInput for an upload
        that cannot be written (a path escaping the model folder, an existing version), ModelLoadError
        (its index row FAILED, with the reason) when it cannot be loaded; what served before keeps
        serving.
        """
        await self._manager().load(name, config, files)

    async def unload_model(self, name: str) -> None:
        """Stop serving every version of `name` once its in-flight and queued requests are done.

        Raises ModelNotFound for a model that is not loaded.
        """
        await self._manager().unload(name)

    def set_default_version(self, name: str, version: str | None) -> None:
        """Make `version` of model `name` answer the calls that name no version (roll back, roll
        forward), atomically; None: the highest loaded version again.

        Raises ModelNotFound when `name` is not loaded or has no such version loaded.
        """
        self._manager().set_default(name, version)

    def set_traffic(self, name: str, policy: TrafficConfig | None) -> None:
        """Make `policy` share the unversioned calls to model `name` among its versions from now
        on, atomically; None: the default version answers them (ModelRegistry.set_traffic).

        Raises ModelNotFound for a model not loaded, InvalidInput when the policy names a version
        not loaded, and what `load_model` raises when the API is refused.
        """
        self._manager().set_traffic(name, policy)

    def _manager(self) -> ModelManager:
        if self.manager is None:
            raise Unavailable("this server has no model manager: the model repository API is off")
        return self.manager

    def live(self) -> bool:
        """OIP server live: the process can answer. Always True while it can answer at all."""
        return True

    def ready(self) -> bool:
        """OIP server ready: every served model is ready (see `model_ready`)."""
        return all(model.answering() for model in self.registry)

    def server_metadata(self) -> dict[str, Any]:
        """OIP `$metadata_server_response`: name, version, extensions."""
        return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}

    def model_ready(self, name: str, version: str | None = None) -> bool:
        """OIP model ready (ServedModel.answering): started, not stopping, its worker process up,
        and no batch stuck in the model past its `timeout_s`. Raises ModelNotFound for an unknown
        model or version.
        """
        return self.registry.get(name, version).answering()

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        """OIP `$metadata_model_response`: name, versions, platform, inputs, outputs.

        Raises ModelNotFound for an unknown model or version.
        """
        model = self.registry.get(name, version)
        predictor = model.predictor
        return {
            "name": model.name,
            "versions": self.registry.versions(name),
            "platform": predictor.platform,
            "inputs": [spec.metadata() for spec in predictor.inputs],
            "outputs": [spec.metadata() for spec in predictor.outputs],
        }

    async def infer(
        self, request: InferenceRequest, context: RequestContext | None = None
    ) -> InferenceResponse:
        """Run one OIP inference request through the model's cache and batcher.

        The response's parameters say {"default_output": true} when the model's default output
        answered it (it would have missed the SLO; `batching.default_output`).
        context: the door's RequestContext (its deadline, its means to end the request); None
        makes a fresh one. The request is ended at the earlier of its deadline and the model's
        `timeout_s` (DeadlineExceeded), when its client goes (ClientGone), or at the drain deadline.

        Raises ModelNotFound, ModelNotReady, InvalidInput (inputs that do not match the model, an
        unknown requested output), Overloaded, DeadlineExceeded, InferenceFailed (the model failed),
        or the reason the request was ended.
        """
        inputs, wanted = request.inputs, request.outputs

        def key() -> bytes:
            return request_key(["infer", *(part for name in sorted(inputs) for part in (name, inputs[name]))])

        def pick(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            if wanted is None:
                return outputs
            unknown = [name for name in wanted if name not in outputs]
            if unknown:
                raise InvalidInput(f"unknown requested output(s) {unknown}; model has {sorted(outputs)}")
            return {name: outputs[name] for name in wanted}

        def compute(model: ServedModel) -> Awaitable[tuple[dict[str, np.ndarray], bool]]:
            return steps.infer(model, inputs)

        model, outputs, defaults = await self._serve(
            "infer", request.model_name, request.model_version, context, compute, key, pick
        )
        parameters = {"default_output": True} if defaults else None
        return InferenceResponse(model.name, model.version, outputs, request.id, parameters)

    async def predict(
        self, name: str, version: str | None, examples: list[Any], context: RequestContext | None = None
    ) -> PredictResult:
        """The simple door: each example preprocessed, batched, postprocessed; one prediction each.

        examples: raw bytes or JSON values, one per prediction wanted; at most the model's
        `max_queue_size` (more: PayloadTooLarge, 413), queued together or not at all. A
        `UrlInput` is fetched (`self.fetcher`, under the model's `url_inputs`) and its bytes
        preprocessed in its place, within the request's deadline; a shadow call of the request
        (traffic.shadow) gets the bytes fetched for it, so no URL is fetched twice.
        Raises what `infer` raises, and what UrlFetcher.resolve raises.
        """
        fetched: list[list[Any]] = []  # the examples with their URLs fetched, once they are

        def compute(model: ServedModel) -> Awaitable[tuple[list[Any], list[int]]]:
            if not examples:
                raise InvalidInput("the request has no examples; send at least one")
            model.batcher.check_count(len(examples))  # before preprocessing them all
            return steps.predict(model, fetched[0] if fetched else examples, self.fetcher, fetched.append)

        model, predictions, defaults = await self._serve(
            "predict", name, version, context, compute, lambda: request_key(["predict", *examples])
        )
        return PredictResult(model.name, model.version, predictions, defaults)

    async def _serve(
        self,
        door: str,
        name: str,
        version: str | None,
        context: RequestContext | None,
        compute: Callable[[ServedModel], Awaitable[tuple[Any, Any]]],
        key: Callable[[], bytes],
        finish: Callable[[Any], Any] | None = None,
    ) -> tuple[ServedModel, Any, Any]:
        """The one request pipeline of both doors: the model looked up, the answer taken from its
        cache or computed (`compute`: the answer and its default outputs, falsy when none) within
        the request's deadline (`_within`), `finish`ed, counted in the model's metrics.

        Returns (the model that answered, the answer, its default outputs). Raises what `infer` raises.
        """
        started = time.perf_counter()
        model = None
        route = self.registry.routes.get(name) if version is None else None  # a traffic policy
        try:
            model = self._ready_model(name, version if route is None else route.pick(context, self.random))
            if model.cache is None:
                raw, defaults = await self._within(context, model, compute(model))
            else:
                served = model
                cached = _cached(served, key(), lambda: compute(served), keep=lambda answer: not answer[1])
                raw, defaults = await self._within(context, model, cached)
            answer = raw if finish is None else finish(raw)
        except Exception as exc:
            self._record(model, door, started, exc)
            raise
        self._record(model, door, started, None)
        if defaults and model.metrics is not None:
            model.metrics.default_outputs.inc(1 if defaults is True else len(defaults))
        if route is not None and (shadow := route.shadows(model, self.random)) is not None:
            self.shadows.send(shadow, compute, None if defaults else raw, route.tolerance)
        return model, answer, defaults

    async def _within(self, context: RequestContext | None, model: ServedModel, work: Awaitable[Any]) -> Any:
        """Await `work` as one request: ended at its deadline, by its client, or by the drain.

        The deadline is the earlier of the context's and the model's `timeout_s` after the request
        began; `_sweep` enforces it. The request's task is cancelled when it is ended, so whatever
        it awaits (a hook thread's answer, its place in the batcher's queue) is cancelled with it;
        the reason is raised here.
        """
        context = context or RequestContext()
        task = context.task = asyncio.current_task()
        context.started = time.monotonic()
        if model.timeout_s is not None:
            limit = context.started + model.timeout_s
            context.deadline = limit if context.deadline is None else min(context.deadline, limit)
        if not self._in_flight:
            self._busy.set()
        self._in_flight[context] = model
        current = CURRENT.set(context)  # what the batcher records the batch size and spans on
        try:
            return await work
        except asyncio.CancelledError:
            if context.reason is None or task is None:
                raise
            task.uncancel()
            raise context.reason from None
        finally:
            CURRENT.reset(current)
            context.task = None
            del self._in_flight[context]
            if context.watcher is not None:
                context.watcher.cancel()

    def _ready_model(self, name: str, version: str | None) -> ServedModel:
        model = self.registry.get(name, version)
        if not model.ready:
            raise ModelNotReady(f"model {name!r} version {model.version!r} is not ready")
        return model

    def _record(
        self, model: ServedModel | None, door: str, started: float, error: BaseException | None
    ) -> None:
        if model is not None and model.metrics is not None:
            model.metrics.on_request(door, time.perf_counter() - started, error)
        elif error is not None:  # an unknown model: never its name as a label value
            self.metrics.requests.labels("", "", door, type(error).__name__).inc()


async def _watch_client(context: RequestContext, gone: Callable[[], Awaitable[bool]]) -> None:
    if await gone():
        context.end(ClientGone())


def _expire(context: RequestContext, model: ServedModel) -> None:
    context.end(
        DeadlineExceeded(
            f"model {model.name!r} did not answer within the request's deadline (its timeout_s is "
            f"{model.timeout_s} s); a request still queued was dropped without running"
        )
    )


def _depth(model: ServedModel) -> Callable[[], float]:
    return lambda: float(model.batcher.queue_depth)


async def _cached(
    model: ServedModel, key: bytes, compute: Callable[[], Awaitable[Any]], keep: Callable[[Any], bool]
) -> Any:
    assert model.cache is not None and model.metrics is not None
    value, hit = await model.cache.get_or_compute(key, compute, keep)
    (model.metrics.cache_hit if hit else model.metrics.cache_miss).inc()
    return value
