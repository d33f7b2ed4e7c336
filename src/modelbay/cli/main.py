"""The `modelbay` command: `serve [PATH ...]`, `predict MODEL FILE...`, `models`, `load MODEL`,
`unload MODEL`, `deploy FOLDER`, `default MODEL [VERSION]`, `traffic MODEL` (cli/repository.py),
`keys create / list / revoke` (cli/keys.py) and `version`.

The commands that call a server send the API key in `MODELBAY_API_KEY`, if set (a variable, not a
flag: a key on the command line would be seen in `ps` and the shell's history)."""

from __future__ import annotations

import argparse
import errno
import json
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from modelbay import logs
from modelbay._version import __version__
from modelbay.cli import bench, export, keys, repository, ship
from modelbay.client import Client
from modelbay.errors import ModelbayError, ModelLoadError
from modelbay.ray import cli as ray_cli
from modelbay.registry.repository import is_repository, scan_repository
from modelbay.server import DEFAULT_MODEL, Server, run_workers
from modelbay.settings import Settings, environment
from modelbay.types import DATATYPES

# `modelbay serve` flags, by the settings field each one sets.
SERVER_FLAGS = (
    "host",
    "port",
    "grpc_port",
    "workers",
    "max_body_bytes",
    "graceful_timeout_s",
    "read_timeout_s",
    "max_connections",
    "log_level",
    "log_format",
    "access_log",
    "tracing",
    "model_repository",
    "model_control_mode",
    "load_models",
    "repository_poll_s",
    "max_upload_bytes",
    "auth",
    "auth_health",
)
MODEL_FLAGS = (
    "name",
    "version",
    "format",
    "task",
    "arch",
    "arch_kwargs",
    "trust_pickle",
    "worker_process",
    "timeout_s",
    "preprocess_threads",
    "inputs",
    "outputs",
)
BATCHING_FLAGS = ("max_batch_size", "max_queue_delay_ms", "max_queue_size")
API_KEY = "MODELBAY_API_KEY"  # the key the client commands send


def tensor_spec(text: str) -> dict[str, Any]:
    """`NAME:DATATYPE:SHAPE` (`--input x:FP32:-1,4`) as a TensorConfig dict; -1 in SHAPE is any
    size, and `NAME:DATATYPE` leaves the shape unknown (not checked).

    Raises argparse.ArgumentTypeError, which argparse reports with the usage and exit status 2.
    """
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0]:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME:DATATYPE:SHAPE, e.g. x:FP32:-1,4")
    datatype = parts[1].upper()
    if datatype not in DATATYPES:
        raise argparse.ArgumentTypeError(
            f"{text!r}: unknown datatype {parts[1]!r}; expected one of {', '.join(DATATYPES)}"
        )
    spec: dict[str, Any] = {"name": parts[0], "datatype": datatype}
    if len(parts) == 3:
        try:
            spec["shape"] = [int(dim) for dim in parts[2].split(",")]
        except ValueError:
            spec["shape"] = None
        if spec["shape"] is None or any(dim < -1 for dim in spec["shape"]):
            raise argparse.ArgumentTypeError(
                f"{text!r}: SHAPE must be sizes separated by commas, each >= 0 or -1 (any size)"
            )
    return spec


