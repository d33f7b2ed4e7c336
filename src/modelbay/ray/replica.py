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
from typing import Any

import msgspec
import numpy as np
import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from modelbay.errors import ModelbayError
from modelbay.loading import load_model
from modelbay.metrics import Metrics
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
        self._replica = serve.get_replica_context().replica_id.unique_id
        self._pushing = asyncio.get_running_loop().create_task(self._push_metrics())
        # What was loaded lives as long as the replica: keep the cyclic GC from walking it again
        # on every full collection (Server.tune_process does the same).
        gc.collect()
        gc.freeze()

    def _depth(self) -> float:
        return float(self.model.batcher.queue_depth)

    async def infer(
        self, inputs: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], bool] | ModelbayError:
        """One OIP request's named input tensors -> its named output tensors, and whether they are
        the model's default output (steps.infer); or the ModelbayError it failed with, returned
        rather than raised (Serve would log a raised one with its traceback, even a client's 400)."""
        try:
            return await steps.infer(self.model, inputs)
        except ModelbayError as exc:
            return exc

    async def predict(self, examples: list[Any]) -> tuple[list[Any], list[int]] | ModelbayError:
        """The simple door: one prediction per example (bytes or a JSON value), and the indices of
        those that are the default output (steps.predict); or its ModelbayError, as `infer`."""
        try:
            return await steps.predict(self.model, examples, self.fetcher, _ignore)
        except ModelbayError as exc:
            return exc

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
