"""How modelbay's models become Ray Serve deployments: replicas, autoscaling and resources.

No Ray import here: the CLI parses and checks these before it connects to a cluster.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from modelbay.errors import ModelLoadError
from modelbay.registry.repository import ModelRepository
from modelbay.settings import ModelConfig, Settings

# Serve's import path of modelbay.ray.autoscaling.requests_held_policy (that module imports Ray).
AUTOSCALING_POLICY = "modelbay.ray.autoscaling:requests_held_policy"
# The application's name on the cluster (`serve status`, `serve.delete`), unless told otherwise.
APP_NAME = "modelbay"
# Every deployment of the application: Serve's line per call is off, the front writes modelbay's
# access line per request (modelbay.logs) and a line per call of each replica would cost CPU.
QUIET_LOGS: dict[str, Any] = {"enable_access_log": False}
# Ray Serve's request path in every process of the application, read by Serve as each process
# starts (ray/serve/_private/constants.py; Ray's RAY_SERVE_THROUGHPUT_OPTIMIZED=1 sets the first
# three for a whole cluster): the front's calls go to the replicas over gRPC, straight to the
# replica, rather than as Ray actor tasks; the user code runs on the replica's event loop and a
# handle's router on its caller's, rather than each on a thread of its own. A gRPC message may
# then be as large as gRPC allows (Serve's default, 4 MiB, would fail a call carrying a few
# images; modelbay.ray.remote keeps calls to about 64 MiB of inputs).
SERVE_ENV = {
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(2**31 - 1),
}


class RayOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The Serve side of every model version's deployment (`modelbay serve --ray`, or the args of
    `serve run modelbay.ray:app`).

    replicas:  replicas per model version (Serve's `num_replicas`), when not autoscaling.
    autoscale: "MIN:MAX" replicas per model version: Serve's `autoscaling_config` (min_replicas,
               max_replicas) instead of a fixed count.
    target_ongoing_requests: with `autoscale`, the requests each replica holds (queued in its
               batcher or in a batch) that Serve scales towards (modelbay.ray.autoscaling); None:
               the model's `max_batch_size` (a replica is at its target when it holds one full
               batch: modelbay's batcher wants requests queued to batch them, so Serve's default
               of 2 would add replicas before batches form).
    num_cpus, num_gpus: Ray resources each replica holds (`ray_actor_options`); fractions allowed.
    name:      the Serve application's name.
    """

    replicas: int = 1
    autoscale: str | None = None
    target_ongoing_requests: float | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    name: str = APP_NAME

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise msgspec.ValidationError(f"replicas must be >= 1, got {self.replicas}")
        if self.autoscale is not None:
            autoscale_range(self.autoscale)
        elif self.target_ongoing_requests is not None:
            raise msgspec.ValidationError("target_ongoing_requests needs autoscale MIN:MAX")
        if self.target_ongoing_requests is not None and self.target_ongoing_requests <= 0:
            raise msgspec.ValidationError("target_ongoing_requests must be > 0")
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise msgspec.ValidationError("num_cpus and num_gpus must be >= 0")

    @classmethod
    def parse(cls, fields: Mapping[str, Any]) -> RayOptions:
        """Options from `fields` (values may be strings, as `serve run ... key=value` passes them).

        Raises ModelLoadError naming the bad field, e.g. "autoscale must be MIN:MAX ...".
        """
        try:
            return msgspec.convert(dict(fields), cls, strict=False)
        except msgspec.ValidationError as exc:
            raise ModelLoadError(f"Ray options: {exc}") from exc


def autoscale_range(text: str) -> tuple[int, int]:
    """ "MIN:MAX" -> (MIN, MAX) replicas, 0 <= MIN <= MAX, MAX >= 1.

    Raises msgspec.ValidationError (the options' check) for anything else.
    """
    low, sep, high = text.partition(":")
    if not (sep and low.strip().isdigit() and high.strip().isdigit()):
        raise msgspec.ValidationError(f"autoscale must be MIN:MAX replicas, e.g. 1:8, got {text!r}")
    least, most = int(low), int(high)
    if most < 1 or least > most:
        raise msgspec.ValidationError(f"autoscale needs 0 <= MIN <= MAX and MAX >= 1, got {text!r}")
    return least, most


