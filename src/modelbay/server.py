"""`Server`: wires settings, models, the dataplane and the HTTP app, and runs them under uvicorn.

    server = modelbay.Server(settings); server.add_model("digits", module, example=x)
    server.start()   # returns once listening; server.url
    ...
    server.stop()

`serve(...)` is the blocking one-liner for a model in memory or on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, cast

import msgspec
import uvicorn
from starlette.applications import Starlette
from uvicorn.supervisors import Multiprocess

from modelbay import logs
from modelbay.auth.access import Access
from modelbay.errors import ModelLoadError
from modelbay.grpc.servicer import create_grpc_server
from modelbay.http.app import ModelbayApp, create_app
from modelbay.http.protocol import ReadTimeoutProtocol
from modelbay.loading import LoadedModel, load_model
from modelbay.metrics import shared_folder
from modelbay.predictor import Predictor
from modelbay.registry.load_log import LoadLog
from modelbay.registry.manager import ModelManager, ServerModels, build_served_model
from modelbay.registry.registry import ModelRegistry, ServedModel
from modelbay.registry.repository import Fingerprint, ModelRepository
from modelbay.runtime.dataplane import Dataplane
from modelbay.runtime.process import own_process
from modelbay.settings import BatchingConfig, CacheConfig, ModelConfig, Settings
from modelbay.tasks.tensor import TensorPredictor

if TYPE_CHECKING:
    import torch  # torch is optional (modelbay[torch]): imported only where a torch model is served

    from modelbay.runtime.tracing import Tracing

BUILTIN_DIR = Path(__file__).parent / "builtin"
SEVERAL_WORKERS = (
    "with --workers > 1 the repository API cannot change models (each worker process would change "
    "only its own); use --model-control-mode poll, which keeps every worker in line with the repository"
)
log = logging.getLogger("modelbay.server")
DEFAULT_MODEL = BUILTIN_DIR / "digits"


class Server:
    """One modelbay process: the models of `settings` plus any added in code, behind HTTP.

    Models are loaded and set up in `load()` (called by `start`/`run`), before the port is bound,
    so a model that cannot load raises ModelLoadError and nothing listens.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.registry = ModelRegistry()
        self._pending: list[LoadedModel] = []
        # What was loaded at start and from where: what the model manager loads again.
        self.models = ServerModels({}, {}, None)
        self.access: Access | None = None  # the API keys of `settings.auth`, read by load()
        self._tracing: Tracing | None = None  # with `settings.tracing`: made by load(), ended by the app
        self.load_log = LoadLog()  # each version's lines of its last load, those of the start too
        self._uvicorn: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._drain: Callable[[], object] | None = None  # begins the drain, from any thread

    def add_model(
        self,
        name: str,
        model: torch.nn.Module | Predictor,
        *,
        example: torch.Tensor | Sequence[torch.Tensor] | None = None,
        version: str = "1",
        batching: BatchingConfig | None = None,
        cache: CacheConfig | None = None,
        timeout_s: float | None = 60.0,
        preprocess_threads: int = 2,
    ) -> None:
        """Serve an in-memory model under `name`.

        model:   a torch.nn.Module (served as tensors in, tensors out) or a Predictor.
        example: an example batch (tensor, or tuple of tensors for several inputs) giving input
                 dtypes and shapes; the batch dimension becomes dynamic. Without it, inputs are
                 named after `forward`'s parameters and not shape-checked.
        batching, cache, timeout_s, preprocess_threads: as in modelbay.yaml (ModelConfig; defaults:
                 BatchingConfig(), no cache, 60 s, 2 threads).
        """
        loaded_torch = sys.modules.get("torch")  # an nn.Module exists only once torch is imported
        if loaded_torch is not None and isinstance(model, loaded_torch.nn.Module):
            from modelbay.loading.torch_runner import TorchRunner, example_inputs, signature_inputs

            model.eval()
            names = [spec.name for spec in signature_inputs(model)]
            inputs = example_inputs(example, names) if example is not None else signature_inputs(model)
            predictor: Predictor = TensorPredictor(TorchRunner(model, "pytorch_eager", inputs))
        else:
            predictor = cast(Predictor, model)
        config = ModelConfig(
            name=name,
            version=version,
            batching=batching or BatchingConfig(),
            cache=cache,
            timeout_s=timeout_s,
            preprocess_threads=preprocess_threads,
        )
        self._pending.append(LoadedModel(config, predictor))

    def load(self) -> None:
        """Build and set up every model not loaded yet: those added in code, the `models:` of the
        settings, and those of `model_repository` (in explicit mode, only `load_models` when it
        names some); and the API key file of `auth`, once. Raises ModelLoadError naming the model,
        or the key file and its problem."""
        if self.settings.auth is not None and self.access is None:
            self.access = Access.from_file(self.settings.auth, health=self.settings.auth_health)
        if self.settings.tracing:
            self._tracing = self._tracing or traces(self.settings)
        for entry in self.settings.models:
            self._pending.append(load_model(entry))
        self.settings = msgspec.structs.replace(self.settings, models=[])
        pending, self._pending = self._pending, []
        for loaded in pending:
            with self.load_log.capture(loaded.name, loaded.config.version):
                model = build_served_model(loaded)
            self._add(model)
            self.models.sources.setdefault(model.name, {})[model.version] = loaded
        if self.settings.model_repository is not None and self.models.repository is None:
            self._load_repository(Path(self.settings.model_repository))

    def _load_repository(self, root: Path) -> None:
        if not root.is_dir():
            raise ModelLoadError(f"the model repository {root} is not a folder")
        settings = self.settings
        repository = ModelRepository(root, settings.model_overrides)
        names = repository.names()
        polled = {name: repository.fingerprints(name) for name in names}  # before loading (ServerModels)
        if settings.model_control_mode == "explicit" and settings.load_models:
            unknown = sorted(set(settings.load_models) - set(names))
            if unknown:
                raise ModelLoadError(
                    f"--load-model names {unknown}, not in the model repository {root} (it holds {names})"
                )
            names = [name for name in names if name in settings.load_models]
        stamps: dict[tuple[str, str], Fingerprint] = {}
        for name in names:
            for version, found in repository.versions(name).items():
                with self.load_log.capture(name, version):
                    log.info("loading model %r version %s from %s", name, version, found.config.path)
                    self._add(build_served_model(load_model(found.config)))
                stamps[(name, version)] = found.fingerprint
        self.models = ServerModels(self.models.sources, stamps, repository, polled)

    def _add(self, model: ServedModel) -> None:
        try:
            self.registry.add(model)
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from exc

    def app(self) -> ModelbayApp:
        """The ASGI app over the loaded models (call `load()` first).

        Its lifespan starts the batchers and, when `grpc_port` is set, the gRPC door on the same
        event loop and dataplane; it raises RuntimeError at startup if the gRPC port cannot be bound.
        On SIGTERM / SIGINT (or `stop()`) both doors drain together within `graceful_timeout_s`
        (ModelbayApp.drain). With API keys, both doors check them (`self.access`), and the key
        file is read again when it changes (Access.watch).
        """
        settings = self.settings
        logs.ACCESS.disabled = not settings.access_log  # the access lines of this process (modelbay.logs)
        tracing = self._tracing or traces(settings)
        dataplane = Dataplane(self.registry, tracing=tracing)
        grace = settings.graceful_timeout_s
        access = self.access
        dataplane.manager = manager = ModelManager(
            self.registry,
            dataplane,
            self.models,
            grace,
            mode=settings.model_control_mode,
            # Each worker would change only its own copy; poll mode keeps them all in line with the disk.
            refused=SEVERAL_WORKERS if settings.workers > 1 else None,
            max_upload_bytes=settings.max_upload_bytes,
            load_log=self.load_log,
        )

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            await dataplane.start()
            grpc_server = None
            polling = None
            if settings.model_control_mode == "poll" and manager.repository is not None:
                polling = asyncio.create_task(manager.poll(settings.repository_poll_s))
            watching = asyncio.create_task(access.watch()) if access is not None else None
            try:
                if settings.grpc_port:
                    address = f"{settings.host}:{settings.grpc_port}"
                    grpc_server = create_grpc_server(
                        dataplane,
                        address,
                        settings.max_body_bytes,
                        reuse_port=settings.workers > 1,
                        access=access,
                    )
                    await grpc_server.start()
                    # A little past the drain deadline, so the 503s given at the deadline go out.
                    served.on_drain.append(lambda grace_s: grpc_server.stop(grace_s + 1.0))
                loop = asyncio.get_running_loop()
                self._drain = lambda: loop.call_soon_threadsafe(served.drain, grace)
                _drain_on_exit_signals(self._drain)
                yield
            finally:
                self._drain = None
                if polling is not None:
                    polling.cancel()
                if watching is not None:
                    watching.cancel()
                if not await served.drained() and grpc_server is not None:
                    await grpc_server.stop(grace)
                await dataplane.stop()
                if tracing is not None:
                    tracing.shutdown()  # the spans still buffered are exported
                    self._tracing = None

        served = create_app(
            dataplane,
            settings.max_body_bytes,
            lifespan,
            max_upload_bytes=settings.max_upload_bytes,
            access=access,
        )
        return served

    def tune_process(self) -> None:
        """Settle this process for serving, once the models are loaded.

        Freezes the objects loaded so far out of the cyclic GC's work, and caps torch's threads at
        this process's share of its cores.
        """
        # Everything loaded so far (torch, the models) is long-lived: keep the cyclic GC from walking
        # it again on every full collection, which otherwise stalls requests (p99 75 ms -> 8 ms for
        # Linear(64->10) under load; benchmarks/README.md).
        gc.collect()
        gc.freeze()
        # torch sizes its pool to the machine; a server pinned to fewer cores, or one of several
        # workers, would oversubscribe them.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        share = max(1, cores // max(1, self.settings.workers))
        loaded_torch = sys.modules.get("torch")  # imported by a torch model only
        if loaded_torch is not None and loaded_torch.get_num_threads() > share:
            loaded_torch.set_num_threads(share)

    def _uvicorn_server(self) -> uvicorn.Server:
        self.load()
        self.tune_process()
        return uvicorn.Server(uvicorn_config(self.app(), self.settings))

    def run(self) -> None:
        """Load, listen and serve until SIGINT/SIGTERM (Ctrl-C), then shut down gracefully. Blocks."""
        self._uvicorn = self._uvicorn_server()
        own_process()
        # uvicorn re-raises the captured Ctrl-C after its graceful shutdown; that is a normal end here.
        with contextlib.suppress(KeyboardInterrupt):
            self._uvicorn.run()
        if not self._uvicorn.started:
            raise RuntimeError("the server failed to start; the log above says why")

    def start(self, timeout_s: float = 60.0) -> None:
        """Load, then serve on a background thread; returns once listening.

        Raises ModelLoadError before listening, or RuntimeError if the server did not start
        within `timeout_s` seconds (e.g. the port is taken).
        """
        server = self._uvicorn = self._uvicorn_server()
        self._thread = threading.Thread(target=server.run, name="modelbay-server", daemon=True)
        self._thread.start()
        waited = threading.Event()
        for _ in range(int(timeout_s * 100)):
            if server.started or not self._thread.is_alive():
                break
            waited.wait(0.01)
        if not server.started:
            self.stop()
            raise RuntimeError(f"server did not start on {self.settings.host}:{self.settings.port}")

    def stop(self) -> None:
        """Stop serving: in-flight requests get `graceful_timeout_s` to finish (then 503), the
        batchers stop, the thread is joined."""
        if self._drain is not None:
            self._drain()
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    @property
    def port(self) -> int:
        """The bound port (useful with port 0). Raises RuntimeError before start."""
        sockets = self._uvicorn.servers[0].sockets if self._uvicorn and self._uvicorn.servers else ()
        if not sockets:
            raise RuntimeError("server is not listening")
        return int(sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        """http://host:port of the running server."""
        return f"http://{self.settings.host}:{self.port}"


WORKER_SETTINGS = "MODELBAY_WORKER_SETTINGS"


def run_workers(settings: Settings) -> None:
    """Serve `settings` from `settings.workers` processes sharing the HTTP port (and gRPC's). Blocks.

    uvicorn's supervisor starts the workers, each loading its own copy of the models
    (Predictor.setup runs once per worker), and restarts any that dies. Load the models once with
    `Server(settings).load()` before calling this, so a model that cannot load fails before anything
    listens (the CLI does).
    """
    os.environ[WORKER_SETTINGS] = msgspec.json.encode(settings).decode()
    config = uvicorn_config(f"{__name__}:worker_app", settings, factory=True, workers=settings.workers)
    # What uvicorn.run does for workers, with our Config: it carries read_timeout_s to them.
    with shared_folder():  # /metrics of any worker reports all of them (modelbay/metrics.py)
        sock = config.bind_socket()
        with contextlib.suppress(KeyboardInterrupt):
            Multiprocess(config, sockets=[sock]).run()


def uvicorn_config(app: ModelbayApp | str, settings: Settings, **extra: Any) -> uvicorn.Config:
    """The uvicorn Config for `settings`: address, logging, the protocol with the read timeout,
    the connection limit (503 past it) and the drain backstop; `extra` adds Config keywords."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,  # modelbay writes its own access lines (modelbay.logs)
        log_config=None,  # modelbay.logs.configure sets up logging, uvicorn's loggers included
        lifespan="on",
        proxy_headers=False,  # clients reach modelbay directly; nothing to rewrite per request
        http=ReadTimeoutProtocol,
        limit_concurrency=settings.max_connections,
        # modelbay answers what is left at graceful_timeout_s (ModelbayApp.drain); uvicorn cancels
        # whatever still runs a little later, a backstop for anything outside the dataplane.
        timeout_graceful_shutdown=math.ceil(settings.graceful_timeout_s) + 2,
        **extra,
    )
    config.read_timeout_s = settings.read_timeout_s  # type: ignore[attr-defined]  # ReadTimeoutProtocol
    return config


def traces(settings: Settings) -> Tracing | None:
    """The OpenTelemetry traces of this process with `settings.tracing` (runtime/tracing.py), else
    None. Raises ModelLoadError when the SDK is not installed (modelbay[tracing]) or
    OTEL_TRACES_EXPORTER names an exporter modelbay does not ship (`Server.load` checks first)."""
    if not settings.tracing:
        return None
    try:
        from modelbay.runtime.tracing import Tracing
    except ImportError as exc:
        raise ModelLoadError(
            f"--tracing needs the OpenTelemetry SDK: pip install 'modelbay[tracing]' ({exc})"
        ) from exc
    return Tracing.from_environment()


def _drain_on_exit_signals(drain: Callable[[], object]) -> None:
    """Call `drain` when SIGTERM or SIGINT arrives, then uvicorn's own handler (which stops the loop).

    Only in the main thread (where uvicorn installed its handlers); `Server.stop()` drains otherwise.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(signum)
        if not callable(previous):
            continue

        def handler(number: int, frame: FrameType | None, previous: Callable[..., Any] = previous) -> None:
            drain()
            previous(number, frame)

        signal.signal(signum, handler)


def worker_app() -> ModelbayApp:
    """The app of one worker process: settings from the environment, models loaded here (uvicorn factory)."""
    settings = msgspec.json.decode(os.environ[WORKER_SETTINGS], type=Settings)
    logs.configure(settings.log_level, settings.log_format, settings.access_log)
    server = Server(settings)
    server.load()
    server.tune_process()
    own_process()
    return server.app()


def serve(
    model: torch.nn.Module | Predictor | str | Path | None = None,
    name: str | None = None,
    example: torch.Tensor | Sequence[torch.Tensor] | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    grpc_port: int = 8001,
    max_batch_size: int | None = None,
    max_queue_delay_ms: float | None = None,
    max_queue_size: int | None = None,
) -> None:
    """Serve one model until Ctrl-C: an nn.Module or Predictor in memory, or a file/folder path.

    name defaults to "model" in memory, else to the file's or folder's name. With no model,
    serves the bundled digits classifier. The batching arguments left as None keep the model
    folder's modelbay.yaml values, else BatchingConfig's defaults; any given wins, whatever its
    value. Raises ModelLoadError before listening when the model cannot be loaded.
    """
    given = {
        key: value
        for key, value in (
            ("max_batch_size", max_batch_size),
            ("max_queue_delay_ms", max_queue_delay_ms),
            ("max_queue_size", max_queue_size),
        )
        if value is not None
    }
    listen = {"host": host, "port": port, "grpc_port": grpc_port}
    if model is None or isinstance(model, str | Path):
        entry: dict[str, Any] = {"path": str(model or DEFAULT_MODEL), "batching": given}
        if name is not None:
            entry["name"] = name
        server = Server(Settings.load(overrides={**listen, "models": [entry]}))
    else:
        server = Server(Settings.load(overrides=listen))
        server.add_model(
            name or "model", model, example=example, batching=msgspec.convert(given, BatchingConfig)
        )
    server.run()