def parser() -> argparse.ArgumentParser:
    """The `modelbay` command line: `serve`, `predict`, `models`, `load`, `unload` and `version`."""
    root = argparse.ArgumentParser(prog="modelbay", description="Serve trained models over HTTP.")
    commands = root.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve model files, model folders or a model repository",
        description="Serve models. With no PATH (and no models in --config), serves the bundled digits "
        "classifier. Settings: these flags > --config YAML > MODELBAY_* environment variables > "
        "defaults; a model's: these flags > its --config entry > its folder's modelbay.yaml > defaults.",
    )
    serve.add_argument(
        "paths", nargs="*", metavar="PATH", help="model file, model folder or model repository"
    )
    serve.add_argument("--config", help="YAML file with server settings and a models: list")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="HTTP port (default 8000; 0 picks a free one)")
    serve.add_argument("--grpc-port", type=int, help="OIP gRPC port (default 8001; 0 disables gRPC)")
    serve.add_argument("--max-body-bytes", type=int, help="largest request body, in bytes (default 16 MiB)")
    serve.add_argument(
        "--workers", type=int, help="server processes sharing the ports (default 1; up to one per core)"
    )
    serve.add_argument(
        "--graceful-timeout-s", type=float, help="on SIGTERM, seconds in-flight requests may still take (30)"
    )
    serve.add_argument(
        "--read-timeout-s", type=float, help="seconds a request's headers, then its body, may take (30)"
    )
    serve.add_argument(
        "--max-connections", type=int, help="HTTP connections at once; past it, 503 at once (1000)"
    )
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-format", choices=["text", "json"], help="log lines as text (default) or JSON")
    serve.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        help="a log line per request: id, model, version, status, latency, batch size, caller (default off)",
    )
    serve.add_argument(
        "--tracing",
        action=argparse.BooleanOptionalAction,
        help="OpenTelemetry traces of every request, exported as the OTEL_* variables say (default off)",
    )
    live = serve.add_argument_group("live model repository (Triton's model control)")
    live.add_argument(
        "--model-repository",
        metavar="FOLDER",
        help="a model repository served live: rescanned on each load and poll, uploads written there "
        "(may be empty); a PATH that is a repository is this too",
    )
    live.add_argument(
        "--model-control-mode",
        choices=["explicit", "poll", "none"],
        help="explicit (default): load and unload through the API; poll: also rescan the repository "
        "every --repository-poll-s; none: the models of the start, as they are",
    )
    live.add_argument(
        "--load-model",
        dest="load_models",
        action="append",
        metavar="NAME",
        help="explicit mode: load only this repository model at start; repeat for each (default: all)",
    )
    live.add_argument("--repository-poll-s", type=float, help="poll mode: seconds between rescans (15)")
    live.add_argument(
        "--max-upload-bytes", type=int, help="largest model upload (a load with files), in bytes (256 MiB)"
    )
    access = serve.add_argument_group("API keys (modelbay keys)")
    access.add_argument(
        "--auth",
        metavar="FILE",
        help="the API key file: every request then needs a key of it (401 / 403 / 429); "
        "the file is read again when it changes",
    )
    access.add_argument(
        "--auth-health",
        action=argparse.BooleanOptionalAction,
        help="with --auth: health, /v2, /metrics and the docs need a key too (default: open)",
    )
    _model_arguments(serve.add_argument_group("model (applies to every PATH, or every model in --config)"))
    ray_cli.add_arguments(serve)
    predict = commands.add_parser(
        "predict",
        help="send files to a running server's simple door and print the predictions",
        description="POST each FILE (e.g. an image) to /predict/MODEL and print the answer.",
    )
    predict.add_argument("model", metavar="MODEL")
    predict.add_argument("files", nargs="+", metavar="FILE")
    predict.add_argument(
        "--url", help="server URL (default: http://MODELBAY_HOST:MODELBAY_PORT, else http://127.0.0.1:8000)"
    )
    predict.add_argument("--model-version", dest="version", help="model version (default: the highest)")
    predict.add_argument("--json", action="store_true", help="one JSON object per line: file, predictions")
    repository.add_parsers(commands)
    keys.add_parser(commands)
    ship.add_parsers(commands)
    export.add_parser(commands)
    bench.add_parser(commands)
    commands.add_parser("version", help="print the version")
    return root


def _model_arguments(model: argparse._ArgumentGroup) -> None:
    model.add_argument("--name", help="model name in URLs (one model only; default: file or folder name)")
    model.add_argument("--model-version", dest="version", help="model version (default 1)")
    model.add_argument("--task", help="tensor (default) or image-classification")
    artifact_arguments(model)
    model.add_argument(
        "--worker-process",
        action=argparse.BooleanOptionalAction,
        help="run the model in a model worker process of its own (restarted if it crashes or hangs)",
    )
    model.add_argument("--max-batch-size", type=int, help="most rows merged into one forward pass")
    model.add_argument("--max-queue-delay-ms", type=float, help="longest wait for a batch to fill, in ms")
    model.add_argument("--max-queue-size", type=int, help="most queued requests before 503")
    model.add_argument(
        "--timeout-s", type=float, help="longest a request may take, in seconds, before 504 (60)"
    )
    model.add_argument(
        "--preprocess-threads", type=int, help="threads of the model's own pool for its request hooks (2)"
    )


