"""The `modelbay` command: `serve [PATH ...]`, `predict MODEL FILE...` and `version`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from modelbay import __version__
from modelbay.client import Client
from modelbay.errors import ModelbayError, ModelLoadError
from modelbay.registry.repository import is_repository, scan_repository
from modelbay.server import DEFAULT_MODEL, Server, run_workers
from modelbay.settings import Settings, environment


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelbay", description="Serve trained models over HTTP.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve model files, model folders or a model repository",
        description="Serve models. With no PATH (and no models in --config), serves the bundled digits "
        "classifier. Settings: these flags > --config YAML > MODELBAY_* environment variables.",
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
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    model = serve.add_argument_group("model (applies to every PATH)")
    model.add_argument("--name", help="model name in URLs (one PATH only; default: file or folder name)")
    model.add_argument("--model-version", dest="version", help="model version (default 1)")
    model.add_argument(
        "--format", help="skip detection: torchscript, exported, checkpoint, safetensors, onnx"
    )
    model.add_argument("--task", help="tensor (default) or image-classification")
    model.add_argument("--arch", help="package.module:Class that builds the network for a state_dict")
    model.add_argument("--arch-kwargs", type=json.loads, help="JSON object of keyword arguments for --arch")
    model.add_argument(
        "--trust-pickle",
        action="store_true",
        default=None,
        help="allow unpickling a full torch.save(model) file (runs code from the file)",
    )
    model.add_argument("--max-batch-size", type=int, help="most rows merged into one forward pass")
    model.add_argument("--max-queue-delay-ms", type=float, help="longest wait for a batch to fill, in ms")
    model.add_argument("--max-queue-size", type=int, help="most queued requests before 503")
    predict = commands.add_parser(
        "predict",
        help="send files to a running server's simple door and print the predictions",
        description="POST each FILE (e.g. an image) to /predict/MODEL and print the answer.",
    )
    predict.add_argument("model", metavar="MODEL")
    predict.add_argument("files", nargs="+", metavar="FILE")
    predict.add_argument("--url", default="http://127.0.0.1:8000", help="server URL (default %(default)s)")
    predict.add_argument("--model-version", dest="version", help="model version (default: the highest)")
    predict.add_argument("--json", action="store_true", help="one JSON object per line: file, predictions")
    commands.add_parser("version", help="print the version")
    return parser


def predict(args: argparse.Namespace) -> int:
    """Print the server's predictions for each file; exit status 1 if any request failed."""
    status = 0
    with Client(args.url) as client:
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


def _readable(predictions: Any) -> str:
    """Top-k answers as "label (score), ..."; anything else as compact JSON."""
    if (
        isinstance(predictions, list)
        and predictions
        and all(isinstance(p, dict) and {"label", "score"} <= p.keys() for p in predictions)
    ):
        return ", ".join(f"{p['label']} ({p['score']:.3f})" for p in predictions)
    return json.dumps(predictions)


def _model_entries(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.name and len(args.paths) > 1:
        raise ModelLoadError("--name needs exactly one PATH")
    common = {
        key: getattr(args, key)
        for key in ("name", "version", "format", "task", "arch", "arch_kwargs", "trust_pickle")
    }
    batching = {key: getattr(args, key) for key in ("max_batch_size", "max_queue_delay_ms", "max_queue_size")}
    overrides = {key: value for key, value in common.items() if value is not None}
    if any(value is not None for value in batching.values()):
        overrides["batching"] = {key: value for key, value in batching.items() if value is not None}
    entries = []
    for raw in args.paths:
        path = Path(raw)
        found = scan_repository(path) if is_repository(path) else [{"path": raw}]
        entries += [{**entry, **overrides} for entry in found]
    return entries


def serve(args: argparse.Namespace) -> int:
    """Load settings and models, then serve until interrupted. Returns the exit status."""
    logging.basicConfig(
        level=(args.log_level or "info").upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        flags = {
            key: getattr(args, key)
            for key in ("host", "port", "grpc_port", "workers", "max_body_bytes", "log_level")
        }
        overrides: dict[str, Any] = {key: value for key, value in flags.items() if value is not None}
        entries = _model_entries(args)
        if entries:
            overrides["models"] = entries
        settings = Settings.load(args.config, overrides, environment())
        if not settings.models:
            settings = Settings.load(
                args.config, {**overrides, "models": [{"path": str(DEFAULT_MODEL)}]}, environment()
            )
        server = Server(settings)
        server.load()
    except ModelLoadError as exc:
        print(f"modelbay: cannot serve: {exc.message}", file=sys.stderr)
        return 2
    names = ", ".join(f"{model.name} (version {model.version})" for model in server.registry)
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
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(__version__)
        return 0
    if args.command == "predict":
        try:
            return predict(args)
        except BrokenPipeError:  # whoever read our output stopped (`| head`): stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
