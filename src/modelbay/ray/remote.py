"""The front's stand-ins for model versions that run as Serve deployments (modelbay.ray.replica).

A `RemoteModel` sits in the front's model registry where a loaded ServedModel would, so the
front's dataplane treats it like any model: routing by name and version, traffic policies,
deadlines, the cache, request metrics. Its predictor only carries the metadata (its hooks are the
identity: the real ones run in the replica), and its batcher does not batch: it hands each request,
whole, to one replica of the version's deployment through its DeploymentHandle, where the model's
own batcher merges it with the others that replica holds.

A call through a DeploymentHandle costs the front far more than a request's own work (Serve's
router, a Ray task, its reply: about a millisecond of the front's CPU), so the requests that reach
a version in the same turn of the front's event loop go to one replica in one call
(`ModelReplica.serve_many`), each with the time its deadline leaves: nothing waits for a group to
form, and under load the groups grow by themselves. The replica submits the requests of a call
to its batcher one by one, as if they had come alone.

The cut follows runtime/steps.py: the OIP door's decoded input tensors go as they are
("infer"), the simple door's examples as a list, their URLs already fetched ("predict").
"""

from __future__ import annotations

import asyncio
import time
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
from modelbay.runtime.context import CURRENT
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
    """Forwards requests to the version's deployment, those of one event-loop turn in one call.

    Raises, besides what the replica raises (its ModelbayError, unwrapped): Overloaded when Serve
    refuses the call (every replica holds `max_queue_size` requests and as many wait),
    WorkerProcessDied when the replica died with the request in it (killed, out of memory, its
    node lost), InferenceFailed for any other failure of the call, ModelNotReady when stopped.
    """

    def __init__(self, handle: DeploymentHandle, config: BatchingConfig, name: str) -> None:
        super().__init__(_unused, config, name=name)
        self.handle = handle
        self._running = False
        self._waiting: list[_Call] = []  # for the next call to a replica
        self._calls: set[asyncio.Task[None]] = set()

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
        for task in list(self._calls):
            task.cancel()

    async def submit(self, item: Any) -> Any:
        """One request: an OIP request's tensors (`_Tensors`) or one example (`_Example`)."""
        if isinstance(item, _Tensors):
            outputs, defaulted = await self._send("infer", item.tensors)
            return DefaultOutput(outputs) if defaulted else outputs
        return (await self.submit_many([item]))[0]

    async def submit_many(self, items: Sequence[Any]) -> list[Any]:
        """The examples of one simple-door request, together: all answered or none."""
        predictions, defaults = await self._send("predict", [item.value for item in items])
        for index in defaults:
            predictions[index] = DefaultOutput(predictions[index])
        return list(predictions)

    async def _send(self, method: str, payload: Any) -> Any:
        """Queue one request for the next call and wait for its answer (cancellable: the call
        goes on for the others in it, and the replica drops this one at its deadline)."""
        if not self._running:
            raise ModelNotReady(f"model {self.name!r} is not running")
        context = CURRENT.get()
        deadline = None if context is None else context.deadline
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        loop = asyncio.get_running_loop()
        call = _Call(method, payload, remaining, loop.create_future())
        if not self._waiting:
            loop.call_soon(self._flush)
        self._waiting.append(call)
        answer = await call.future
        if isinstance(answer, ModelbayError):  # ModelReplica returns them (its docstring says why)
            raise answer
        return answer

    def _flush(self) -> None:
        calls, self._waiting = self._waiting, []
        task = asyncio.get_running_loop().create_task(self._call(calls))
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def _call(self, calls: list[_Call]) -> None:
        """One call to a replica for `calls`; each future gets its answer or the call's error."""
        response = self.handle.serve_many.remote([(c.method, c.payload, c.remaining_s) for c in calls])
        _cancel_when_all_end(response, calls)
        try:
            answers = await response
        except asyncio.CancelledError:  # the front stopping
            response.cancel()
            error: BaseException = ModelNotReady(f"model {self.name!r} is not running")
        except Exception as exc:
            error = self._failure(exc)
        else:
            for call, answer in zip(calls, answers, strict=True):
                if not call.future.done():
                    call.future.set_result(answer)
            return
        for call in calls:
            if not call.future.done():
                call.future.set_exception(error)

    def _failure(self, exc: Exception) -> Exception:
        """The ModelbayError a failed call means for the requests in it."""
        if isinstance(exc, RayTaskError):
            cause = exc.cause
            if isinstance(cause, ModelbayError):
                return cause
            return InferenceFailed(f"model {self.name!r} failed in its replica: {cause!r}")
        if isinstance(exc, BackPressureError):
            return Overloaded(
                f"model {self.name!r}: every replica is full and its queue too (max_queue_size "
                f"{self.config.max_queue_size}); retry later"
            )
        if isinstance(exc, RayActorError):
            return WorkerProcessDied(f"the Ray replica of model {self.name!r} died with this request in it")
        return InferenceFailed(f"model {self.name!r}: the call to its replica failed: {exc!r}")


@dataclass(slots=True)
class _Call:
    """One request waiting for, or riding in, a call to a replica."""

    method: str  # "infer" or "predict"
    payload: Any
    remaining_s: float | None  # what its deadline leaves, when it was queued
    future: asyncio.Future[Any]


def _cancel_when_all_end(response: Any, calls: list[_Call]) -> None:
    """Cancel the call `response` once every request in it has ended (its deadline passed, its
    client left: awaiting its future, the request's task cancelled the future too)."""
    left = [len(calls)]

    def ended(future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            left[0] -= 1
            if left[0] == 0:
                response.cancel()

    for call in calls:
        call.future.add_done_callback(ended)


def _unused(batch: list[Any]) -> list[Any]:
    raise AssertionError("a RemoteBatcher never runs batches")


@dataclass(eq=False)
class RemoteModel(ServedModel):
    """A model version served by its Serve deployment `handle` (module docstring); `application`:
    the Serve application the front deployed it as (modelbay.ray.front.VersionDeployer), None when
    it is a deployment of the front's own application."""

    handle: DeploymentHandle | None = None
    application: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        assert self.handle is not None, "a RemoteModel needs its deployment's handle"
        self.batcher = RemoteBatcher(self.handle, self.batching, self.name)

    @classmethod
    def of(
        cls,
        config: ModelConfig,
        description: dict[str, Any],
        handle: DeploymentHandle,
        application: str | None = None,
    ) -> RemoteModel:
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
            application=application,
        )
