"""`modelbay models`, `load MODEL`, `unload MODEL`, `deploy FOLDER`, `default MODEL [VERSION]`:
a running server's model repository, through the OIP model repository extension (REST or gRPC;
`default` is modelbay's own REST route)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import stat
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from modelbay.client import Client
from modelbay.errors import ModelbayError

URL_HELP = "server URL (default: http://MODELBAY_HOST:MODELBAY_PORT, else http://127.0.0.1:8000)"


def add_parsers(commands: Any) -> None:
    """Add the repository commands to the `modelbay` subparsers `commands`."""
    models = commands.add_parser(
        "models",
        help="list a running server's model versions and their states",
        description="The model repository index: name, version, state (READY, LOADING, UNLOADING, "
        "UNAVAILABLE, FAILED) and why.",
    )
    models.add_argument("--ready", action="store_true", help="only the READY versions")
    models.add_argument("--json", action="store_true", help="the index as JSON")
    models.add_argument("--url", help=URL_HELP)
    for name, text in (
        ("load", "load (or reload) MODEL from where the server found it; returns once it serves"),
        ("unload", "unload MODEL once its requests in flight are done"),
    ):
        command = commands.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        command.add_argument("model", metavar="MODEL")
        command.add_argument("--url", help=URL_HELP)
    deploy = commands.add_parser(
        "deploy",
        help="send a model folder to a running server as a new version, and load it",
        description="Send every file of FOLDER (model file, modelbay.yaml and/or predict.py, "
        "requirements.txt, other files) as a new version of a model in the server's model "
        "repository (`modelbay serve --model-repository`), then load it; returns once it serves. "
        "Symlinks and dot files are refused.",
    )
    deploy.add_argument("folder", metavar="FOLDER", type=Path)
    deploy.add_argument("--name", help="model name (default: the folder's name)")
    deploy.add_argument(
        "--version", help="version number (default: one more than the model's highest version, else 1)"
    )
    deploy.add_argument("--url", help=URL_HELP)
    default = commands.add_parser(
        "default",
        help="choose the version of MODEL answering calls that name no version",
        description="Make VERSION of MODEL answer the calls that name no version (roll back, roll "
        "forward); without VERSION, its highest version again.",
    )
    default.add_argument("model", metavar="MODEL")
    default.add_argument("version", metavar="VERSION", nargs="?")
    default.add_argument("--url", help=URL_HELP)


def run(args: argparse.Namespace, url: str, api_key: str | None = None) -> int:
    """Run a repository command against `url`, sending `api_key` (an admin key, for a server with
    --auth); exit status 1 when the server refused (or, for deploy, when FOLDER cannot be sent)."""
    try:
        with Client(url, timeout_s=600.0, api_key=api_key) as client:
            if args.command == "models":
                rows = client.repository_index(ready=args.ready)
                print(json.dumps(rows) if args.json else _table(rows))
            elif args.command == "load":
                with progress(url, args.model, api_key):
                    client.load_model(args.model)
                print(f"model {args.model!r} loaded")
            elif args.command == "unload":
                client.unload_model(args.model)
                print(f"model {args.model!r} unloaded")
            elif args.command == "deploy":
                _deploy(client, url, args.folder, args.name, args.version, api_key)
            else:
                version = client.set_default_version(args.model, args.version)
                print(f"model {args.model!r}: calls that name no version go to version {version}")
    except (ModelbayError, httpx.HTTPError, ValueError, OSError) as exc:
        print(f"modelbay: {exc}", file=sys.stderr)
        return 1
    return 0


def _deploy(
    client: Client, url: str, folder: Path, name: str | None, version: str | None, api_key: str | None
) -> None:
    """Send `folder` as `version` of model `name` and load it, printing what was sent."""
    files = folder_files(folder)
    name = name or folder.resolve().name
    version = version or next_version(client.repository_index(), name)
    sent = {f"{version}/{path}": data for path, data in files.items()}
    total = sum(len(data) for data in sent.values())
    print(f"sending model {name!r} version {version}: {len(sent)} files, {total:,} bytes")
    width = max(len(path) for path in sent)
    for path, data in sent.items():
        print(f"  {path.ljust(width)}  {len(data):>13,} bytes")
    with progress(url, name, api_key):
        client.load_model(name, files=sent)
    print(f"model {name!r} version {version} deployed and serving")


@contextlib.contextmanager
def progress(url: str, name: str, api_key: str | None = None, every_s: float = 0.5) -> Iterator[None]:
    """While a load of model `name` runs on the server at `url`: on a terminal (stderr), a spinner
    with the states of its versions from the repository index (LOADING while the server builds
    one: its environment, its weights, its warm-up) and the seconds elapsed, refreshed every
    `every_s` seconds; elsewhere nothing (the server's log says each step)."""
    console = Console(stderr=True)
    if not console.is_terminal:
        yield
        return
    done = threading.Event()
    started = time.monotonic()
    with console.status(f"loading model {name!r}") as status:

        def watch() -> None:
            with Client(url, timeout_s=5.0, api_key=api_key) as watcher:
                while not done.wait(every_s):
                    try:
                        rows = [row for row in watcher.repository_index() if row["name"] == name]
                    except (ModelbayError, httpx.HTTPError):
                        continue
                    states = ", ".join(f"version {row['version']} {row['state']}" for row in rows)
                    elapsed = time.monotonic() - started
                    status.update(f"model {name!r}: {states or 'sending'} ({elapsed:.0f} s)")

        watcher = threading.Thread(target=watch, name="modelbay-progress", daemon=True)
        watcher.start()
        try:
            yield
        finally:
            done.set()
            watcher.join(timeout=5.0)


def folder_files(folder: Path) -> dict[str, bytes]:
    """Every regular file under `folder` by its path relative to it ("/"-separated), sorted.

    Raises ValueError for a folder that is missing or holds no file, a symlink (the server
    never follows one, so it is not sent as a copy either) or a dot file or folder (the server
    refuses them: the repository scan skips them), naming the first one found.
    """
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder; deploy sends a model folder")
    files: dict[str, bytes] = {}
    for root, folders, names in os.walk(folder):
        for entry in sorted(folders) + sorted(names):
            path = Path(root) / entry
            if entry.startswith("."):
                raise ValueError(f"{path}: dot files and folders are not sent (the server refuses them)")
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise ValueError(f"{path} is a symlink; copy the file it points to into the folder")
            if entry in names and not stat.S_ISREG(mode):
                raise ValueError(f"{path} is not a regular file")
            if entry in names:
                files[path.relative_to(folder).as_posix()] = path.read_bytes()
    if not files:
        raise ValueError(f"{folder} holds no file to send")
    return dict(sorted(files.items()))


def next_version(rows: list[dict[str, str]], name: str) -> str:
    """One more than the highest numbered version of `name` in the repository index, else "1"."""
    numbers = [int(row["version"]) for row in rows if row["name"] == name and row["version"].isdigit()]
    return str(max(numbers, default=0) + 1)


def _table(rows: list[dict[str, str]]) -> str:
    header = ("NAME", "VERSION", "STATE", "REASON")
    lines = [header, *((row["name"], row["version"], row["state"], row["reason"]) for row in rows)]
    widths = [max(len(line[column]) for line in lines) for column in range(3)]
    return "\n".join(
        "  ".join(
            [*(cell.ljust(width) for cell, width in zip(line[:3], widths, strict=True)), line[3]]
        ).rstrip()
        for line in lines
    )
