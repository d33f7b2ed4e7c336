"""`modelbay models`, `load MODEL`, `unload MODEL`, `deploy FOLDER`, `default MODEL [VERSION]`,
`traffic MODEL [--split ...]`: a running server's model repository, through the OIP model
repository extension (REST or gRPC; `default` and `traffic` are modelbay's own REST routes)."""

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
    _add_traffic_parser(commands)


def _add_traffic_parser(commands: Any) -> None:
    traffic = commands.add_parser(
        "traffic",
        help="show or set how MODEL's calls that name no version are shared among its versions",
        description="Without options, show MODEL's traffic policy and how it applies to the "
        "versions loaded now. With options, replace the policy with the one they make, at once "
        "(a call that names a version always gets that version).",
    )
    traffic.add_argument("model", metavar="MODEL")
    traffic.add_argument(
        "--split", type=split_weights, metavar="V=W,...", help="weight per version, e.g. 2=90,3=10 (a canary)"
    )
    traffic.add_argument(
        "--sticky-header",
        metavar="HEADER",
        help="with --split: callers with the same HEADER value keep one version",
    )
    traffic.add_argument(
        "--shadow",
        type=shadow_target,
        metavar="V[:PERCENT]",
        help="also send PERCENT (default 100) of the calls to version V in the background; its "
        "answers are compared and counted (modelbay_shadow_* metrics), never returned",
    )
    traffic.add_argument(
        "--clear", action="store_true", help="remove the policy: the default version answers"
    )
    traffic.add_argument("--json", action="store_true", help="print the server's answer as JSON")
    traffic.add_argument("--url", help=URL_HELP)


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
            elif args.command == "traffic":
                state = _traffic(client, args)
                print(json.dumps(state) if args.json else describe_traffic(state))
            else:
                version = client.set_default_version(args.model, args.version)
                print(f"model {args.model!r}: calls that name no version go to version {version}")
    except (ModelbayError, httpx.HTTPError, ValueError, OSError) as exc:
        print(f"modelbay: {exc}", file=sys.stderr)
        return 1
    return 0


def _traffic(client: Client, args: argparse.Namespace) -> dict[str, Any]:
    """The model's traffic as the server says it, after setting it when options were given."""
    chosen = [args.split, args.sticky_header, args.shadow]
    if args.clear and any(option is not None for option in chosen):
        raise ValueError("--clear removes the policy; give it alone")
    if args.clear:
        return client.set_traffic(args.model, None)
    if all(option is None for option in chosen):
        return client.traffic(args.model)
    policy: dict[str, Any] = {"split": args.split, "shadow": args.shadow}
    if args.sticky_header is not None:
        policy["sticky"] = {"header": args.sticky_header}
    return client.set_traffic(args.model, policy)


def split_weights(text: str) -> dict[str, float]:
    """`--split 2=90,3=10` as {"2": 90.0, "3": 10.0}. Raises argparse.ArgumentTypeError."""
    weights = {}
    for part in text.split(","):
        version, _, weight = part.partition("=")
        try:
            weights[version.strip()] = float(weight)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected VERSION=WEIGHT, e.g. 2=90,3=10; got {part!r}"
            ) from None
    return weights


def shadow_target(text: str) -> dict[str, Any]:
    """`--shadow 4:20` as {"version": "4", "percent": 20.0} (percent 100 when not given)."""
    version, _, percent = text.partition(":")
    try:
        return {"version": version, "percent": float(percent) if percent else 100.0}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected VERSION[:PERCENT], e.g. 4:20; got {text!r}") from None


def describe_traffic(state: dict[str, Any]) -> str:
    """Two lines: the policy as set, and how it applies to the versions loaded now."""
    name, policy, serving = state["name"], state["traffic"], state["serving"]

    def shares(split: dict[str, float] | None) -> str:
        return ", ".join(f"{version}={weight:g}" for version, weight in (split or {}).items())

    if policy is None:
        set_line = f"model {name!r}: no traffic policy"
    else:
        parts = [f"split {shares(policy['split'])}"] if policy["split"] else []
        if policy["sticky"]:
            parts.append(f"sticky by {policy['sticky']['header']}")
        if policy["shadow"]:
            parts.append(
                f"shadow to version {policy['shadow']['version']} at {policy['shadow']['percent']:g}%"
            )
        set_line = f"model {name!r}: " + "; ".join(parts or ["an empty policy"])
    now = f"split {shares(serving['split'])} (percent)" if serving["split"] else "the default version"
    shadow = f"; shadow to version {serving['shadow']}" if serving["shadow"] else ""
    return f"{set_line}\nserving now: {now}{shadow}"


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