def artifact_arguments(model: argparse._ArgumentGroup) -> None:
    """The flags that say how to read a model's artifact (`serve` and `export`): --format, --arch,
    --arch-kwargs, --trust-pickle, --input and --output (each NAME:DATATYPE:SHAPE, repeatable)."""
    model.add_argument(
        "--format", help="skip detection: torchscript, exported, checkpoint, safetensors, onnx"
    )
    model.add_argument("--arch", help="package.module:Class that builds the network for a state_dict")
    model.add_argument("--arch-kwargs", type=json.loads, help="JSON object of keyword arguments for --arch")
    model.add_argument(
        "--trust-pickle",
        action=argparse.BooleanOptionalAction,
        help="allow unpickling a full torch.save(model) file (runs code from the file)",
    )
    for role in ("input", "output"):
        model.add_argument(
            f"--{role}",
            dest=f"{role}s",
            action="append",
            type=tensor_spec,
            metavar="NAME:DATATYPE:SHAPE",
            help=f"declare a model {role}, e.g. x:FP32:-1,4 (-1: any size); repeat for each, in order",
        )


def predict(args: argparse.Namespace) -> int:
    """Print the server's predictions for each file; exit status 1 if any request failed, 2 if
    MODELBAY_HOST / MODELBAY_PORT (read when --url is not given) are not a host and a port."""
    try:
        url = args.url or default_url(environment())
    except ModelLoadError as exc:
        print(f"modelbay: {exc.message}", file=sys.stderr)
        return 2
    status = 0
    with Client(url, api_key=environment().get(API_KEY)) as client:
        for name in args.files:
            try:
                predictions = client.predict(args.model, Path(name), version=args.version)
            except (ModelbayError, OSError, httpx.HTTPError) as exc:
                print(f"modelbay: {name}: {exc}", file=sys.stderr)
                status = 1
                continue
            if args.json:
                print(json.dumps({"file": name, "predictions": predictions}))
            else:
                print(f"{name}: {_readable(predictions)}")
    return status


def default_url(environ: Mapping[str, str]) -> str:
    """The URL of a `modelbay serve` on this machine started with the same `MODELBAY_HOST` and
    `MODELBAY_PORT` in `environ` (default http://127.0.0.1:8000). A wildcard host (0.0.0.0, ::)
    is reached on loopback. Raises ModelLoadError when they are not a host and a port."""
    names = ("MODELBAY_HOST", "MODELBAY_PORT")
    settings = Settings.load(environ={name: environ[name] for name in names if name in environ})
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(settings.host, settings.host)
    return f"http://{f'[{host}]' if ':' in host else host}:{settings.port}"


def _readable(predictions: Any) -> str:
    """Top-k answers as "label (score), ..."; anything else as compact JSON."""
    if (
        isinstance(predictions, list)
        and predictions
        and all(isinstance(p, dict) and {"label", "score"} <= p.keys() for p in predictions)
    ):
        return ", ".join(f"{p['label']} ({p['score']:.3f})" for p in predictions)
    return json.dumps(predictions)


def serve_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """The settings `modelbay serve` runs with: its flags over --config over `environ`'s MODELBAY_*
    variables; the model flags over every model's entry over its folder's modelbay.yaml.

    Models: the PATHs, else --config's models:, else the bundled digits classifier; a PATH that is
    a model repository is served live (`model_repository`) unless one is set otherwise (then its
    models are served as found at start, like a list of PATHs). Raises ModelLoadError for a bad
    value or --name with more than one model.
    """
    given = {key: getattr(args, key) for key in SERVER_FLAGS}
    overrides: dict[str, Any] = {key: value for key, value in given.items() if value is not None}
    model_flags = _model_flags(args)
    paths = [Path(raw) for raw in args.paths]
    repositories = [path for path in paths if is_repository(path)]
    if len(repositories) == 1 and args.model_repository is None:  # served live
        overrides["model_repository"] = str(repositories[0])
        paths.remove(repositories[0])
    entries = [entry for path in paths for entry in _path_entries(path)]
    if entries:
        overrides["models"] = entries
    settings = Settings.load(args.config, overrides, environ, model_flags)
    if not settings.models and settings.model_repository is None:
        overrides["models"] = [{"path": str(DEFAULT_MODEL)}]
        settings = Settings.load(args.config, overrides, environ, model_flags)
    if args.name and len(settings.models) > 1:
        raise ModelLoadError(f"--name needs exactly one model, not {len(settings.models)}")
    return settings


