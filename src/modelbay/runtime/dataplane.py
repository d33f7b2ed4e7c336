"""The dataplane: every transport's requests end here, as plain Python calls.

It knows no HTTP and no gRPC (MLServer's `handlers/dataplane.py` is the model): doors decode their
wire format into these calls and map the `modelbay.errors` they raise to status codes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from modelbay import __version__
from modelbay.errors import InvalidInput, ModelNotReady
from modelbay.predictor import Predictor
from modelbay.registry.registry import ModelRegistry, ServedModel
from modelbay.runtime.batcher import model_failure
from modelbay.types import InferenceRequest, InferenceResponse

SERVER_NAME = "modelbay"


@dataclass(slots=True)
class PredictResult:
    """Answer of the simple door: the model and version that answered, one prediction per example."""

    model: str
    version: str
    predictions: list[Any]


class Dataplane:
    """Health, metadata and inference over the models of a registry."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    async def start(self) -> None:
        """Start every model's batcher on the running loop and mark the models ready."""
        for model in self.registry:
            model.batcher.start()
            model.ready = True

    async def stop(self) -> None:
        """Mark models not ready, then stop their batchers (queued requests get ModelNotReady)."""
        for model in self.registry:
            model.ready = False
        await asyncio.gather(*(model.batcher.stop() for model in self.registry))

    def live(self) -> bool:
        """OIP server live: the process can answer. Always True while it can answer at all."""
        return True

    def ready(self) -> bool:
        """OIP server ready: every served model is ready."""
        return all(model.ready for model in self.registry)

    def server_metadata(self) -> dict[str, Any]:
        """OIP `$metadata_server_response`: name, version, extensions."""
        return {"name": SERVER_NAME, "version": __version__, "extensions": []}

    def model_ready(self, name: str, version: str | None = None) -> bool:
        """OIP model ready. Raises ModelNotFound for an unknown model or version."""
        return self.registry.get(name, version).ready

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

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        """Run one OIP inference request through the model's batcher.

        Raises ModelNotFound, ModelNotReady, InvalidInput (inputs that do not match the model, an
        unknown requested output), Overloaded, or InferenceFailed (the model failed).
        """
        model = self._ready_model(request.model_name, request.model_version)
        predictor = model.predictor
        item = await _call(model, predictor, predictor.decode_tensors, request.inputs)
        output = await model.batcher.submit(item)
        outputs = await _call(model, predictor, predictor.encode_tensors, output)
        if request.outputs is not None:
            unknown = [name for name in request.outputs if name not in outputs]
            if unknown:
                raise InvalidInput(f"unknown requested output(s) {unknown}; model has {sorted(outputs)}")
            outputs = {name: outputs[name] for name in request.outputs}
        return InferenceResponse(model.name, model.version, outputs, request.id)

    async def predict(self, name: str, version: str | None, examples: list[Any]) -> PredictResult:
        """The simple door: each example preprocessed, batched, postprocessed; one prediction each.

        examples: raw bytes or JSON values, one per prediction wanted.
        Raises what `infer` raises.
        """
        model = self._ready_model(name, version)
        predictor = model.predictor
        items = [await _call(model, predictor, predictor.preprocess, example) for example in examples]
        if len(items) == 1:  # the common case: no gather, no extra Task per request
            outputs = [await model.batcher.submit(items[0])]
        else:
            outputs = await asyncio.gather(*(model.batcher.submit(item) for item in items))
        predictions = [await _call(model, predictor, predictor.postprocess, output) for output in outputs]
        return PredictResult(model.name, model.version, predictions)

    def _ready_model(self, name: str, version: str | None) -> ServedModel:
        model = self.registry.get(name, version)
        if not model.ready:
            raise ModelNotReady(f"model {name!r} version {model.version!r} is not ready")
        return model


async def _call(model: ServedModel, predictor: Predictor, hook: Callable[[Any], Any], arg: Any) -> Any:
    """Run a per-request predictor hook, off the event loop when the predictor asks for it.

    A ModelbayError from the hook passes through; anything else is the model's failure (500).
    """
    try:
        if predictor.preprocess_in_thread:
            return await asyncio.to_thread(hook, arg)
        return hook(arg)
    except Exception as exc:
        failure = model_failure(model.name, exc)
        if failure is exc:
            raise
        raise failure from exc