def deployment_name(config: ModelConfig) -> str:
    """The Serve deployment of one model version, "NAME:VERSION" (model names hold no ':')."""
    return f"{config.name}:{config.version}"


def model_deployment_options(config: ModelConfig, options: RayOptions) -> dict[str, Any]:
    """`Deployment.options(...)` keywords for one model version.

    Serve counts calls from the front, each carrying one or more requests (modelbay.ray.remote):
    each replica may hold `max_queue_size` calls (Serve's `max_ongoing_requests`; its default of 5
    would starve the batcher) and each caller queue at most that many more before Serve refuses
    (`max_queued_requests`: the front answers 503 Overloaded); the replica's batcher bounds the
    requests it holds to `max_queue_size` too, answering 503 past it, as on one machine.
    """
    batching = config.batching
    scaling: dict[str, Any]
    if options.autoscale is not None:
        least, most = autoscale_range(options.autoscale)
        target = options.target_ongoing_requests or float(batching.max_batch_size)
        scaling = {
            "autoscaling_config": {
                "min_replicas": least,
                "initial_replicas": max(least, 1),
                "max_replicas": most,
                "target_ongoing_requests": target,
                # counted in requests the replicas hold, not in calls (modelbay.ray.autoscaling)
                "policy": {"policy_function": AUTOSCALING_POLICY},
            }
        }
    else:
        scaling = {"num_replicas": options.replicas}
    return {
        "name": deployment_name(config),
        **scaling,
        "max_ongoing_requests": batching.max_queue_size,
        "max_queued_requests": batching.max_queue_size,
        "ray_actor_options": actor_options(num_cpus=options.num_cpus, num_gpus=options.num_gpus),
        "logging_config": QUIET_LOGS,
    }


def actor_options(**resources: Any) -> dict[str, Any]:
    """`ray_actor_options` of a deployment of the application: `resources` (num_cpus, num_gpus,
    resources) and SERVE_ENV, each variable as the environment of the process building the
    application sets it if it does (`RAY_SERVE_USE_GRPC_BY_DEFAULT=0 modelbay serve --ray ...`:
    a cluster whose replicas' gRPC ports the head node cannot reach). Ray merges these variables
    with a job's own runtime_env."""
    env_vars = {name: os.environ.get(name, value) for name, value in SERVE_ENV.items()}
    return {**resources, "runtime_env": {"env_vars": env_vars}}


def model_configs(settings: Settings) -> list[ModelConfig]:
    """Every model version to deploy, its path absolute: the `models` entries, then each version
    of the repository's models (only `load_models` when set). Raises ModelLoadError."""
    configs = [_absolute(config) for config in settings.models]
    if settings.model_repository is not None:
        root = Path(settings.model_repository).expanduser().resolve()
        if not root.is_dir():
            raise ModelLoadError(f"the model repository {root} is not a folder")
        repository = ModelRepository(root, settings.model_overrides)
        names = [n for n in repository.names() if not settings.load_models or n in settings.load_models]
        for name in names:
            configs += [found.config for found in repository.versions(name).values()]
    if not configs:
        raise ModelLoadError("no model to serve: give model paths or a model repository")
    seen: set[str] = set()
    for config in configs:
        if deployment_name(config) in seen:
            raise ModelLoadError(f"model {config.name!r} version {config.version} is given twice")
        seen.add(deployment_name(config))
    return configs


def _absolute(config: ModelConfig) -> ModelConfig:
    """`config` with its path absolute and its name set (as loading names it: the folder's name,
    or the file's name up to its first dot): the front needs names before the replicas load."""
    path = Path(config.path or ".").expanduser().resolve()
    name = config.name or (path.name if path.is_dir() else path.name.split(".")[0])
    return msgspec.structs.replace(config, path=str(path), name=name)
