"""The front's stand-ins for model versions that run as Serve deployments (modelbay.ray.replica).

A `RemoteModel` sits in the front's model registry where a loaded ServedModel would, so the
front's dataplane treats it like any model: routing by name and version, traffic policies,
deadlines, the cache, request metrics. Its predictor only carries the metadata (its hooks are the
identity: the real ones run in the replica), and its batcher does not batch: it hands each request,
whole, to one replica of the version's deployment through its DeploymentHandle, where the model's
own batcher merges it with the others that replica holds.

A call through a DeploymentHandle costs the front far more than a request's own work (Serve's
router, a gRPC call and its reply), so requests to a version travel in groups, one call per
group (`ModelReplica.serve_many`), each with the time its deadline leaves. A version has at most
CALLS_PER_REPLICA calls in flight per replica (one in the replica's batcher, one queued behind it);
requests that come meanwhile wait at the front and go together in the next call, as soon as one
returns. Nothing waits for a group to form: an idle version sends a request in the turn of the
front's event loop it came in, and under load the groups grow by themselves (the same rule as the
batcher's: run when the model is free). The front counts a version's replicas as those that
answered a call in the last REPLICA_SEEN_S seconds (a new replica is found as Serve's router
sends it calls). A call carries at most `max_queue_size` requests (what a replica may hold) and
about CALL_BYTES of inputs. The replica submits the requests of a call to its batcher one by one,
as if they had come alone.

The cut follows runtime/steps.py: the OIP door's decoded input tensors go as they are
("infer"), the simple door's examples as a list, their URLs already fetched ("predict").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
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

# Calls in flight to each replica of a version: one its batcher runs, one queued behind it.
CALLS_PER_REPLICA = 2
# How long a replica counts towards a version's calls in flight after its last answer (a replica
# that died or was scaled down stops counting after this).
REPLICA_SEEN_S = 10.0
# Most input bytes one call carries (as estimated by `_size`), well under the largest gRPC message.
CALL_BYTES = 64 * 1024 * 1024


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
    """Forwards requests to the version's deployment in groups, one call each, at most
    CALLS_PER_REPLICA calls in flight per replica (the module docstring says how).

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
        self._calls: set[asyncio.Task[None]] = set()  # the calls in flight
        self._flushing = False  # a _flush is scheduled
        self._replicas: dict[str, float] = {}  # replica id -> when it last answered (monotonic)

    @property
    def queue_depth(self) -> int:
        """Requests waiting at the front for a call to a replica (the replicas report theirs)."""
        return len(self._waiting)

    def stalled(self, after_s: float) -> bool:
        """Never: a hung replica fails Serve's health check (ModelReplica.check_health) instead."""
        return False

    def start(self) -> None:
        self._running = True

    async def stop(self) -> None:
        self._running = False
        waiting, self._waiting = self._waiting, []
        for call in waiting:
            if not call.future.done():
                call.future.set_exception(self._not_running())
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
        """Queue one request for the next call and wait for its answer (cancellable: a request
        still waiting does not go, one in a call is dropped by the replica at its deadline)."""
        if not self._running:
            raise self._not_running()
        context = CURRENT.get()
        call = _Call(method, payload, None if context is None else context.deadline)
        self._waiting.append(call)
        self._schedule()
        answer = await call.future
        if isinstance(answer, ModelbayError):  # ModelReplica returns them (its docstring says why)
            raise answer
        return answer

    def calls_allowed(self) -> int:
        """Calls this version may have in flight: CALLS_PER_REPLICA per replica that answered in
        the last REPLICA_SEEN_S seconds (at least one replica)."""
        return CALLS_PER_REPLICA * max(1, len(self._replicas))

    def _schedule(self) -> None:
        """Send the waiting requests in the next turn of the loop, if a call may go now."""
        if self._waiting and not self._flushing and len(self._calls) < self.calls_allowed():
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """One call with the waiting requests still wanted, the first ones up to max_queue_size
        requests and CALL_BYTES of inputs (the first goes whatever its size)."""
        self._flushing = False
        wanted = [call for call in self._waiting if not call.future.done()]
        if not wanted:
            self._waiting = []
            return
        taken, size = 1, _size(wanted[0].payload)
        while taken < min(len(wanted), self.config.max_queue_size):
            size += _size(wanted[taken].payload)
            if size > CALL_BYTES:
                break
            taken += 1
        calls, self._waiting = wanted[:taken], wanted[taken:]
        task = asyncio.get_running_loop().create_task(self._call(calls))
        self._calls.add(task)
        task.add_done_callback(self._called)
        self._schedule()  # more than one call's worth waiting

    def _called(self, task: asyncio.Task[None]) -> None:
        self._calls.discard(task)
        self._schedule()

    async def _call(self, calls: list[_Call]) -> None:
        """One call to a replica for `calls`; each future gets its answer or the call's error."""
        now = time.monotonic()
        response = self.handle.serve_many.remote(
            [(c.method, c.payload, None if c.deadline is None else max(0.0, c.deadline - now)) for c in calls]
        )
        _cancel_when_all_end(response, calls)
        try:
            replica, answers = await response
        except asyncio.CancelledError:  # the front stopping
            response.cancel()
            error: BaseException = self._not_running()
        except Exception as exc:
            error = self._failure(exc)
        else:
            self._seen(replica)
            for call, answer in zip(calls, answers, strict=True):
                if not call.future.done():
                    call.future.set_result(answer)
            return
        for call in calls:
            if not call.future.done():
                call.future.set_exception(error)

    def _seen(self, replica: str) -> None:
        """Note that `replica` answered now; forget those silent for REPLICA_SEEN_S (a few
        entries: a version's replicas)."""
        now = time.monotonic()
        self._replicas = {r: at for r, at in self._replicas.items() if now - at < REPLICA_SEEN_S}
        self._replicas[replica] = now

    def _not_running(self) -> ModelNotReady:
        return ModelNotReady(f"model {self.name!r} is not running")

    def _failure(self, exc: Exception) -> Exception:
        """The ModelbayError a failed call means for the requests in it."""
        if not self._running:  # stop() cancelled it (Serve may raise RequestCancelledError)
            return self._not_running()
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
    deadline: float | None  # time.monotonic() by which it must be answered, None: none
    future: asyncio.Future[Any] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


def _size(payload: Any) -> int:
    """About how many bytes a request's inputs take in a call: its tensors' (an OIP request), or
    its examples' (the simple door: bytes and text by length, arrays by size, a list of numbers at
    8 bytes an item, anything else as nothing)."""
    if isinstance(payload, dict):
        return sum(array.nbytes for array in payload.values())
    size = 0
    for example in payload:
        if isinstance(example, str | bytes):
            size += len(example)
        elif isinstance(example, np.ndarray):
            size += example.nbytes
        elif isinstance(example, list):
            size += 8 * len(example)
    return size


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
