"""The Ray Serve application of a modelbay server: one deployment per model version, a front.

    front (1 replica, head node)           --DeploymentHandle-->  "NAME:VERSION" deployments
       modelbay's HTTP app + gRPC server                          replicas: predictor + batcher
                   ^-------------- metrics board <---- each replica pushes its metrics

The front answers HTTP itself on the port it is given (HttpFront: modelbay's own uvicorn server,
one hop less than through Serve's HTTP proxy), or, given none, is the application's ingress behind
Serve's HTTP proxy (Front). For `modelbay serve --ray` (managed) the model versions are not in this
application: the front deploys each as an application of its own, and loads and unloads them
through the API (modelbay.ray.front.VersionDeployer).

`build_app(settings, options)` makes it from modelbay Settings (as `modelbay serve --ray` has them);
`app(args)` is the same for Ray's own tools: `serve run modelbay.ray:app repository=models/` or an
`import_path: modelbay.ray:app` in a `serve deploy` config file.
"""

from __future__ import annotations

from typing import Any

import msgspec
from ray import serve
from ray.serve import Application

from modelbay.ray.front import Front, HttpFront
from modelbay.ray.metrics import MetricsBoard
from modelbay.ray.options import (
    QUIET_LOGS,
    RayOptions,
    actor_options,
    model_configs,
    model_deployment_options,
)
from modelbay.ray.replica import ModelReplica
from modelbay.settings import Settings, environment

# Ray's resource of the head node: a sliver of it pins the front there, which gives its HTTP and
# gRPC doors a known address (and puts it beside Serve's HTTP proxy, proxy_location HeadOnly).
HEAD_NODE = "node:__internal_head__"
# `app(args)` keys that are modelbay settings rather than RayOptions.
SETTINGS_ARGS = ("host", "port", "grpc_port", "max_body_bytes", "auth", "model_control_mode", "access_log")


def build_app(
    settings: Settings, options: RayOptions, own_http: bool = True, managed: bool = False
) -> Application:
    """The Serve application serving every model of `settings` (its `models` and those of its
    `model_repository`, as found now), each version with the replicas and resources of `options`.
    own_http: the front answers HTTP itself on `settings.host:settings.port` of the head node;
              False: Serve's HTTP proxy does, and passes requests to the front (an ingress).
    managed:  the front deploys each version as a Serve application of its own, at start and on
              each load through the API (`modelbay serve --ray`); False: the versions are
              deployments of this application, as a Serve config file declares it, and the API
              cannot load or unload (modelbay.ray.front).

    Model files are read by the replicas, on whichever node Serve places them: their paths must
    exist there too (a shared file system, or the same files on every node).
    Raises ModelLoadError when there is no model, two entries share a name and version, or the
    repository cannot be read.
    """
    configs = model_configs(settings)
    board = serve.deployment(
        name="modelbay-metrics",
        num_replicas=1,
        ray_actor_options=actor_options(num_cpus=0),
        logging_config=QUIET_LOGS,
    )
    board_app = board(MetricsBoard).bind()
    models: list[tuple[dict[str, Any], Any]] = []
    for config in configs:
        fields = msgspec.to_builtins(config)
        if managed:
            models.append((fields, None))
        else:
            replica = serve.deployment(**model_deployment_options(config, options))(ModelReplica)
            models.append((fields, replica.bind(fields, board_app)))
    front = serve.deployment(
        name="modelbay-front",
        num_replicas=1,
        max_ongoing_requests=settings.max_connections,
        ray_actor_options=actor_options(num_cpus=0, resources={HEAD_NODE: 0.001}),
        logging_config=QUIET_LOGS,
    )(HttpFront if own_http else serve.ingress()(Front))
    front_settings = msgspec.to_builtins(msgspec.structs.replace(settings, models=[]))
    deploying = (options.name, msgspec.to_builtins(options)) if managed else None
    return front.bind(front_settings, models, board_app, deploying)


def app(args: dict[str, Any]) -> Application:
    """Ray Serve's application builder: `serve run modelbay.ray:app repository=models/ replicas=2`.

    args (strings from `serve run`, or typed values from a config file's `args:`):
      repository: a model repository folder; models: model paths, a list or comma-separated;
      config: a modelbay settings YAML file (its `models:` and model settings apply);
      replicas, autoscale ("MIN:MAX"), target_ongoing_requests, num_cpus, num_gpus, name: RayOptions;
      host, grpc_port (0: no gRPC), max_body_bytes, auth, model_control_mode, access_log: Settings;
      port: the front answers HTTP itself there, on the head node (host: its address); without
      it, Serve's HTTP proxy answers (`serve run`'s host and port, a config file's http_options).
    With neither repository, models nor config: the bundled digits classifier.
    Raises ModelLoadError for a bad argument or model list.
    """
    from modelbay.server import DEFAULT_MODEL  # the server's default, without its import cost here

    fields = dict(args)
    config = fields.pop("config", None)
    overrides: dict[str, Any] = {key: fields.pop(key) for key in SETTINGS_ARGS if key in fields}
    repository = fields.pop("repository", None)
    if repository is not None:
        overrides["model_repository"] = str(repository)
    paths = fields.pop("models", None)
    if isinstance(paths, str):
        paths = [part for part in paths.split(",") if part]
    if paths:
        overrides["models"] = [{"path": str(path)} for path in paths]
    options = RayOptions.parse(fields)
    settings = Settings.load(config, overrides, environment())
    if not settings.models and settings.model_repository is None:
        default = {**overrides, "models": [{"path": str(DEFAULT_MODEL)}]}
        settings = Settings.load(config, default, environment())
    return build_app(settings, options, own_http="port" in args)
