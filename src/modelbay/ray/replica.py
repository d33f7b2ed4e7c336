"""One replica of a model version on a Ray cluster: modelbay's predictor and batcher in a Serve replica.

The replica loads the version as `modelbay serve` does (loading.load_model, then
registry.manager.build_served_model: setup, warm-up, the batcher) and answers the front's calls
with the request steps of runtime/steps.py: the predictor's per-request hooks, then its place in
the replica's batcher, which merges the concurrent calls Serve hands this replica into batches
(the one batching layer: no `@serve.batch`). Deadlines, the cache, traffic policies and request
metrics stay with the front (modelbay.ray.front); a cancelled call (its deadline passed, its client
left) leaves the batcher's queue here.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Awaitable
from typing import Any

import msgspec
import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from modelbay.errors import DeadlineExceeded, ModelbayError
from modelbay.loading import load_model
from modelbay.metrics import Metrics
from modelbay.ray.autoscaling import HELD
from modelbay.ray.metrics import PUSH_S
from modelbay.registry.manager import build_served_model
from modelbay.runtime import steps
from modelbay.runtime.fetch import UrlFetcher
from modelbay.settings import ModelConfig

log = logging.getLogger("modelbay.ray")


class ModelReplica:
    """A Serve deployment class (modelbay.ray.app binds one per model version).

    config: the version's complete ModelConfig as builtins (msgspec.to_builtins), its path absolute
            and readable on every node that may run a replica.
    board:  the application's MetricsBoard, which this replica pushes its metrics to.
    Raises ModelLoadError when the model cannot be loaded: Serve then reports the deployment as
    failed (DEPLOY_FAILED, with the message).
    """

    def __init__(self, config: dict[str, Any], board: DeploymentHandle) -> None:
        loaded = load_model(msgspec.convert(config, ModelConfig))
        self.model = build_served_model(loaded)
        self.model.start()  # Serve runs the constructor on the replica's event loop
        self.metrics = Metrics()
        self.model.metrics = self.metrics.for_model(self.model.name, self.model.version, self._depth)
        self.model.batcher.observer = self.model.metrics
        self.fetcher = UrlFetcher()  # never fetches: the front resolved the URLs
        self._board = board
        self._held = 0  # requests between serve_many's start and their answer
        self._replica = serve.get_replica_context().replica_id.unique_id
        self._pushing = asyncio.get_running_loop().create_task(self._push_metrics())
        # What was loaded lives as long as the replica: keep the cyclic GC from walking it again
        # on every full collection (Server.tune_process does the same).
        gc.collect()
        gc.freeze()

    def _depth(self) -> float:
        return float(self.model.batcher.queue_depth)

    async def serve_many(self, calls: list[tuple[str, Any, float | None]]) -> tuple[str, list[Any]]:
        """The requests of one call from the front (modelbay.ray.remote), each submitted on its own
        and answered as it would be alone; returns this replica's id (Serve's) and their answers
        in order.

        calls: (method, payload, remaining_s) per request: method "infer" with an OIP request's
               named input tensors (answered by (named output tensors, whether they are the model's
               default output), steps.infer), or "predict" with the simple door's examples
               (answered by (one prediction per example, the indices of default outputs),
               steps.predict); remaining_s: what its deadline leaves (None: none), past which it
               leaves the batcher's queue and is answered DeadlineExceeded.
        A request that fails is answered by its ModelbayError, returned rather than raised (Serve
        would log a raised one with its traceback, even a client's 400, and fail the others).
        """
        return self._replica, list(await asyncio.gather(*(self._serve(*call) for call in calls)))

    async def _serve(self, method: str, payload: Any, remaining_s: float | None) -> Any:
        work: Awaitable[Any]
        if method == "infer":
            work = steps.infer(self.model, payload)
        else:
            work = steps.predict(self.model, payload, self.fetcher, _ignore)
        self._held += 1
        try:
            async with asyncio.timeout(remaining_s):  # a timer, not wait_for's task per request
                return await work
        except TimeoutError:
            return DeadlineExceeded(f"model {self.model.name!r} did not answer within the request's deadline")
        except ModelbayError as exc:
            return exc
        finally:
            self._held -= 1

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's custom autoscaling metrics, read every few seconds: the requests this
        replica holds now, which modelbay.ray.autoscaling scales on."""
        return {HELD: float(self._held)}

    def describe(self) -> dict[str, Any]:
        """What the front shows as OIP model metadata, and where this replica runs.

        Returns {"platform": str, "inputs": [TensorSpec], "outputs": [TensorSpec], "node_id": hex
        str (Ray's node id), "replica": Serve's replica id}.
        """
        predictor = self.model.predictor
        return {
            "platform": predictor.platform,
            "inputs": list(predictor.inputs),
            "outputs": list(predictor.outputs),
            "node_id": ray.get_runtime_context().get_node_id(),
            "replica": self._replica,
        }

    def check_health(self) -> None:
        """Serve's health check (every few seconds): a replica whose model cannot answer (its
        worker process down, a batch hung past timeout_s) raises, and Serve replaces it."""
        if not self.model.answering():
            raise RuntimeError(f"model {self.model.name!r} version {self.model.version} is not answering")

    async def _push_metrics(self) -> None:
        while True:
            try:
                await self._board.put.remote(self._replica, self.metrics.render())
            except Exception as exc:  # the board restarting: the next push carries the totals
                log.debug("metrics push failed: %s", exc)
            await asyncio.sleep(PUSH_S)

    async def __del__(self) -> None:
        """Serve's graceful shutdown: requests still queued get ModelNotReady, the model closes."""
        self._pushing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pushing
        await self.model.stop()


def _ignore(_examples: list[Any]) -> None:
    """steps.predict hands the fetched examples over for a shadow call; replicas make none."""