def _model_flags(args: argparse.Namespace) -> dict[str, Any]:
    flags = {key: getattr(args, key) for key in MODEL_FLAGS if getattr(args, key) is not None}
    batching = {key: getattr(args, key) for key in BATCHING_FLAGS if getattr(args, key) is not None}
    return {**flags, "batching": batching} if batching else flags


def _path_entries(path: Path) -> list[dict[str, Any]]:
    return scan_repository(path) if is_repository(path) else [{"path": str(path)}]


def unbindable(host: str, port: int) -> OSError | None:
    """Why `port` on `host` cannot be listened on now (e.g. EADDRINUSE), or None when it can.

    Binds a probe as uvicorn (asyncio's create_server) and gRPC do: every address `host` resolves
    to, SO_REUSEADDR (a port in TIME_WAIT is free), IPv6 sockets v6-only, and an address family the
    machine lacks (EADDRNOTAVAIL) skipped. No SO_REUSEPORT, even with --workers > 1 (where gRPC
    uses it): nothing of ours listens yet, so a process holding the port that way is not ours.
    """
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        return exc
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno != errno.EADDRNOTAVAIL:
                    return exc
    return None


def port_problem(settings: Settings) -> str | None:
    """A one-line reason why the HTTP or gRPC port of `settings` cannot be served, or None."""
    doors = (
        ("HTTP", settings.port, "--port N, or 0 for a free one"),
        ("gRPC", settings.grpc_port, "--grpc-port N, or 0 for no gRPC"),
    )
    for door, port, instead in doors:
        error = unbindable(settings.host, port) if port else None
        if error is None:
            continue
        if error.errno == errno.EADDRINUSE:
            return f"port {port} on {settings.host} is in use ({door}; pass {instead})"
        return f"cannot listen on port {port} on {settings.host} ({door}): {error.strerror or error}"
    return None


def serve(args: argparse.Namespace) -> int:
    """Load settings and models, then serve until interrupted. Returns the exit status: 2 when a
    setting, a model or a port stops it before anything listens."""
    logs.configure(args.log_level or "info", args.log_format or "text")
    try:
        settings = serve_settings(args, environment())
        logs.configure(settings.log_level, settings.log_format, settings.access_log)
        on_ray = ray_cli.options(args)
        if on_ray is not None:
            return ray_cli.serve(settings, on_ray, args.ray)
        problem = port_problem(settings)  # before loading: a busy port is known in a moment
        if problem is not None:
            print(f"modelbay: cannot serve: {problem}", file=sys.stderr)
            return 2
        server = Server(settings)
        server.load()
    except ModelLoadError as exc:
        print(f"modelbay: cannot serve: {exc.message}", file=sys.stderr)
        return 2
    names = ", ".join(f"{model.name} (version {model.version})" for model in server.registry)
    if settings.model_repository is not None:
        where_from = f"the model repository {settings.model_repository}"
        names = f"{names or 'no model yet'} from {where_from} ({settings.model_control_mode} mode)"
    where = f"http://{settings.host}:{settings.port}" if settings.port else "a free port (uvicorn logs it)"
    if settings.grpc_port:
        where += f" and grpc://{settings.host}:{settings.grpc_port}"
    workers = f" with {settings.workers} workers" if settings.workers > 1 else ""
    print(f"modelbay: serving {names} on {where}{workers}", file=sys.stderr)
    if settings.workers > 1:
        del server  # it proved every model loads; each worker now loads its own copy
        run_workers(settings)
        return 0
    try:
        server.run()
    except RuntimeError as exc:
        print(f"modelbay: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `modelbay` command."""
    args = parser().parse_args(argv)
    if args.command == "version":
        print(__version__)
        return 0
    if args.command in ("models", "load", "unload", "deploy", "default", "traffic"):
        try:
            url = args.url or default_url(environment())
        except ModelLoadError as exc:
            print(f"modelbay: {exc.message}", file=sys.stderr)
            return 2
        return repository.run(args, url, environment().get(API_KEY))
    if args.command == "keys":
        return keys.run(args, environment())
    if args.command in ("build", "manifests"):
        return ship.run(args)
    if args.command == "export":
        return export.run(args)
    if args.command == "bench":
        return bench.run(args, environment().get(API_KEY))
    if args.command == "predict":
        try:
            return predict(args)
        except BrokenPipeError:  # whoever read our output stopped (`| head`): stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
