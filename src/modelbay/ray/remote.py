"""The front's stand-ins for model versions that run as Serve deployments (modelbay.ray.replica).

A `RemoteModel` sits in the front's model registry where a loaded ServedModel would, so the
front's dataplane treats it like any model: routing by name and version, traffic policies,
deadlines, the cache, request metrics. Its predictor only carries the metadata (its hooks are the
identity: the real ones run in the replica), and its batcher does not batch: it hands each request,
whole, to one replica of the version's deployment through its DeploymentHandle, where the model's
own batcher merges it with the others that replica holds.

The cut follows runtime/steps.py: the OIP door's decoded input tensors go as they are
(`ModelReplica.infer`), the simple door's examples as a list, their URLs already fetched
(`ModelReplica.predict`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from modelbay.errors import (
    InferenceFailed,
    ModelbayError,
    ModelNotReady,
    Overloaded,
    WorkerProcessDied,
)
from modelbay.predictor import Predictor
from modelbay.registry.registry import ServedModel
from modelbay.runtime.batcher import Batcher, DefaultOutput
from modelbay.settings import BatchingConfig, ModelConfig


@dataclass(frozen=True, slots=True)
class _Tensors:
    """An OIP request's input tensors, marked for `ModelReplica.infer`."""

    tensors: dict[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class _Example:
    """One simple-door example, marked for `ModelReplica.predict`."""

    value: Any


class RemotePredictor(Predictor):
    """A model version's metadata at the front; its hooks run in the replicas.

    description: `ModelReplica.describe()` of one replica (platform, inputs, outputs).
    """

    preprocess_in_thread = False  # the hooks below only wrap their argument

    def __init__(self, description: dict[str, Any]) -> None:
        self.platform = description["platform"]
        self.inputs = description["inputs"]
        self.outputs = description["outputs"]

    def decode_tensors(self, tensors: dict[str, np.ndarray]) -> Any:
        return _Tensors(tensors)

    def encode_tensors(self, output: Any) -> dict[str, np.ndarray]:
        return dict(output)

    def preprocess(self, example: Any) -> Any:
        return _Example(example)

    def predict(self, batch: list[Any]) -> list[Any]:
        raise AssertionError("a RemotePredictor never predicts: its RemoteBatcher forwards requests")


class RemoteBatcher(Batcher):
    """Forwards each request to the version's deployment instead of batching it here.

    Raises, besides what the replica raises (its ModelbayError, unwrapped): Overloaded when Serve
    refuses the call (every replica holds `max_queue_size` requests and as many wait),
    WorkerProcessDied when the replica died with the request in it (killed, out of memory, its
    node lost), InferenceFailed for any other failure of the call, ModelNotReady when stopped.
    """

    def __init__(self, handle: DeploymentHandle, config: BatchingConfig, name: str) -> None:
        super().__init__(_unused, config, name=name)
        self.handle = handle
        self._running = False

    @property
    def queue_depth(self) -> int:
        """Nothing queues at the front (the replicas report their queues)."""
        return 0

    def stalled(self, after_s: float) -> bool:
        """Never: a hung replica fails Serve's health check (ModelReplica.check_health) instead."""
        return False

    def start(self) -> None:
        self._running = True

    async def stop(self) -> None:
        self._running = False

    async def submit(self, item: Any) -> Any:
        """One request: an OIP request's tensors (`_Tensors`) or one example (`_Example`)."""
        if isinstance(item, _Tensors):
            outputs, defaulted = await self._call("infer", item.tensors)
            return DefaultOutput(outputs) if defaulted else outputs
        return (await self.submit_many([item]))[0]

    async def submit_many(self, items: Sequence[Any]) -> list[Any]:
        """The examples of one simple-door request, in one call: all answered or none."""
        predictions, defaults = await self._call("predict", [item.value for item in items])
        for index in defaults:
            predictions[index] = DefaultOutput(predictions[index])
        return list(predictions)

    async def _call(self, method: str, payload: Any) -> Any:
        if not self._running:
            raise ModelNotReady(f"model {self.name!r} is not running")
        response = getattr(self.handle, method).remote(payload)
        try:
            answer = await response
        except asyncio.CancelledError:  # deadline passed or client gone: the replica drops it too
            response.cancel()
            raise
        except RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, ModelbayError):
                raise cause from None
            raise InferenceFailed(f"model {self.name!r} failed in its replica: {cause!r}") from exc
        except BackPressureError as exc:
            raise Overloaded(
                f"model {self.name!r}: every replica is full and its queue too (max_queue_size "
                f"{self.config.max_queue_size}); retry later"
            ) from exc
        except RayActorError as exc:
            raise WorkerProcessDied(
                f"the Ray replica of model {self.name!r} died with this request in it"
            ) from exc
        if isinstance(answer, ModelbayError):  # ModelReplica returns them (its docstring says why)
            raise answer
        return answer


def _unused(batch: list[Any]) -> list[Any]:
    raise AssertionError("a RemoteBatcher never runs batches")


@dataclass(eq=False)
class RemoteModel(ServedModel):
    """A model version served by its Serve deployment `handle` (module docstring)."""

    handle: DeploymentHandle | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        assert self.handle is not None, "a RemoteModel needs its deployment's handle"
        self.batcher = RemoteBatcher(self.handle, self.batching, self.name)

    @classmethod
    def of(cls, config: ModelConfig, description: dict[str, Any], handle: DeploymentHandle) -> RemoteModel:
        """The stand-in of the version `config` describes, as build_served_model would build it."""
        return cls(
            config.name or "model",
            config.version,
            RemotePredictor(description),
            config.batching,
            None,
            config.cache,
            timeout_s=config.timeout_s,
            url_inputs=config.url_inputs,
            traffic=config.traffic,
            handle=handle,
        )
