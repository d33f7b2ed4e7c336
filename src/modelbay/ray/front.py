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

Management: the index lists the versions served; the default version and traffic policies are
set here, in this front (one replica), as on one machine. Loading and unloading are refused with
the way to do it on a cluster: deploy the application again, and Serve updates each changed
deployment with a rolling update.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import msgspec
import uvicorn
from ray.serve.handle import DeploymentHandle
from starlette.applications import Starlette

from modelbay.auth.access import Access
from modelbay.errors import InvalidInput, ModelLoadError
from modelbay.grpc.servicer import create_grpc_server
from modelbay.http.app import ModelbayApp, create_app
from modelbay.ray.metrics import PUSH_S, ClusterMetrics
from modelbay.ray.remote import RemoteModel
from modelbay.registry.manager import ModelManager, ServerModels
from modelbay.registry.registry import ModelRegistry
from modelbay.runtime.dataplane import Dataplane
from modelbay.server import traces, uvicorn_config
from modelbay.settings import ModelConfig, Settings

log = logging.getLogger("modelbay.ray")
# Longest the front waits for a replica of each version to describe its model at start (the
# replicas load their models meanwhile).
DESCRIBE_TIMEOUT_S = 600.0
REDEPLOY = (
    "on a Ray cluster, models change with the application: deploy it again (`serve deploy` of a "
    "config whose import_path is modelbay.ray:app, or `serve run modelbay.ray:app`) and Serve updates "
    "each changed deployment with a rolling update"
)


class ClusterManager(ModelManager):
    """The model manager of the front: the index, the default version and traffic policies work
    as on one machine; load and unload raise InvalidInput saying how to change models on Ray."""

    async def load(
        self, name: str, config: Mapping[str, Any] | None = None, files: Mapping[str, bytes] | None = None
    ) -> None:
        raise InvalidInput(f"cannot load model {name!r} through the API: {REDEPLOY}")

    async def unload(self, name: str) -> None:
        raise InvalidInput(f"cannot unload model {name!r} through the API: {REDEPLOY}")


class Front:
    """The ingress deployment class (modelbay.ray.app wraps it with serve.ingress).

    settings: the server's Settings as builtins (its models list empty): body limits, API keys,
              gRPC port and host, model control mode, drain time.
    models:   (the version's ModelConfig as builtins, the handle of its deployment), per version.
    board:    the application's MetricsBoard, read every PUSH_S seconds for /metrics.
    """

    def __init__(
        self,
        settings: dict[str, Any],
        models: list[tuple[dict[str, Any], DeploymentHandle]],
        board: DeploymentHandle,
    ) -> None:
        self.settings = msgspec.convert(settings, Settings)
        self._models = models
        self._board = board
        self.dataplane: Dataplane | None = None

    async def __serve_build_asgi_app__(self) -> ModelbayApp:
        """The app behind Serve's HTTP proxy (Serve calls this once, after the constructor)."""
        return await self.build_app()

    async def build_app(self) -> ModelbayApp:
        """modelbay's HTTP app over the versions' stand-ins. Raises ModelLoadError when a
        version's replicas do not describe their model within DESCRIBE_TIMEOUT_S."""
        settings = self.settings
        registry = ModelRegistry()
        for (config, handle), description in zip(self._models, await self._describe(), strict=True):
            registry.add(RemoteModel.of(msgspec.convert(config, ModelConfig), description, handle))
        metrics = ClusterMetrics()
        dataplane = self.dataplane = Dataplane(registry, metrics, tracing=traces(settings))
        dataplane.manager = ClusterManager(
            registry,
            dataplane,
            ServerModels({}, {}, None),
            settings.graceful_timeout_s,
            mode=settings.model_control_mode,
            max_upload_bytes=settings.max_upload_bytes,
        )
        access = Access.from_file(settings.auth, health=settings.auth_health) if settings.auth else None
        lifespan = self._lifespan(dataplane, metrics, access)
        return create_app(
            dataplane,
            settings.max_body_bytes,
            lifespan,
            max_upload_bytes=settings.max_upload_bytes,
            access=access,
        )

    async def _describe(self) -> list[dict[str, Any]]:
        """ModelReplica.describe() of one replica of each version, in `models` order."""
        calls = [handle.describe.remote() for _, handle in self._models]
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

    async def __init__(  # type: ignore[misc]  # Serve awaits an async constructor
        self,
        settings: dict[str, Any],
        models: list[tuple[dict[str, Any], DeploymentHandle]],
        board: DeploymentHandle,
    ) -> None:
        super().__init__(settings, models, board)
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
