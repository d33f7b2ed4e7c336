"""The front of modelbay on Ray: the deployment that speaks modelbay's protocols.

It runs modelbay's own ASGI app (http/app.py create_app) over a Dataplane whose registry holds a
RemoteModel per model version (modelbay.ray.remote): REST /predict, OIP REST (JSON and the binary
extension), the docs, /metrics and the repository API answer exactly as from `modelbay serve`:
HttpFront serves it with modelbay's own uvicorn server on a port of the head node, Front as the
application's ingress behind Serve's HTTP proxy. With a gRPC port set, the front also runs
modelbay's own OIP gRPC server (grpc/servicer.py) on that port of its node (the head node:
modelbay.ray.app pins it there), over the same dataplane; Serve's gRPC proxy is not used (it
needs its own per-method deployment calls and an `application` metadata key that Triton's
clients do not send).

Management: the index, the default version and traffic policies work here, in this front (one
replica), as on one machine. Given Ray options (`modelbay serve --ray`), the front deploys each
model version itself, as a Serve application of its own ("APP:NAME:VERSION", one deployment), at
start and on each load through the API, and deletes it on unload: load, unload, upload and poll
mode work as on one machine, a version replaced by its reload only once the new one answers
(VersionDeployer). Without them (a Serve config file declares the application, versions bound
into it), loading and unloading are refused with the way to do it there: deploy the config again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec
import uvicorn
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.applications import Starlette

from modelbay.auth.access import Access
from modelbay.errors import InvalidInput, ModelLoadError
from modelbay.grpc.servicer import create_grpc_server
from modelbay.http.app import ModelbayApp, create_app
from modelbay.loading import LoadedModel
from modelbay.ray.cli import first_line
from modelbay.ray.metrics import PUSH_S, ClusterMetrics
from modelbay.ray.options import RayOptions, deployment_name, model_deployment_options
from modelbay.ray.remote import RemoteModel
from modelbay.ray.replica import ModelReplica
from modelbay.registry.manager import ModelManager, ServerModels
from modelbay.registry.registry import ModelRegistry, ServedModel
from modelbay.registry.repository import ModelRepository
from modelbay.runtime.dataplane import Dataplane
from modelbay.server import traces, uvicorn_config
from modelbay.settings import ModelConfig, Settings

log = logging.getLogger("modelbay.ray")
# Longest the front waits for a replica of each version to describe its model at start (the
# replicas load their models meanwhile), or for a version it deploys to run.
DESCRIBE_TIMEOUT_S = 600.0
STATUS_POLL_S = 0.25  # how often the front asks Serve whether a version it deploys runs
REDEPLOY = (
    "on a Ray cluster, models change with the application: deploy it again (`serve deploy` of a "
    "config whose import_path is modelbay.ray:app, or `serve run modelbay.ray:app`) and Serve updates "
    "each changed deployment with a rolling update"
)


class ClusterManager(ModelManager):
    """The model manager of the front: the index, the default version and traffic policies work
    as on one machine. With a `deployer`, so do load, unload, uploads and polling, each version a
    Serve application the deployer runs; without, load and unload raise InvalidInput saying how to
    change models on Ray."""

    def __init__(self, *args: Any, deployer: VersionDeployer | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deployer = deployer

    async def load(
        self, name: str, config: Mapping[str, Any] | None = None, files: Mapping[str, bytes] | None = None
    ) -> None:
        if self.deployer is None:
            raise InvalidInput(f"cannot load model {name!r} through the API: {REDEPLOY}")
        await super().load(name, config, files)

    async def unload(self, name: str) -> None:
        if self.deployer is None:
            raise InvalidInput(f"cannot unload model {name!r} through the API: {REDEPLOY}")
        await super().unload(name)

    async def start(self, names: list[str]) -> None:
        """Deploy every version of `names` (the server's start). Raises ModelLoadError."""
        for name in names:
            async with self._lock(name):
                await self._sync(name)

    async def _build(self, source: Any) -> ServedModel:
        """Deploy one version (`source`: its ModelConfig) and return its stand-in, not started.
        Raises ModelLoadError (VersionDeployer.deploy)."""
        assert self.deployer is not None
        return await self.deployer.deploy(source)

    async def _retire(self, model: ServedModel) -> None:
        await super()._retire(model)  # its requests done (at most the drain timeout)
        if self.deployer is not None and isinstance(model, RemoteModel) and model.application:
            await self.deployer.delete(model.application)


class VersionDeployer:
    """Runs model versions as Serve applications of their own, from the front.

    app:     the front's application name; a version's is "APP:NAME:VERSION" (`version_app`), and
             ":2", ":3"... after it for its reloads: a reload runs beside the version it replaces
             until it answers, as on one machine, and only then is the old one retired.
    options: the Ray options of every version's deployment (modelbay.ray.options).
    board:   the application's MetricsBoard, which the versions' replicas push their metrics to.
    """

    def __init__(self, app: str, options: RayOptions, board: DeploymentHandle) -> None:
        self.app = app
        self.options = options
        self.board = board
        self._deploys: dict[str, int] = {}  # deploys so far per version_app name

    async def deploy(self, config: ModelConfig) -> RemoteModel:
        """Run `config`'s version as its application and return its stand-in once a replica
        describes the model. Raises ModelLoadError when Serve reports the deploy failed (its
        message) or the version is not RUNNING within DESCRIBE_TIMEOUT_S (say, no node has the
        resources asked); what was deployed is then deleted."""
        name = version_app(self.app, config.name or "model", config.version)
        count = self._deploys[name] = self._deploys.get(name, 0) + 1
        if count > 1:
            name = f"{name}:{count}"
        deployment = serve.deployment(**model_deployment_options(config, self.options))(ModelReplica)
        target = serve.RunTarget(deployment.bind(msgspec.to_builtins(config), self.board), name, None)
        try:
            # Not serve.run: it blocks its thread until the application runs, forever if it never does.
            run = functools.partial(serve.run_many, wait_for_applications_running=False)
            await asyncio.to_thread(run, [target])
            await _running(name, time.monotonic() + DESCRIBE_TIMEOUT_S)
            handle = serve.get_deployment_handle(deployment_name(config), app_name=name)
            description = await asyncio.wait_for(handle.describe.remote(), DESCRIBE_TIMEOUT_S)
        except BaseException as exc:
            await asyncio.shield(asyncio.to_thread(_delete, name))
            if isinstance(exc, TimeoutError):
                raise ModelLoadError(
                    f"its replicas did not answer within {DESCRIBE_TIMEOUT_S:.0f} s (no node with the "
                    "resources asked, or a model that takes longer to load)"
                ) from None
            if isinstance(exc, Exception) and not isinstance(exc, ModelLoadError):
                raise ModelLoadError(f"Serve could not deploy it: {first_line(exc)}") from None
            raise
        return RemoteModel.of(config, description, handle, application=name)

    async def delete(self, application: str) -> None:
        """Delete a version's application (Serve drains and stops its replicas)."""
        await asyncio.to_thread(_delete, application)


def version_app(app: str, name: str, version: str) -> str:
    """The Serve application of one model version deployed by the front: "APP:NAME:VERSION"."""
    return f"{app}:{name}:{version}"


async def _running(name: str, deadline: float) -> None:
    """Wait until Serve reports application `name` RUNNING. Raises ModelLoadError with Serve's
    message when it reports DEPLOY_FAILED (a replica's constructor raised: the model did not load),
    TimeoutError past `deadline` (time.monotonic())."""
    while True:
        status = (await asyncio.to_thread(serve.status)).applications.get(name)
        if status is not None and status.status == "RUNNING":
            return
        if status is not None and status.status == "DEPLOY_FAILED":
            raise ModelLoadError(f"Serve could not deploy it: {_why(status)}")
        if time.monotonic() > deadline:
            raise TimeoutError
        await asyncio.sleep(STATUS_POLL_S)


def _why(status: Any) -> str:
    """What a failed application's status says: its deployment's error (the last line of the
    replica constructor's traceback: the ModelLoadError with what was found), else its own."""
    for deployment in status.deployments.values():
        lines = [line.strip() for line in (deployment.message or "").splitlines() if line.strip()]
        if lines:
            return lines[-1][:2000]
    return str(status.message).strip()[:2000]


def _delete(name: str) -> None:
    try:
        serve.delete(name)
    except Exception as exc:  # the cluster going away: nothing left to delete
        log.warning("could not delete the Serve application %r: %s", name, first_line(exc))


class Front:
    """The ingress deployment class (modelbay.ray.app wraps it with serve.ingress).

    settings: the server's Settings as builtins (its models list empty): body limits, API keys,
              gRPC port and host, model control mode, drain time, the model repository.
    models:   (the version's ModelConfig as builtins, the handle of its deployment), per version;
              with `options`, the handles are None: the front deploys the versions itself.
    board:    the application's MetricsBoard, read every PUSH_S seconds for /metrics.
    options:  None, or (the application's name, RayOptions as builtins): the front runs each
              version as an application of its own (VersionDeployer), loads and unloads too.
    """

    def __init__(
        self,
        settings: dict[str, Any],
        models: list[tuple[dict[str, Any], DeploymentHandle | None]],
        board: DeploymentHandle,
        options: tuple[str, dict[str, Any]] | None = None,
    ) -> None:
        self.settings = msgspec.convert(settings, Settings)
        self._models = models
        self._board = board
        self._deployer = None
        if options is not None:
            self._deployer = VersionDeployer(options[0], msgspec.convert(options[1], RayOptions), board)
        self.dataplane: Dataplane | None = None

    async def __serve_build_asgi_app__(self) -> ModelbayApp:
        """The app behind Serve's HTTP proxy (Serve calls this once, after the constructor)."""
        return await self.build_app()

    async def build_app(self) -> ModelbayApp:
        """modelbay's HTTP app over the versions' stand-ins. Raises ModelLoadError when a
        version's replicas do not describe their model within DESCRIBE_TIMEOUT_S."""
        settings = self.settings
        registry = ModelRegistry()
        configs = [msgspec.convert(config, ModelConfig) for config, _ in self._models]
        if self._deployer is None:  # the versions are deployments of this application
            handles = [handle for _, handle in self._models]
            for config, handle, description in zip(configs, handles, await self._describe(), strict=True):
                assert handle is not None
                registry.add(RemoteModel.of(config, description, handle))
            models = ServerModels({}, {}, None)
        else:  # the manager deploys them below, as it will on each load
            models = self._managed(configs)
        metrics = ClusterMetrics()
        dataplane = self.dataplane = Dataplane(registry, metrics, tracing=traces(settings))
        manager = dataplane.manager = ClusterManager(
            registry,
            dataplane,
            models,
            settings.graceful_timeout_s,
            mode=settings.model_control_mode,
            max_upload_bytes=settings.max_upload_bytes,
            deployer=self._deployer,
        )
        if self._deployer is not None:
            await manager.start(sorted({config.name or "model" for config in configs}))
        access = Access.from_file(settings.auth, health=settings.auth_health) if settings.auth else None
        lifespan = self._lifespan(dataplane, metrics, access)
        return create_app(
            dataplane,
            settings.max_body_bytes,
            lifespan,
            max_upload_bytes=settings.max_upload_bytes,
            access=access,
        )

    def _managed(self, configs: list[ModelConfig]) -> ServerModels:
        """What the manager deploys from, as Server.load hands it over on one machine: the
        repository (read again on each load) and the versions given by path (`sources`)."""
        root = self.settings.model_repository
        repository = None if root is None else ModelRepository(Path(root), self.settings.model_overrides)
        in_repository = set(repository.names()) if repository is not None else set()
        sources: dict[str, dict[str, LoadedModel | ModelConfig]] = {}
        for config in configs:
            if config.name not in in_repository:
                sources.setdefault(config.name or "model", {})[config.version] = config
        polled = {name: repository.fingerprints(name) for name in in_repository} if repository else None
        return ServerModels(sources, {}, repository, polled)

    async def _describe(self) -> list[dict[str, Any]]:
        """ModelReplica.describe() of one replica of each version, in `models` order."""
        calls = [handle.describe.remote() for _, handle in self._models if handle is not None]
        try:
            described = await asyncio.wait_for(asyncio.gather(*calls), DESCRIBE_TIMEOUT_S)
        except TimeoutError:
            raise ModelLoadError(
                f"the model replicas did not answer within {DESCRIBE_TIMEOUT_S:.0f} s; `serve status` "
                "says why (a model that cannot load, no node with the resources asked)"
            ) from None
        return list(described)

    def _lifespan(self, dataplane: Dataplane, metrics: ClusterMetrics, access: Access | None) -> Any:
        settings, board = self.settings, self._board

        async def pull_metrics() -> None:
            while True:
                try:
                    metrics.replicas = await board.texts.remote()
                except Exception as exc:  # the board restarting: the last texts stand meanwhile
                    log.debug("metrics pull failed: %s", exc)
                await asyncio.sleep(PUSH_S)

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            await dataplane.start()
            tasks = [asyncio.create_task(pull_metrics())]
            manager = dataplane.manager  # its repository is set only when the front deploys
            polling = settings.model_control_mode == "poll"
            if polling and manager is not None and manager.repository is not None:
                tasks.append(asyncio.create_task(manager.poll(settings.repository_poll_s)))
            if access is not None:
                tasks.append(asyncio.create_task(access.watch()))
            grpc_server = None
            if settings.grpc_port:
                address = f"{settings.host}:{settings.grpc_port}"
                grpc_server = create_grpc_server(dataplane, address, settings.max_body_bytes, access=access)
                await grpc_server.start()
            try:
                yield
            finally:
                for task in tasks:
                    task.cancel()
                if grpc_server is not None:
                    await grpc_server.stop(settings.graceful_timeout_s)
                await dataplane.stop()

        return lifespan


class HttpFront(Front):
    """The front answering HTTP itself: modelbay's uvicorn server (server.uvicorn_config: the read
    timeout, connection limit and drain of `modelbay serve`) on `settings.host:settings.port` of
    its node, the head node, with no Serve HTTP proxy in the way (modelbay.ray.app deploys it
    when a port is given; `modelbay serve --ray` does).

    Raises ModelLoadError (Serve: DEPLOY_FAILED, with the message) when the port is taken or the
    server does not start.
    """

    async def __init__(self, *args: Any) -> None:  # type: ignore[misc]  # Serve awaits it
        """Front's arguments (settings, models, board, options)."""
        super().__init__(*args)
        config = uvicorn_config(await self.build_app(), self.settings)
        try:
            listening = _listen(config.host, config.port)
        except OSError as exc:
            raise ModelLoadError(f"the front cannot listen on {config.host}:{config.port}: {exc}") from None
        self._http = _ServerInActor(config)
        self._serving = asyncio.get_running_loop().create_task(self._http.serve(sockets=[listening]))
        while not self._http.started:
            if self._serving.done():
                raise ModelLoadError("the front's HTTP server did not start (its replica's log says why)")
            await asyncio.sleep(0.05)

    def check_health(self) -> None:
        """Serve's health check: the front is replaced when its HTTP server has stopped."""
        if self._serving.done():
            raise RuntimeError("the front's HTTP server stopped")

    async def __del__(self) -> None:
        """Serve's graceful shutdown: the HTTP server drains (settings.graceful_timeout_s) and stops."""
        self._http.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._serving


class _ServerInActor(uvicorn.Server):
    """uvicorn's server, leaving the signals to Ray (which stops the actor on SIGTERM)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (SO_REUSEADDR, as uvicorn binds). Raises OSError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, reuse_port=False, backlog=2048)
